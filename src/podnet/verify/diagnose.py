"""Where a path breaks: the source's and destination's nodes are asked for what the pair needs
(a route to the other's pod subnet, and on an overlay its neighbour and FDB entries)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from podnet.backends import registry
from podnet.netlink import batch, links, netns, rtmsg
from podnet.netlink.constants import NUD_PERMANENT, RT_TABLE_MAIN

if TYPE_CHECKING:
    from podnet.verify.check import Endpoint


def _node(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in status["nodes"] if n["name"] == name)


def _subnet_of(status: dict[str, Any], node: str, family: int = 4
               ) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    raw = next((s for s in _node(status, node).get("pod_subnets", [])
                if (":" in s) == (family == 6)), "")
    if not raw or "-" in raw:  # l2 ranges share one subnet: no per-node route to check
        return None
    return ipaddress.ip_network(raw)


def explain(src: Endpoint, dst: Endpoint, lacks: Callable[[str, str], list[str]]) -> list[str]:
    """Why src may not reach dst: what each of their nodes lacks towards the other's pods
    (`lacks(on, towards)`)."""
    if src.node == dst.node:
        return [f"same node {src.node}: check the bridge and veth of {dst.name}"]
    why = lacks(src.node, dst.node) + lacks(dst.node, src.node)
    return why or [f"{src.node} and {dst.node} hold every route and entry for each other: "
                   "a hop dropped it (firewall, MTU, the router or the underlay)"]


def lab_lacks(status: dict[str, Any], family: int = 4) -> Callable[[str, str], list[str]]:
    """`lacks` for a lab's nodes (and router), looked up in their namespaces, for the pods'
    addresses of `family`."""
    return lambda on, towards: _lacks(status, on, towards, family)


@dataclass(frozen=True)
class NodeTables:
    """What a node holds that a path may need, dumped once for every pair asked about."""

    routes: dict[str, int]  # main-table routes, "dst/len" -> output device
    neighbours: frozenset[str]  # permanent neighbour entries, both families
    fdb: frozenset[str]  # the remote addresses of FDB entries
    kinds: dict[int, str | None]  # link index -> kind

    @classmethod
    def dump(cls, ns_path: str | None) -> NodeTables:
        """The tables of the namespace at ns_path (None: the calling thread's)."""
        families = (socket.AF_INET, socket.AF_INET6)
        with batch.raw_socket(ns_path) as sock:
            routes = {r.dst: r.oif for family in families
                      for r in rtmsg.dump_routes(sock, family) if r.table == RT_TABLE_MAIN}
            neighbours = frozenset(n.dst for family in families
                                   for n in rtmsg.dump_neighbours(sock, family)
                                   if n.dst and n.state & NUD_PERMANENT)
            fdb = frozenset(n.dst for n in rtmsg.dump_neighbours(sock, socket.AF_BRIDGE)
                            if n.dst)
        ipr = netns.iproute_in(ns_path)
        try:
            kinds = {int(m["index"]): links.kind_of(m) for m in ipr.get_links()}
        finally:
            ipr.close()
        return cls(routes, neighbours, fdb, kinds)


def _lacks(status: dict[str, Any], on: str, towards: str, family: int = 4) -> list[str]:
    subnet = _subnet_of(status, towards, family)
    if subnet is None:
        return []
    from podnet.lab.lab import ns_path
    from podnet.lab.topology import netns_prefix

    if registry.spec(status["backend"]).routed_by_gateway:
        # Nodes hold only a default route: the router must route the subnet.
        router = NodeTables.dump(ns_path(netns_prefix(status["name"]) + "rt"))
        if str(subnet) not in router.routes:
            return [f"the router lacks a route to {subnet} ({towards}'s pods)"]
        return []
    return node_lacks(NodeTables.dump(ns_path(_node(status, on)["netns"])), status["backend"],
                      on, towards, subnet, _node(status, towards)["node_ip"])


def node_lacks(tables: NodeTables, backend: str, on: str, towards: str,
               subnet: ipaddress.IPv4Network | ipaddress.IPv6Network, peer_ip: str
               ) -> list[str]:
    """What node `on` (its `tables`) lacks of what reaching `towards`'s pods needs: its route
    to their subnet and, into a tunnel, the neighbour and FDB entries. Nothing on a backend
    whose router routes the subnets, or whose nodes share one subnet (l2)."""
    spec = registry.spec(backend)
    if spec.routed_by_gateway or backend == "l2":
        return []
    oif = tables.routes.get(str(subnet))
    if oif is None:
        return [f"node {on} lacks a route to {subnet} ({towards}'s pods)"]
    out: list[str] = []
    # Only a route into the tunnel needs its entries; directRouting goes via eth0.
    kind = getattr(spec.backend_class(), "device_kind", None)
    if kind is not None and tables.kinds.get(oif) == kind:
        gw = str(subnet.network_address)
        if gw not in tables.neighbours:
            out.append(f"node {on} lacks the neighbour entry for {gw} ({towards}'s VTEP)")
        if kind == "vxlan" and peer_ip not in tables.fdb:
            out.append(f"node {on} lacks the FDB entry to {peer_ip} ({towards})")
    return out
