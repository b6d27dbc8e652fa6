"""The agent's options and their checks (pure logic): everything that can be known wrong
without the datastore or the kernel is refused before either is touched."""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass

from podnet.datastore.model import node_name_problem
from podnet.errors import UserError

SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
TTL_RANGE = (5, 86400)  # etcd raises shorter TTLs to its minimum (about 2 s) anyway
INTERVAL_RANGE = (0.1, 3600.0)


@dataclass
class AgentOptions:
    node_name: str
    iface: str | None = None
    node_ip: str | None = None
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_socket: str = "/run/podnet/cni.sock"
    ipam_data_dir: str | None = None
    state_dir: str = "/var/lib/podnet/agent"
    ttl: int = 60
    reconcile_interval: float = 10.0
    metrics_addr: str = "127.0.0.1:9153"
    role: str = "node"  # or "router": route every lease, hold none (gateway static mode)
    receive_steering: bool = False  # the conflist's receiveSteering for every pod

    @property
    def pod_records(self) -> str:
        """Where the plugin records the node's pods: beside the socket, so on /run."""
        return os.path.join(os.path.dirname(self.cni_socket), "pods")

    def check(self) -> None:
        """Raise UserError for the first option that cannot work."""
        if (problem := node_name_problem(self.node_name)) is not None:
            raise UserError(problem, "give --node-name the node's Kubernetes name")
        if self.iface is not None and not _ifname_ok(self.iface):
            raise UserError(f"--iface {self.iface!r} is not an interface name",
                            "give the name of the underlay interface, e.g. eth0")
        if self.node_ip is not None:
            try:
                ips = [ipaddress.ip_address(ip) for ip in self.node_ip.split(",")]
            except ValueError:
                raise UserError(f"--node-ip {self.node_ip!r} is not an IP address",
                                "give the node's address on the underlay, or its IPv4 and "
                                "IPv6 ones as IPV4,IPV6") from None
            if len(ips) > 1 and [ip.version for ip in ips] != [4, 6]:
                raise UserError(f"--node-ip {self.node_ip!r} is not IPV4,IPV6",
                                "give one address, or the IPv4 and the IPv6 one in that "
                                "order, as kubelet takes them")
        for flag, path in (("--cni-conf-dir", self.cni_conf_dir),
                           ("--state-dir", self.state_dir),
                           ("--ipam-data-dir", self.ipam_data_dir)):
            if path is not None:
                check_absolute(flag, path)
        check_socket_path("--cni-socket", self.cni_socket)
        low, high = TTL_RANGE
        if not low <= self.ttl <= high:
            raise UserError(f"--ttl {self.ttl} is out of range",
                            f"give whole seconds from {low} to {high}")
        low_f, high_f = INTERVAL_RANGE
        if not (math.isfinite(self.reconcile_interval)
                and low_f <= self.reconcile_interval <= high_f):
            raise UserError(f"--reconcile-interval {self.reconcile_interval} is out of range",
                            f"give seconds from {low_f} to {high_f:g}")
        metrics_address(self.metrics_addr)


def check_absolute(flag: str, path: str) -> None:
    if not os.path.isabs(path):
        raise UserError(f"{flag} {path!r} is not an absolute path",
                        "give a path that starts with /")


def check_socket_path(flag: str, path: str) -> None:
    check_absolute(flag, path)
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:
        raise UserError(f"{flag} is longer than {SOCKET_PATH_MAX} bytes",
                        "a unix socket path cannot be longer; choose a shorter one")


def metrics_address(text: str) -> tuple[str, int]:
    """HOST:PORT ([V6]:PORT) of the metrics endpoint; port 0 disables it."""
    host, sep, port = text.rpartition(":")
    fix = "give HOST:PORT with an IP address, e.g. 127.0.0.1:9153; port 0 turns metrics off"
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"--metrics {text!r} is not HOST:PORT with a port from 0 to 65535", fix)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UserError(f"--metrics host {host!r} is not an IP address", fix) from None
    return host, int(port)


def _ifname_ok(name: str) -> bool:
    # The kernel's own rule (dev_valid_name): 1-15 bytes, no '/', ':' or whitespace, not . or ..
    return (0 < len(os.fsencode(name)) < 16 and name not in (".", "..")
            and not any(c in "/:" or c.isspace() for c in name))
