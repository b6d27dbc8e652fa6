"""The fast path's maps. The pod map: which pod of this node owns an address. Keys are IPv4
addresses (network order), values the pod's host-side veth, the pod's MAC and the veth's; the
IPv6 pod map, where the cluster has IPv6 pods, the same for IPv6 addresses. The tunnel map
maps (the overlay's, one per pod family): which peer node a pod subnet is behind. Keys are the
subnets' network addresses, values the peer's VTEP MAC and node IP.

The maps have no name on disk: they are found through the program at the node uplink's ingress
(the program's id from tc, then the maps' ids from the program), so they live exactly as long
as the fast path is attached, need no BPF filesystem, and each network namespace (each lab
node) finds its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from podnet.fastpath import bpf, program
from podnet.netlink import codec, tc
from podnet.netlink.fastlink import Rtnl

NAME, NAME6 = "podnet_pods", "podnet_pods6"
KEY_SIZE, VALUE_SIZE = 4, program.VALUE_SIZE
KEY_SIZES = {4: KEY_SIZE, 6: 16}  # by family
MAX_PODS = 4096
VALUE = struct.Struct("=I6s6s")
TUNNEL_MAPS = {4: "podnet_tunnels", 6: "podnet_tunnels6"}  # by pod family; keys as KEY_SIZES
# As the program reads it (program.TUNNEL_MAC, TUNNEL_IP): VTEP MAC, node IP of either family
TUNNEL_VALUE = struct.Struct("=6sxx16s")
MAX_TUNNELS = 1 << 16
PodIP = ipaddress.IPv4Address | ipaddress.IPv6Address
Peer = tuple[PodIP, str]  # a tunnelled peer: its node IP, its VTEP MAC
Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network  # a tunnel map's key


@dataclass(frozen=True)
class PodEntry:
    ifindex: int  # the pod's host-side veth
    pod_mac: str
    host_mac: str
    policed: bool = False  # NetworkPolicy holds the pod on the normal path

    def pack(self) -> bytes:
        return VALUE.pack(self.ifindex | (program.POLICED if self.policed else 0),
                          codec.mac(self.pod_mac), codec.mac(self.host_mac))

    @classmethod
    def unpack(cls, raw: bytes) -> PodEntry:
        word, pod, host = VALUE.unpack(raw)
        return cls(word & ~program.POLICED, codec.lladdr(pod) or "", codec.lladdr(host) or "",
                   bool(word & program.POLICED))


def key(ip: PodIP) -> bytes:
    return ip.packed


def tunnel_value(peer: Peer) -> bytes:
    return TUNNEL_VALUE.pack(codec.mac(peer[1]), peer[0].packed)


@dataclass
class Attached:
    """The fast path found at an uplink: its program's and its maps' file descriptors."""
    prog_fd: int
    map_fd: int | None  # the IPv4 pod map; none in an IPv6-only cluster
    map6_fd: int | None = None  # the IPv6 pod map, where the cluster has IPv6 pods
    # The overlay's tunnel maps by pod family, where the program encapsulates.
    tunnels: dict[int, int] = field(default_factory=dict)

    def _maps(self) -> list[tuple[int, int]]:
        """(family, map fd) of each pod map."""
        return [(f, fd) for f, fd in ((4, self.map_fd), (6, self.map6_fd)) if fd is not None]

    def _items(self) -> Iterator[tuple[PodIP, bytes]]:
        for family, fd in self._maps():
            for k, v in bpf.map_items(fd, KEY_SIZES[family], VALUE_SIZE, MAX_PODS):
                yield ipaddress.ip_address(k), v

    def entries(self) -> dict[PodIP, PodEntry]:
        return {ip: PodEntry.unpack(v) for ip, v in self._items()}

    def owned_by(self, ifindex: int) -> list[PodIP]:
        """The addresses whose entry points at this veth (a DEL's: no full decoding)."""
        return [ip for ip, v in self._items()
                if struct.unpack_from("=I", v)[0] & ~program.POLICED == ifindex]

    def _fd(self, ip: PodIP) -> int | None:
        return self.map_fd if ip.version == 4 else self.map6_fd

    def carries(self, ip: PodIP) -> bool:
        """Whether the program carries this address's family."""
        return self._fd(ip) is not None

    def get(self, ip: PodIP) -> PodEntry | None:
        fd = self._fd(ip)
        raw = None if fd is None else bpf.map_lookup(fd, key(ip), VALUE_SIZE)
        return None if raw is None else PodEntry.unpack(raw)

    def put(self, ip: PodIP, entry: PodEntry) -> bool:
        """Whether the address has a map to go in (IPv6 ones: where IPv6 pods have one)."""
        fd = self._fd(ip)
        if fd is not None:
            bpf.map_update(fd, key(ip), entry.pack())
        return fd is not None

    def delete(self, ip: PodIP) -> bool:
        fd = self._fd(ip)
        return fd is not None and bpf.map_delete(fd, key(ip))


@contextlib.contextmanager
def attached_any(rtnl: Rtnl, uplinks: list[int]) -> Iterator[Attached | None]:
    """The fast path at the first of these uplinks that has it attached, or None."""
    for uplink in uplinks:
        with attached(rtnl, uplink) as fast:
            if fast is not None:
                yield fast
                return
    yield None


@contextlib.contextmanager
def attached(rtnl: Rtnl, uplink: int) -> Iterator[Attached | None]:
    """The fast path at this uplink, or None where none is attached."""
    prog_id = tc.ingress_program(rtnl, uplink)
    if prog_id is None:
        yield None
        return
    prog_fd = bpf.program_fd(prog_id)
    fds: list[int] = []
    try:
        for map_id in bpf.program_map_ids(prog_fd):
            fds.append(bpf.map_fd(map_id))
        named = {bpf.map_name(fd): fd for fd in fds}
        tunnels = {f: named[n] for f, n in TUNNEL_MAPS.items() if n in named}
        yield (Attached(prog_fd, named.get(NAME), named.get(NAME6), tunnels)
               if NAME in named or NAME6 in named else None)
    finally:
        for fd in fds:
            os.close(fd)
        os.close(prog_fd)


# -- the CNI plugin's side -----------------------------------------------------------------------
def add_pod(rtnl: Rtnl, uplink_name: str, host_index: int, host_mac: str, pod_mac: str,
            addresses: list[str], policed: bool = False) -> bool:
    """Put a new pod on the fast path: its addresses into the map (`policed`: held on the
    normal path until the agent clears it), the program on its veth. False where the node has
    no fast path attached (the pod uses the normal path)."""
    link = rtnl.get_link(uplink_name)
    if link is None:
        return False
    with attached(rtnl, link.index) as fast:
        if fast is None:
            return False
        for ip in _ips(addresses):
            fast.put(ip, PodEntry(host_index, pod_mac, host_mac, policed))
        tc.attach_ingress(rtnl, host_index, fast.prog_fd, fast.map6_fd is not None)
    return True


def remove_pod(rtnl: Rtnl, uplink_name: str, host_index: int) -> int:
    """Drop a pod's entries (those pointing at its veth); how many there were."""
    link = rtnl.get_link(uplink_name)
    if link is None:
        return 0
    with attached(rtnl, link.index) as fast:
        if fast is None:
            return 0
        gone = fast.owned_by(host_index)
        for ip in gone:
            fast.delete(ip)
        return len(gone)


def check_pod(rtnl: Rtnl, uplink_name: str, host_index: int, pod_mac: str,
              addresses: list[str]) -> list[str]:
    """What is wrong with a pod's fast-path state (nothing where the node has none)."""
    link = rtnl.get_link(uplink_name)
    if link is None:
        return [f"fast path uplink {uplink_name} is missing"]
    with attached(rtnl, link.index) as fast:
        if fast is None:
            return []
        problems = []
        for ip in _ips(addresses):
            if not fast.carries(ip):
                continue  # IPv6 where the node's program carries IPv4 only
            entry = fast.get(ip)
            if entry is None or entry.ifindex != host_index or entry.pod_mac != pod_mac:
                problems.append(f"fast path: pod map entry for {ip} is {entry}, want veth "
                                f"{host_index} with MAC {pod_mac}")
        if tc.ingress_program(rtnl, host_index) != bpf.object_id(fast.prog_fd, "prog"):
            problems.append("fast path: the program is not attached to the pod's veth")
        return problems


def _ips(addresses: list[str]) -> list[PodIP]:
    return [ipaddress.ip_interface(a).ip for a in addresses]
