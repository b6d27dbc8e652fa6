"""host-gw: every node routes each peer's pod subnet via the peer's node IP. Peers must share an
L2 segment with the node; one that does not is refused (logged, left unprogrammed)."""

from __future__ import annotations

import logging

from podnet.backends.base import Backend, Entry, Route
from podnet.datastore.model import Lease

log = logging.getLogger("podnet.backend")


class HostGwBackend(Backend):
    name = "host-gw"

    def pod_mtu(self) -> int:
        return self.node.mtu

    def entries_for(self, peer: Lease) -> frozenset[Entry]:
        if self.connected_link(peer.node_ip) != self.node.iface_index:
            log.error("host-gw: peer %s (%s) is not on-link through %s; its pod subnet %s "
                      "cannot be routed directly (use vxlan with directRouting instead)",
                      peer.node, peer.node_ip, self.node.iface, peer.subnet)
            return frozenset()
        return frozenset({Route(str(peer.subnet), str(peer.node_ip), self.node.iface_index)})
