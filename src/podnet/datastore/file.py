"""A datastore in a local directory, for a single node with no etcd (`file:///var/lib/podnet`).

Same interface; there are no peers to learn, so its watch only waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import time
from collections.abc import Callable, Iterator

from podnet.datastore.base import Event, Held, LeaseRefused
from podnet.datastore.model import Lease, NetworkConfig, subnet_key
from podnet.fsutil import write_atomic


class FileStore:
    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.dir, name)) as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def _write(self, name: str, data: str) -> None:
        write_atomic(os.path.join(self.dir, name), data, 0o600)

    def healthy(self) -> bool:
        return os.access(self.dir, os.W_OK)

    def get_config(self) -> NetworkConfig | None:
        raw = self._read("config.json")
        return None if raw is None else NetworkConfig.from_json(raw)

    def put_config(self, config: NetworkConfig) -> None:
        self._write("config.json", config.to_json())

    def _leases(self) -> dict[str, str]:
        raw = self._read("leases.json")
        return {} if raw is None else dict(json.loads(raw))

    def acquire(self, node: str, node_ip: str, attrs: dict[str, object], ttl: int,
                config: NetworkConfig, prefer: Held | None,
                node_ip6: ipaddress.IPv6Address | None = None) -> Held:
        with self._locked():
            leases = self._leases()
            for key, raw in leases.items():
                lease = Lease.from_json(raw, config)
                if lease.node == node:
                    fresh = Lease.make(config, lease.subnet, node,
                                       ipaddress.ip_address(node_ip), dict(attrs), node_ip6)
                    leases[key] = fresh.to_json()
                    self._write("leases.json", json.dumps(leases))
                    return Held(fresh, 0, ttl)
            free = config.free_indices(set(leases))
            if free:
                subnet = config.subnet_at(free[0])
                lease = Lease.make(config, subnet, node, ipaddress.ip_address(node_ip),
                                   dict(attrs), node_ip6)
                leases[subnet_key(subnet)] = lease.to_json()
                self._write("leases.json", json.dumps(leases))
                return Held(lease, 0, ttl)
        raise LeaseRefused(f"no free subnet in {config.network}")

    def renew(self, held: Held) -> bool:
        return True

    def release(self, held: Held) -> None:
        with self._locked():
            leases = self._leases()
            leases.pop(subnet_key(held.lease.subnet), None)
            self._write("leases.json", json.dumps(leases))

    def snapshot(self, config: NetworkConfig) -> tuple[dict[str, Lease], int]:
        return {k: Lease.from_json(v, config) for k, v in self._leases().items()}, 0

    def watch(self, config: NetworkConfig, revision: int, on_event: Callable[[Event], None],
              stopped: Callable[[], bool]) -> int:
        deadline = time.monotonic() + 10
        while not stopped() and time.monotonic() < deadline:
            time.sleep(0.2)
        return revision

    def publish_pods(self, held: Held, records: dict[str, str]) -> int:
        with self._locked():
            raw = self._read("pods.json")
            pods: dict[str, dict[str, str]] = {} if raw is None else dict(json.loads(raw))
            if pods.get(held.lease.node) == records:
                return 0
            pods[held.lease.node] = records
            self._write("pods.json", json.dumps(pods))
            return 1

    def pods(self) -> dict[str, dict[str, str]]:
        raw = self._read("pods.json")
        return {} if raw is None else dict(json.loads(raw))

    def close(self) -> None:
        pass
