"""host-gw: every node routes each peer's pod subnets via the peer's node IP, whichever family
each (see routed_via_node). Peers must share an L2 segment with the node; one that does not is
refused (logged, left unprogrammed)."""

from __future__ import annotations

import logging
from typing import Any

from pyroute2 import IPRoute

from podnet.backends.base import Backend, Entry, Neigh, Route
from podnet.datastore.model import Lease
from podnet.netlink import links

log = logging.getLogger("podnet.backend")


def node_mac(index: int) -> str:
    """The MAC of the node's underlay interface."""
    ipr = IPRoute(groups=0)
    try:
        return links.mac_of(links.link(ipr, index))
    finally:
        ipr.close()


class HostGwBackend(Backend):
    name = "host-gw"

    def pod_mtu(self) -> int:
        return self.node.mtu

    def setup(self) -> dict[str, Any]:
        return {"nodeMAC": node_mac(self.node.iface_index)}

    def owned_devices(self) -> list[int]:
        # Its IPv6 neighbour entries on the uplink (only those for the pod network's
        # addresses count as ours).
        return [self.node.iface_index] if 6 in self.config.families else []

    def entries_for(self, peer: Lease) -> frozenset[Entry]:
        if self.connected_link(peer.node_ip) != self.node.iface_index:
            log.error("host-gw: peer %s (%s) is not on-link through %s; its pod subnet %s "
                      "cannot be routed directly (use vxlan with directRouting instead)",
                      peer.node, peer.node_ip, self.node.iface, peer.subnet)
            return frozenset()
        return routed_via_node(peer, self.node.iface_index)


def routed_via_node(peer: Lease, oif: int) -> frozenset[Entry]:
    """Each of the peer's pod subnets via the peer's node, on `oif`.

    A subnet goes via the node's underlay address of its family where the node has one. The
    IPv4 subnet goes via an IPv6 one otherwise (RTA_VIA, RFC 5549: IPv4 pods need no IPv4
    underlay). Linux refuses the converse ("IPv6 does not
    support RTA_VIA"), so over an IPv4 underlay an IPv6 subnet goes on-link via its own network
    address, which a permanent neighbour entry resolves to the peer's node MAC (published in
    its lease): dual-stack pods need no IPv6 underlay either."""
    out: set[Entry] = set()
    mac = peer.attrs.get("nodeMAC")
    for subnet in peer.subnets:
        if (via := peer.underlay_ip(subnet.version)) is not None:
            out.add(Route(str(subnet), str(via), oif))
        elif subnet.version == 4 or peer.node_ip.version == 6:
            out.add(Route(str(subnet), str(peer.node_ip), oif))
        elif isinstance(mac, str):
            gw = str(subnet.network_address)
            out |= {Neigh(gw, mac, oif), Route(str(subnet), gw, oif, onlink=True)}
        else:
            log.error("peer %s publishes no node MAC: its IPv6 pods %s cannot be routed "
                      "(upgrade its agent)", peer.node, subnet)
    return frozenset(out)
