"""The backend interface, and the desired-state machinery every backend shares.

A backend says which kernel entries (routes, neighbour and FDB entries) each peer needs; the base
class programs them in batches, removes them when the peer goes, and reconciles the kernel
against the whole desired set (repairing drift) with one dump per table.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute

from podnet.datastore.model import Lease, NetworkConfig, NodeIP
from podnet.netlink import batch, links, rtmsg
from podnet.netlink.constants import (
    NTF_SELF,
    NUD_PERMANENT,
    RT_TABLE_MAIN,
    RTNH_F_ONLINK,
    RTPROT_PODNET,
)

if TYPE_CHECKING:  # the program's module is loaded with the fast path, after the routes
    from podnet.fastpath.program import Encap

log = logging.getLogger("podnet.backend")



class BackendError(Exception):
    """The backend cannot run here (e.g. the kernel lacks what it needs)."""


@dataclass(frozen=True)
class Route:
    dst: str  # CIDR
    gw: str | None
    oif: int
    onlink: bool = False


@dataclass(frozen=True)
class Neigh:
    dst: str
    lladdr: str
    ifindex: int


@dataclass(frozen=True)
class Fdb:
    lladdr: str
    dst: str
    ifindex: int


Entry = Route | Neigh | Fdb


def _op(entry: Entry, add: bool) -> batch.Op:
    if isinstance(entry, Route):
        args: dict[str, Any] = {"dst": entry.dst, "oif": entry.oif, "proto": RTPROT_PODNET,
                                "gateway": entry.gw,
                                "flags": RTNH_F_ONLINK if entry.onlink else 0}
        return batch.Op("route", "replace" if add else "del", args,
                        () if add else batch.DEL_IGNORE)
    if isinstance(entry, Neigh):
        args = {"dst": entry.dst, "lladdr": entry.lladdr, "ifindex": entry.ifindex}
        return batch.Op("neigh", "replace" if add else "del", args,
                        () if add else batch.DEL_IGNORE)
    args = {"lladdr": entry.lladdr, "dst": entry.dst, "ifindex": entry.ifindex}
    return batch.Op("fdb", "append" if add else "del", args,
                    batch.ADD_IGNORE if add else batch.DEL_IGNORE)


@dataclass(frozen=True)
class FastPathSpec:
    """What the eBPF fast path needs of a backend."""

    # The devices packets from other nodes arrive on, where the program hands them straight to
    # pods; empty where this backend's traffic cannot take the fast path.
    uplinks: list[int]
    # This node's tunnel parameters, where the program encapsulates pods' packets itself.
    encap: Encap | None = None
    # Veths on the pod bridge that are not pods'.
    bridge_links: list[int] = field(default_factory=list)


@dataclass
class NodeInfo:
    name: str
    ip: NodeIP  # the underlay's family: IPv4, or IPv6 over an IPv6 underlay
    iface: str  # the underlay interface
    iface_index: int
    mtu: int  # the underlay MTU
    state_dir: str = "/var/lib/podnet/agent"  # where a backend keeps files of its own
    # Its IPv6 address beside an IPv4 `ip`, where the underlay carries both families.
    ip6: ipaddress.IPv6Address | None = None


class Backend(ABC):
    """One way of connecting the nodes' pod subnets. Called by the agent, under its lock."""

    name: str = ""
    switched = False  # pods of other nodes are reached by switching (l2), not routing
    pod_bridge = "kube-bridge"

    def __init__(self, node: NodeInfo, config: NetworkConfig) -> None:
        self.node = node
        self.config = config
        self.own: Lease | None = None
        self._entries: dict[str, frozenset[Entry]] = {}  # by peer node name
        self._lock = threading.Lock()
        self._connected: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                    int]] | None = None

    @classmethod  # noqa: B027  (an optional hook, not abstract)
    def cleanup(cls, ipr: IPRoute, state_dir: str) -> None:
        """Remove what a backend of this kind made beyond its routes (which carry podnet's
        protocol and go for every kind): devices, daemons. Nothing by default."""

    # -- what a backend says --------------------------------------------------------------
    @abstractmethod
    def pod_mtu(self) -> int:
        """The MTU pods get (the CNI conflist's)."""

    def setup(self) -> dict[str, Any]:
        """Prepare the node before the lease is taken; attributes to publish in the lease."""
        return {}

    def start(self, own: Lease) -> None:
        """The node's own lease is known: the pod bridge holds this lease's gateway address
        and no other of the pod network (a node back with a new subnet keeps no old one, which
        would make every pod ADD fail)."""
        self.own = own
        want = self.pod_gateways()
        ipr = IPRoute(groups=0)
        try:
            index = links.ensure_bridge(ipr, self.pod_bridge, None, self.pod_mtu())
            for have in links.addresses(ipr, index):
                if have not in want and any(have.ip in n for n in self.config.networks):
                    log.warning("%s: removing %s, an address of an earlier lease",
                                self.pod_bridge, have)
                    links.del_address(ipr, index, str(have))
            for gateway in want:
                links.add_address(ipr, index, str(gateway))
        finally:
            ipr.close()

    def pod_gateways(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        """The pods' gateways on the pod bridge, one per family: each subnet's first
        address."""
        assert self.own is not None
        return [ipaddress.ip_interface((s.network_address + 1, s.prefixlen))
                for s in self.own.subnets]

    def bridge_problem(self) -> str | None:
        """Why the pod bridge cannot serve pods of this lease, or None."""
        if self.own is None:
            return "no lease yet"
        ipr = IPRoute(groups=0)
        try:
            index = links.index_of(ipr, self.pod_bridge)
            if index is None:
                return f"the pod bridge {self.pod_bridge} is missing"
            have = links.addresses(ipr, index)
            for want in self.pod_gateways():
                if want not in have:
                    return f"the pod bridge {self.pod_bridge} lacks the gateway address {want}"
        finally:
            ipr.close()
        return None

    def tunnel_match(self) -> str | None:
        """An nftables match for arriving tunnel packets (`udp dport 8472`), which are then
        accepted only from known nodes."""
        return None

    def fast_path(self) -> FastPathSpec:
        """Where the eBPF fast path sits for this backend (asked at start, and again at each
        reconcile: uplinks may change)."""
        return FastPathSpec([self.node.iface_index])

    def fast_path_tunnel(self, peer: Lease) -> tuple[NodeIP, str] | None:
        """For the fast path's tunnel maps: the peer's node IP and VTEP MAC, where its pod
        subnets are reached through the tunnel."""
        return None

    def repair_devices(self) -> bool:
        """Re-make this backend's devices if they were deleted; whether anything was."""
        return False

    @abstractmethod
    def entries_for(self, peer: Lease) -> frozenset[Entry]:
        """The kernel entries a peer needs; empty to leave it unprogrammed (logged)."""

    def own_entries(self) -> frozenset[Entry]:
        """Entries this node needs whatever its peers (reconciled with theirs); none by
        default."""
        return frozenset()

    def owned_devices(self) -> list[int]:
        """Devices whose neighbour and FDB entries belong to this backend."""
        return []

    def cni_plugin_options(self) -> dict[str, Any]:
        """Options of the `podnet` plugin entry in the conflist."""
        assert self.own is not None
        if self.own.subnet6 is None:
            ipam: dict[str, Any] = {"type": "podnet-ipam", "subnet": str(self.own.subnet)}
        else:  # a range set per family: a pod gets an address of each
            ipam = {"type": "podnet-ipam", "ranges": [[{"subnet": str(s)}]
                                                      for s in self.own.subnets]}
        return {"bridge": self.pod_bridge, "isDefaultGateway": True, "ipam": ipam}

    # -- shared machinery -------------------------------------------------------------------
    def peer_added(self, peer: Lease) -> None:
        with self._lock:
            new = self.entries_for(peer)
            old = self._entries.get(peer.node, frozenset())
            self._apply(add=new - old, remove=old - new)
            self._entries[peer.node] = new

    def peer_removed(self, node: str) -> None:
        with self._lock:
            self._apply(add=frozenset(), remove=self._entries.pop(node, frozenset()))

    def routes_programmed(self) -> int:
        return sum(1 for es in self._entries.values() for e in es if isinstance(e, Route))

    def connected_link(self, ip: NodeIP) -> int | None:
        """The interface whose directly connected subnet holds `ip`, or None (not on-link).

        One address dump per sync, shared by every peer, rather than one per peer.
        """
        if self._connected is None:
            ipr = IPRoute(groups=0)
            try:
                self._connected = [
                    (ipaddress.ip_network(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}",
                                          strict=False), int(m["index"]))
                    for m in ipr.get_addr()]
            finally:
                ipr.close()
        return next((index for net, index in self._connected
                     if net.version == ip.version and ip in net), None)

    def sync(self, peers: list[Lease]) -> int:
        """Make the kernel hold exactly the peers' entries; returns how many were repaired."""
        with self._lock:
            self._connected = None  # addresses may have moved since the last run
            self._entries = {p.node: self.entries_for(p) for p in peers}
            want: set[Entry] = set(self.own_entries()).union(*self._entries.values())
            have = self._current()
            self._apply(add=frozenset(want - have), remove=frozenset(have - want))
            return len(want - have) + len(have - want)

    def _apply(self, add: frozenset[Entry], remove: frozenset[Entry]) -> None:
        # Removals first: a replaced route must not be deleted after its replacement.
        ops = [_op(e, add=False) for e in remove] + [_op(e, add=True) for e in add]
        result = batch.apply(ops)
        for failure in result.failures:
            log.error("programming failed: %s", failure)

    def _current(self) -> set[Entry]:
        """What the kernel holds of ours: routes by protocol, neighbours/FDB on our devices."""
        out: set[Entry] = set()
        devices = set(self.owned_devices())
        networks = self.config.networks
        families = [socket.AF_INET if n.version == 4 else socket.AF_INET6 for n in networks]
        with batch.raw_socket() as sock:
            for family in families:
                for r in rtmsg.dump_routes(sock, family):
                    if r.proto == RTPROT_PODNET and r.table == RT_TABLE_MAIN:
                        out.add(Route(r.dst, r.gw, r.oif, r.onlink))
            if not devices:
                return out
            for family in families:
                for n in rtmsg.dump_neighbours(sock, family):
                    # Only entries for the pod network's addresses: an uplink may hold
                    # others' permanent entries.
                    if (n.ifindex in devices and n.state & NUD_PERMANENT and n.dst
                            and n.lladdr and any(ipaddress.ip_address(n.dst) in net
                                                 for net in networks)):
                        out.add(Neigh(n.dst, n.lladdr, n.ifindex))
            for n in rtmsg.dump_neighbours(sock, socket.AF_BRIDGE):
                if n.ifindex in devices and n.dst and n.lladdr and n.flags & NTF_SELF:
                    out.add(Fdb(n.lladdr, n.dst, n.ifindex))
        return out

