"""GRE, where the kernel has ip_gre: one point-to-multipoint GRE device per node (no fixed
remote), and per peer an on-link route to its pod subnet through the device plus a permanent
neighbour entry whose link-layer address is the peer's node IP: ip_gre takes a packet's outer
destination from that entry. The machines this project runs on lack ip_gre, so the backend checks
first and refuses with a clear error; see docs/backends.md for kernels that work."""

from __future__ import annotations

import os
from typing import Any

from podnet.backends.base import BackendError, Entry, FastPathSpec
from podnet.backends.tunnel import TunnelBackend
from podnet.datastore.model import Lease
from podnet.netlink import links

GRE_OVERHEAD = 24  # outer IPv4 20 + GRE 4
DEVICE = "podnet.gre"


def kernel_has_gre() -> bool:
    # Built in or loaded, the kernel lists the fallback device's module or /proc entry.
    return os.path.exists("/sys/module/ip_gre") or os.path.exists("/proc/sys/net/ipv4/conf/gre0")


class GreBackend(TunnelBackend):
    name = "gre"
    device = DEVICE
    device_kind = "gre"

    def pod_mtu(self) -> int:
        return self.node.mtu - GRE_OVERHEAD

    def setup(self) -> dict[str, Any]:
        if not kernel_has_gre():
            raise BackendError("the gre backend needs the kernel's ip_gre module, which this "
                               "kernel lacks (no /sys/module/ip_gre); use the vxlan backend")
        self.ensure_device()
        return {}

    def device_spec(self) -> dict[str, Any]:
        # A fixed TTL keeps path MTU discovery on for the outer packets.
        return {"kind": self.device_kind, "gre_local": str(self.node.ip), "gre_ttl": 64,
                "gre_link": self.node.iface_index}

    def device_matches(self, msg: Any) -> bool:
        data = links.info_data(msg)
        return (links.kind_of(msg) == self.device_kind and data is not None
                and data.get_attr("IFLA_GRE_LOCAL") == str(self.node.ip)
                and data.get_attr("IFLA_GRE_REMOTE") in (None, "0.0.0.0"))

    def fast_path(self) -> FastPathSpec:
        # Untested without ip_gre on any machine here: GRE keeps the normal path.
        return FastPathSpec([])

    def tunnel_match(self) -> str | None:
        return "ip protocol gre"

    def entries_for(self, peer: Lease) -> frozenset[Entry]:
        return self.tunnelled(peer, str(peer.node_ip))
