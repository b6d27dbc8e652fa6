"""`podnet-ipam`: the host-local compatible IPAM plugin's commands."""

from __future__ import annotations

import os
from typing import Any

from podnet.cni import protocol
from podnet.cni.errors import INVALID_NETWORK_CONFIG, IO_FAILURE, NOT_AVAILABLE, CNIError
from podnet.cni.protocol import Request
from podnet.cni.version import Result
from podnet.ipam import config as ipamconf
from podnet.ipam.allocator import Allocator
from podnet.ipam.config import IPAddress, Range
from podnet.ipam.store import Store


def _store(conf: ipamconf.IPAMConfig) -> Store:
    return Store(conf.data_dir, conf.name)


def cmd_add(req: Request) -> Result:
    conf = ipamconf.parse(req.config, req.args)
    unmatched = [ip for ip in conf.requested
                 if not any(s.range_for(ip) for s in conf.range_sets)]
    if unmatched:
        raise CNIError(INVALID_NETWORK_CONFIG,
                       f"requested IPs {[str(i) for i in unmatched]} are in no range set")
    got: list[tuple[IPAddress, Range]] = []
    store = _store(conf)
    try:
        with store.locked():
            # Every file of the store is read to find the attachment's: once, not per set.
            held = store.get_by_id(req.container_id, req.ifname)
            try:
                for index, rset in enumerate(conf.range_sets):
                    want = next((ip for ip in conf.requested if rset.range_for(ip)), None)
                    got.append(Allocator(rset, index, store).get(req.container_id, req.ifname,
                                                                  want, held))
            except CNIError:
                for ip, _ in got:
                    store.release(ip)
                raise
    except OSError as exc:
        raise CNIError(IO_FAILURE, f"IPAM store {store.dir}: {exc}") from None
    result: Result = {
        "cniVersion": req.cni_version,
        "ips": [_ip_config(ip, r) for ip, r in got],
        "routes": conf.routes,
    }
    if conf.dns:
        result["dns"] = conf.dns
    return result


def _ip_config(ip: IPAddress, r: Range) -> dict[str, Any]:
    out: dict[str, Any] = {"address": f"{ip}/{r.subnet.prefixlen}"}
    if r.gateway is not None:
        out["gateway"] = str(r.gateway)
    return out


def cmd_del(req: Request) -> None:
    conf = ipamconf.parse(req.config, req.args)
    store = _store(conf)
    try:
        with store.locked():
            store.release_by_id(req.container_id, req.ifname)
    except OSError as exc:
        raise CNIError(IO_FAILURE, f"IPAM store {store.dir}: {exc}") from None


def cmd_check(req: Request) -> None:
    conf = ipamconf.parse(req.config, req.args)
    store = _store(conf)
    with store.locked():
        held = store.get_by_id(req.container_id, req.ifname)
    for index, rset in enumerate(conf.range_sets):
        if not any(rset.range_for(ip) for ip in held):
            raise CNIError(INVALID_NETWORK_CONFIG, f"no IP in range set {index} ({rset}) is "
                           f"reserved for {req.container_id}/{req.ifname}")


def cmd_gc(req: Request) -> None:
    conf = ipamconf.parse(req.config, req.args)
    valid = req.config.get("cni.dev/valid-attachments", [])
    if not isinstance(valid, list):
        raise CNIError(INVALID_NETWORK_CONFIG, "cni.dev/valid-attachments must be a list")
    keep = {(str(a.get("containerID")), str(a.get("ifname")))
            for a in valid if isinstance(a, dict)}
    store = _store(conf)
    with store.locked():
        for ip, cid, ifname in list(store.allocations()):
            if (cid, ifname) not in keep:
                protocol.log(f"GC releases {ip} held by {cid}/{ifname}")
                store.release(ip)


def cmd_status(req: Request) -> None:
    conf = ipamconf.parse(req.config, req.args)
    store = _store(conf)
    try:
        os.makedirs(store.dir, exist_ok=True)
        probe = os.path.join(store.dir, ".status-probe")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise CNIError(NOT_AVAILABLE, f"IPAM store {store.dir} is not writable: {exc}") from None


HANDLERS: dict[str, protocol.Handler] = {
    "ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status,
}
