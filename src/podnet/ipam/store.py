"""host-local's on-disk store: `<dataDir>/<network>/<ip>` holding "<containerID>\\r\\n<ifname>",
`last_reserved_ip.<rangeset index>`, and a `lock` file taken with flock, so podnet-ipam and the
reference host-local can share one directory."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterator

from podnet.fsutil import write_atomic
from podnet.ipam.config import IPAddress

LINE_BREAK = "\r\n"
LAST_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"


class Store:
    def __init__(self, data_dir: str, network: str) -> None:
        self.dir = os.path.join(data_dir, network)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Store]:
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        fd = os.open(os.path.join(self.dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)  # closing drops the flock

    def _path(self, ip: IPAddress) -> str:
        return os.path.join(self.dir, str(ip))

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, rangeset: int) -> bool:
        try:
            fd = os.open(self._path(ip), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write((container_id + LINE_BREAK + ifname).encode())
        write_atomic(os.path.join(self.dir, LAST_PREFIX + str(rangeset)), str(ip))
        return True

    def last_reserved(self, rangeset: int) -> IPAddress | None:
        try:
            with open(os.path.join(self.dir, LAST_PREFIX + str(rangeset))) as fh:
                return ipaddress.ip_address(fh.read().strip())
        except (OSError, ValueError):
            return None

    def allocations(self) -> Iterator[tuple[IPAddress, str, str]]:
        """Every (ip, container id, ifname) on disk."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            try:
                ip = ipaddress.ip_address(name)
                with open(os.path.join(self.dir, name), "rb") as fh:
                    data = fh.read().decode("utf-8", "replace")
            except (ValueError, OSError):
                continue
            cid, _, ifname = data.strip().partition(LINE_BREAK)
            yield ip, cid.strip(), ifname.strip()

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        # Compared as bytes, without parsing: every ADD reads every allocation (as host-local
        # does). Files written before ifnames were recorded hold the container id alone.
        wanted = {(container_id + LINE_BREAK + ifname).encode(), container_id.encode()}
        out: list[IPAddress] = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        for name in names:
            if not name[:1].isdigit() and ":" not in name:
                continue  # lock, last_reserved_ip.N
            try:
                fd = os.open(os.path.join(self.dir, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                data = os.read(fd, 1024).strip()
            finally:
                os.close(fd)
            if data in wanted:
                try:
                    out.append(ipaddress.ip_address(name))
                except ValueError:
                    continue
        return out

    def release(self, ip: IPAddress) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path(ip))

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        released = self.get_by_id(container_id, ifname)
        for ip in released:
            self.release(ip)
        return released
