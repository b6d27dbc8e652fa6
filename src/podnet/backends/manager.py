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
    if kind == "l2":
        from podnet.backends.l2 import L2Backend

        return L2Backend(node, config)
    if kind == "gateway":
        from podnet.backends.gateway import GatewayBackend

        return GatewayBackend(node, config)
    if kind == "gre":
        from podnet.backends.gre import GreBackend

        return GreBackend(node, config)
    raise BackendError(f"backend {kind!r} is not available in this build")


def create_router(node: NodeInfo, config: NetworkConfig) -> Backend:
    """The backend of `podnet agent --role router` (the gateway backend's static mode)."""
    from podnet.backends.gateway import RouterBackend

    return RouterBackend(node, config)


def cleanup(kind: str, state_dir: str) -> None:
    """Remove what a backend of this kind programmed: podnet's routes, devices, daemons."""
    from pyroute2 import IPRoute

    from podnet.backends.base import RTPROT_PODNET
    from podnet.fastpath import node as fastpath
    from podnet.netlink import batch, rtmsg

    fastpath.remove()
    ipr = IPRoute(groups=0)
    try:
        if kind == "l2":
            from podnet.backends.l2 import undo

            undo(ipr)
        if kind == "gateway":
            from podnet.backends.gateway import stop_bird

            stop_bird(state_dir)
        with batch.raw_socket() as sock:
            ops = [batch.Op("route", "del", {"dst": r.dst, "proto": RTPROT_PODNET,
                                             "oif": r.oif}, batch.DEL_IGNORE)
                   for r in rtmsg.dump_routes(sock) if r.proto == RTPROT_PODNET]
        batch.apply(ops)
        for msg in ipr.get_links():
            name = str(msg.get_attr("IFLA_IFNAME"))
            if kind in ("vxlan", "gre") and name.startswith("podnet."):  # .<vni>, .gre
                ipr.link("del", index=msg["index"])
    finally:
        ipr.close()
