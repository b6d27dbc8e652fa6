"""Layer 2: all pods of all nodes in one subnet (the cluster CIDR) and one L2 domain.

As the article draws it, each node has `kube-bridge` for its pods (reused by the CNI plugin)
joined by a veth pair to a node bridge that holds the node IP and the physical interface. Pods
reach pods on other nodes by ARP (and IPv6 neighbour discovery) and switching; no routes per
peer. Each node leases a range of the shared subnet of each family for podnet-ipam, and holds
the range's first address as its pods' gateway.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import replace
from typing import Any

from pyroute2 import IPRoute

from podnet.backends.base import Backend, Entry, FastPathSpec
from podnet.datastore.model import Lease
from podnet.netlink import links

log = logging.getLogger("podnet.backend")
NODE_BRIDGE = "podnet-br"
POD_BRIDGE = Backend.pod_bridge
VETH_POD_SIDE = "podnet-l2a"  # on kube-bridge
VETH_NODE_SIDE = "podnet-l2b"  # on the node bridge


def move_addresses(ipr: IPRoute, src: int, dst: int) -> None:
    """Move the addresses (IPv4, and IPv6 but link-local ones, which each link makes its
    own) and the routes through them from one link to another.

    The new place gets them first, so the node is never without its address; routes through
    the old link (a default route, say) are re-made through the new one.
    """
    addrs = [a for a in links.addresses(ipr, src) if not a.ip.is_link_local]
    moved = [r for family in (socket.AF_INET, socket.AF_INET6)
             for r in ipr.get_routes(family=family, table=254, oif=src)
             if r.get_attr("RTA_OIF") == src and r.get_attr("RTA_GATEWAY")]
    for addr in addrs:
        links.add_address(ipr, dst, str(addr))
    for addr in addrs:
        links.del_address(ipr, src, str(addr))
    for r in moved:
        anywhere = "0.0.0.0" if r["family"] == socket.AF_INET else "::"
        dst_net = f"{r.get_attr('RTA_DST') or anywhere}/{r['dst_len']}"
        links.add_route(ipr, dst_net, r.get_attr("RTA_GATEWAY"), dst)


class L2Backend(Backend):
    name = "l2"
    switched = True

    def pod_mtu(self) -> int:
        return self.node.mtu

    def setup(self) -> dict[str, Any]:
        ipr = IPRoute(groups=0)
        try:
            phys = links.link(ipr, self.node.iface_index)
            if self.node.iface == NODE_BRIDGE:
                br = self.node.iface_index  # moved on an earlier run
            else:
                br = links.ensure_bridge(ipr, NODE_BRIDGE, links.mac_of(phys), self.node.mtu)
                ipr.link("set", index=self.node.iface_index, master=br)
                move_addresses(ipr, self.node.iface_index, br)
                self.node = replace(self.node, iface=NODE_BRIDGE, iface_index=br)
            pod_br = links.ensure_bridge(ipr, POD_BRIDGE, None, self.node.mtu)
            if links.by_name(ipr, VETH_POD_SIDE) is None:
                ipr.link("add", ifname=VETH_POD_SIDE, kind="veth", mtu=self.node.mtu,
                         peer={"ifname": VETH_NODE_SIDE, "mtu": self.node.mtu})
            for name, master in ((VETH_POD_SIDE, pod_br), (VETH_NODE_SIDE, br)):
                index = links.index_of(ipr, name)
                ipr.link("set", index=index, master=master, state="up")
        finally:
            ipr.close()
        return {}

    def pod_gateways(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        # This node's gateway for its pods, on the shared subnet of each family: unique per
        # node.
        assert self.own is not None
        out: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = [
            ipaddress.ip_interface((self.own.subnet.network_address + 1,
                                    self.config.network.prefixlen))]
        if self.own.subnet6 is not None and self.config.network6 is not None:
            out.append(ipaddress.IPv6Interface((self.own.subnet6.network_address + 1,
                                                self.config.network6.prefixlen)))
        return out

    def entries_for(self, peer: Lease) -> frozenset[Entry]:
        return frozenset()  # ARP and switching reach every peer's pods

    def fast_path(self) -> FastPathSpec:
        # The physical port of the node bridge: its ingress runs before the bridge's. The
        # veth to the pod bridge is not a pod's.
        ipr = IPRoute(groups=0)
        try:
            br = links.index_of(ipr, NODE_BRIDGE)
            uplinks = [int(m["index"]) for m in ipr.get_links()
                       if br is not None and m.get_attr("IFLA_MASTER") == br
                       and m.get_attr("IFLA_IFNAME") != VETH_NODE_SIDE]
            veth = links.index_of(ipr, VETH_POD_SIDE)
        finally:
            ipr.close()
        return FastPathSpec(uplinks, bridge_links=[] if veth is None else [veth])

    @classmethod
    def cleanup(cls, ipr: IPRoute, state_dir: str) -> None:
        undo(ipr)

    def cni_plugin_options(self) -> dict[str, Any]:
        assert self.own is not None
        # A range set per family: the node's range of the shared subnet, its gateway first.
        ranges: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                           ipaddress.IPv4Network | ipaddress.IPv6Network]] = [
            (self.config.network, self.own.subnet)]
        if self.own.subnet6 is not None and self.config.network6 is not None:
            ranges.append((self.config.network6, self.own.subnet6))
        return {"bridge": POD_BRIDGE, "isDefaultGateway": True, "ipam": {
            "type": "podnet-ipam", "ranges": [[{
                "subnet": str(shared), "rangeStart": str(rng.network_address + 2),
                "rangeEnd": str(rng.broadcast_address - 1),
                "gateway": str(rng.network_address + 1)}] for shared, rng in ranges]}}


def undo(ipr: IPRoute) -> None:
    """Give the physical interface its addresses back and remove the L2 devices."""
    br = links.index_of(ipr, NODE_BRIDGE)
    if br is not None:
        ports = [m for m in ipr.get_links() if m.get_attr("IFLA_MASTER") == br
                 and m.get_attr("IFLA_IFNAME") != VETH_NODE_SIDE]
        for port in ports:
            ipr.link("set", index=port["index"], master=0)
            move_addresses(ipr, br, int(port["index"]))
        ipr.link("del", index=br)
    links.delete_link(ipr, VETH_POD_SIDE)
