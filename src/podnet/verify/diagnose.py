"""Where a path breaks: the source's and destination's nodes are asked for what the pair needs
(a route to the other's pod subnet, and on an overlay its neighbour and FDB entries)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from podnet.backends import registry
from podnet.netlink import links, netns

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


def _lacks(status: dict[str, Any], on: str, towards: str, family: int = 4) -> list[str]:
    subnet = _subnet_of(status, towards, family)
    if subnet is None:
        return []
    from podnet.lab.lab import ns_path
    from podnet.lab.topology import netns_prefix

    if registry.spec(status["backend"]).routed_by_gateway:
        # Nodes hold only a default route: the router must route the subnet.
        ipr = netns.iproute_in(ns_path(netns_prefix(status["name"]) + "rt"))
        try:
            if _route(ipr, subnet) is None:
                return [f"the router lacks a route to {subnet} ({towards}'s pods)"]
            return []
        finally:
            ipr.close()
    ipr = netns.iproute_in(ns_path(_node(status, on)["netns"]))
    try:
        return node_lacks(ipr, status["backend"], on, towards, subnet,
                          _node(status, towards)["node_ip"])
    finally:
        ipr.close()


def node_lacks(ipr: Any, backend: str, on: str, towards: str,
               subnet: ipaddress.IPv4Network | ipaddress.IPv6Network, peer_ip: str
               ) -> list[str]:
    """What node `on` (`ipr` in its namespace) lacks of what reaching `towards`'s pods needs:
    its route to their subnet and, into a tunnel, the neighbour and FDB entries. Nothing on a
    backend whose router routes the subnets, or whose nodes share one subnet (l2)."""
    spec = registry.spec(backend)
    if spec.routed_by_gateway or backend == "l2":
        return []
    route = _route(ipr, subnet)
    if route is None:
        return [f"node {on} lacks a route to {subnet} ({towards}'s pods)"]
    out: list[str] = []
    # Only a route into the tunnel needs its entries; directRouting goes via eth0.
    kind = getattr(spec.backend_class(), "device_kind", None)
    if kind is not None and _route_device_kind(ipr, route) == kind:
        gw = str(subnet.network_address)
        family = socket.AF_INET if subnet.version == 4 else socket.AF_INET6
        if not any(n.get_attr("NDA_DST") == gw for n in ipr.get_neighbours(
                family=family) if n["state"] & 0x80):
            out.append(f"node {on} lacks the neighbour entry for {gw} ({towards}'s VTEP)")
        if kind == "vxlan" and not any(f.get_attr("NDA_DST") == peer_ip
                                       for f in ipr.fdb("dump")):
            out.append(f"node {on} lacks the FDB entry to {peer_ip} ({towards})")
    return out


def _route(ipr: Any, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Any:
    family = socket.AF_INET if subnet.version == 4 else socket.AF_INET6
    return next((r for r in ipr.get_routes(family=family, table=254)
                 if r.get_attr("RTA_DST") == str(subnet.network_address)
                 and r["dst_len"] == subnet.prefixlen), None)


def _route_device_kind(ipr: Any, route: Any) -> str | None:
    found = ipr.get_links(route.get_attr("RTA_OIF"))
    return links.kind_of(found[0]) if found else None
