"""Makes the backend the cluster config names (backends/registry.py), and removes what one
made."""

from __future__ import annotations

from podnet.backends import registry
from podnet.backends.base import Backend, BackendError, NodeInfo
from podnet.datastore.model import NetworkConfig


def create(node: NodeInfo, config: NetworkConfig) -> Backend:
    try:
        spec = registry.spec(config.backend_type)
    except KeyError as exc:
        raise BackendError(exc.args[0]) from None
    return spec.backend_class()(node, config)


def create_router(node: NodeInfo, config: NetworkConfig) -> Backend:
    """The backend of `podnet agent --role router` (the gateway backend's static mode)."""
    from podnet.backends.gateway import RouterBackend

    return RouterBackend(node, config)


def cleanup(kind: str, state_dir: str) -> None:
    """Remove what a backend of this kind programmed: podnet's routes, devices, daemons."""
    import socket

    from pyroute2 import IPRoute

    from podnet.fastpath import node as fastpath
    from podnet.netlink import batch, rtmsg
    from podnet.netlink.constants import RTPROT_PODNET

    fastpath.remove()
    ipr = IPRoute(groups=0)
    try:
        registry.spec(kind).backend_class().cleanup(ipr, state_dir)
        with batch.raw_socket() as sock:
            ops = [batch.Op("route", "del", {"dst": r.dst, "proto": RTPROT_PODNET,
                                             "oif": r.oif}, batch.DEL_IGNORE)
                   for family in (socket.AF_INET, socket.AF_INET6)
                   for r in rtmsg.dump_routes(sock, family) if r.proto == RTPROT_PODNET]
        batch.apply(ops)
    finally:
        ipr.close()
