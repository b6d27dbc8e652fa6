"""Picks the backend the cluster config names."""

from __future__ import annotations

from podnet.backends.base import Backend, BackendError, NodeInfo
from podnet.datastore.model import NetworkConfig


def create(node: NodeInfo, config: NetworkConfig) -> Backend:
    kind = config.backend_type
    if kind == "vxlan":
        from podnet.backends.vxlan import VxlanBackend

        return VxlanBackend(node, config)
    if kind == "host-gw":
        from podnet.backends.hostgw import HostGwBackend

        return HostGwBackend(node, config)
    if kind == "gre":
        from podnet.backends.gre import GreBackend

        return GreBackend(node, config)
    raise BackendError(f"backend {kind!r} is not available in this build")


def cleanup(kind: str) -> None:
    """Remove what a backend of this kind programmed: podnet's routes and devices."""
    from pyroute2 import IPRoute

    from podnet.backends.base import RTPROT_PODNET
    from podnet.netlink import batch

    ipr = IPRoute(groups=0)
    try:
        ops = [batch.Op("route", "del", {"dst": f"{m.get_attr('RTA_DST')}/{m['dst_len']}",
                                         "proto": RTPROT_PODNET, "oif": m.get_attr("RTA_OIF")},
                        batch.DEL_IGNORE)
               for m in ipr.get_routes(family=2, table=254) if m["proto"] == RTPROT_PODNET]
        batch.apply(ops)
        for msg in ipr.get_links():
            name = str(msg.get_attr("IFLA_IFNAME"))
            if name in DEVICES.get(kind, ()) or (kind == "vxlan" and name.startswith("podnet.")):
                ipr.link("del", index=msg["index"])
    finally:
        ipr.close()


# Devices a backend creates under fixed names (vxlan's carry the VNI: podnet.<vni>).
DEVICES: dict[str, tuple[str, ...]] = {"l2": ("podnet-br", "podnet-l2a", "podnet-l2b")}
