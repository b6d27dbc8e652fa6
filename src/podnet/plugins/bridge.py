"""`podnet`, the main plugin: a veth pair from the pod to a node bridge, IPAM delegated.

Options as the reference `bridge` plugin has them; an existing bridge is reused, which is what the
Layer 2 design needs (a pre-created `kube-bridge`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podnet import podrecords
from podnet.cni import delegate, protocol
from podnet.cni.errors import (
    CHECK_MISMATCH,
    INVALID_NETWORK_CONFIG,
    IO_FAILURE,
    NETLINK_FAILURE,
    CNIError,
)
from podnet.cni.protocol import Request
from podnet.cni.version import Result
from podnet.firewall import nft
from podnet.firewall.libnft import NftError
from podnet.netlink import netns, sysfs
from podnet.netlink.codec import NetlinkError
from podnet.netlink.fastlink import Link, Rtnl, random_mac
from podnet.plugins.context import HostContext
from podnet.policy import pending

DEFAULT_BRIDGE = "kube-bridge"
_BOOL_KEYS = {"isGateway": "is_gateway", "isDefaultGateway": "is_default_gateway",
              "forceAddress": "force_address", "hairpinMode": "hairpin",
              "promiscMode": "promisc", "ipMasq": "ip_masq", "antiSpoof": "anti_spoof",
              "policy": "policy", "receiveSteering": "receive_steering"}


@dataclass
class BridgeConf:
    bridge: str = DEFAULT_BRIDGE
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    hairpin: bool = False
    promisc: bool = False
    ip_masq: bool = False
    anti_spoof: bool = False  # podnet's: the pod's port admits only its own MAC and addresses
    # podnet's: the agent enforces NetworkPolicy; a new pod takes the normal path, where the
    # node's rules judge it, until the agent has found it unisolated
    policy: bool = False
    # podnet's: the host end steers what the pod sends by flow over the node's CPUs (RPS), so
    # the veth does not reorder a flow (podnet.netlink.sysfs)
    receive_steering: bool = False
    mtu: int | None = None
    fast_path_uplink: str | None = None  # podnet's: where the agent's eBPF fast path sits
    pod_records: str | None = None  # podnet's: the agent's directory of pod records

    @classmethod
    def parse(cls, config: dict[str, Any]) -> BridgeConf:
        conf = cls()
        bridge = config.get("bridge", DEFAULT_BRIDGE)
        if not isinstance(bridge, str) or not protocol.valid_ifname(bridge):
            raise CNIError(INVALID_NETWORK_CONFIG, f"invalid bridge name {bridge!r}")
        conf.bridge = bridge
        for key, attr in _BOOL_KEYS.items():
            value = config.get(key, False)
            if not isinstance(value, bool):
                raise CNIError(INVALID_NETWORK_CONFIG, f"{key} must be true or false")
            setattr(conf, attr, value)
        mtu = config.get("mtu")
        if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                                or not 68 <= mtu <= 65535):
            raise CNIError(INVALID_NETWORK_CONFIG, f"mtu {mtu!r} must be an integer 68..65535")
        conf.mtu = mtu
        uplink = config.get("fastPathUplink")
        if uplink is not None and (not isinstance(uplink, str)
                                   or not protocol.valid_ifname(uplink)):
            raise CNIError(INVALID_NETWORK_CONFIG, f"invalid fastPathUplink {uplink!r}")
        conf.fast_path_uplink = uplink
        records = config.get("podRecords")
        if records is not None and (not isinstance(records, str) or not records.startswith("/")):
            raise CNIError(INVALID_NETWORK_CONFIG, f"podRecords {records!r} must be an absolute "
                           "path")
        conf.pod_records = records
        # isDefaultGateway implies isGateway, as in the reference plugin.
        conf.is_gateway = conf.is_gateway or conf.is_default_gateway
        return conf


def _netlink(what: str, exc: OSError) -> CNIError:
    return CNIError(NETLINK_FAILURE, f"{what}: {exc.strerror or exc}")


def ensure_bridge(ctx: HostContext, conf: BridgeConf) -> tuple[Link, bool]:
    """Reuse the bridge, or create it (pyroute2: rare); (its link, whether this call made it)."""
    link = ctx.fast.get_link(conf.bridge)
    created = False
    if link is None:
        from pyroute2.netlink.exceptions import NetlinkError as PyrouteError

        spec: dict[str, Any] = {"ifname": conf.bridge, "kind": "bridge"}
        if conf.mtu:
            spec["mtu"] = conf.mtu
        try:
            ctx.host.link("add", **spec)
            created = True
        except PyrouteError as exc:
            if exc.code != errno.EEXIST:  # else a concurrent ADD made it first
                raise CNIError(NETLINK_FAILURE, f"creating bridge {conf.bridge}: {exc}") from None
        link = ctx.fast.get_link(conf.bridge)
        if link is None:
            raise CNIError(NETLINK_FAILURE, f"bridge {conf.bridge} vanished after creation")
        if created:
            # An address set explicitly stays; otherwise the kernel gives the bridge the lowest
            # port MAC, which changes as pods come and go.
            ctx.host.link("set", index=link.index, address=link.mac)
    if link.kind != "bridge":
        raise CNIError(INVALID_NETWORK_CONFIG, f"{conf.bridge!r} already exists but is not a "
                       "bridge")
    if conf.promisc and not link.flags & 0x100:
        ctx.host.link("set", index=link.index, flags=0x100, mask=0x100)  # IFF_PROMISC
    if not link.flags & 1:
        ctx.fast.set_up(link.index)
    return link, created


def _delete_bridge_if_unused(ctx: HostContext, index: int) -> None:
    """Undo of a bridge this ADD made, unless another ADD has put a port on it meanwhile."""
    if not any(m.get_attr("IFLA_MASTER") == index for m in ctx.host.get_links()):
        ctx.host.link("del", index=index)


def _gateways(result: Result, conf: BridgeConf) -> None:
    """Fill in gateways (first address of each subnet) and the default routes the conf asks."""
    if not conf.is_gateway:
        return
    for ipc in result.get("ips", []):
        iface = ipaddress.ip_interface(ipc["address"])
        if not ipc.get("gateway"):
            ipc["gateway"] = str(iface.network.network_address + 1)
        if not conf.is_default_gateway:
            continue
        default = "0.0.0.0/0" if iface.version == 4 else "::/0"
        existing = [r for r in result.setdefault("routes", []) if
                    ipaddress.ip_network(r["dst"], strict=False) == ipaddress.ip_network(default)]
        if any(r.get("gw") and r["gw"] != ipc["gateway"] for r in existing):
            raise CNIError(INVALID_NETWORK_CONFIG, "isDefaultGateway ineffective because IPAM "
                           "sets a default route through another gateway")
        if not existing:
            result["routes"].append({"dst": default, "gw": ipc["gateway"]})


def _ensure_bridge_addr(ctx: HostContext, index: int, name: str, gw_iface: str,
                        force: bool) -> None:
    want = ipaddress.ip_interface(gw_iface)
    for have in ctx.fast.addresses(index):
        if have == want:
            return
        if have.version == want.version and (
                want.version == 4 or want.ip in have.network or have.ip in want.network):
            if not force:
                raise CNIError(INVALID_NETWORK_CONFIG,
                               f"{name!r} already has an IP address different from {want}")
            ctx.fast.del_address(index, str(have))
    ctx.fast.add_address(index, str(want))


def _create_veth(ctx: HostContext, pod: Rtnl, pod_fd: int, req: Request, conf: BridgeConf,
                 host_name: str, bridge: int) -> tuple[str, Link | None]:
    """The veth pair, the host's end enslaved and up in the request that makes it; the pod
    end's MAC and the host end's link. A clash is looked into only when the kernel reports
    one."""
    pod_mac = random_mac()
    try:
        return pod_mac, ctx.fast.create_veth(host_name, req.ifname, pod_fd, conf.mtu, bridge,
                                             pod_mac)
    except NetlinkError as exc:
        if exc.errno != errno.EEXIST:
            raise
    if pod.get_link(req.ifname) is not None:
        raise CNIError(INVALID_NETWORK_CONFIG, f"container interface {req.ifname} already "
                       f"exists in {req.netns}")
    if ctx.fast.delete_link(host_name):
        protocol.log(f"removed {host_name} left by an earlier, interrupted ADD")
    return pod_mac, ctx.fast.create_veth(host_name, req.ifname, pod_fd, conf.mtu, bridge,
                                         pod_mac)


def _configure_pod_iface(pod: Rtnl, index: int, result: Result, iface_idx: int) -> None:
    gws: dict[int, str] = {}
    for ipc in result.get("ips", []):
        ipc["interface"] = iface_idx
        pod.add_address(index, ipc["address"])
        if ipc.get("gateway"):
            gws.setdefault(_family(ipc["address"]), ipc["gateway"])
    pod.set_up(index)
    for route in result.get("routes", []):
        gw = route.get("gw") or gws.get(_family(route["dst"]))
        pod.add_route(route["dst"], gw, index)


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def host_veth_name(network: str, container_id: str, ifname: str) -> str:
    """Derived from the attachment, so DEL and GC know it even when the pod's namespace is gone,
    and an ADD retried after a crash finds what the first one left."""
    digest = hashlib.sha256(f"{network}/{container_id}/{ifname}".encode()).hexdigest()
    return "veth" + digest[:8]


def cmd_add(ctx: HostContext, req: Request) -> Result:
    conf = BridgeConf.parse(req.config)
    ipam = delegate.ipam_type(req)
    prev = req.prev_result
    undo: list[Callable[[], object]] = []
    try:
        bridge, br_created = ensure_bridge(ctx, conf)
        if br_created:
            undo.append(lambda: _delete_bridge_if_unused(ctx, bridge.index))
        host_name = host_veth_name(req.config["name"], req.container_id, req.ifname)
        with ctx.pod_fast(req.enter) as pod, ctx.pod_fd(req.enter) as pod_fd:
            pod_mac, host_link = _create_veth(ctx, pod, pod_fd, req, conf, host_name,
                                              bridge.index)
            undo.append(lambda: ctx.fast.delete_link(host_name))
            if host_link is None:
                raise CNIError(NETLINK_FAILURE, "veth pair vanished after creation")
            pod_index = host_link.peer_index  # a veth's link is its peer
            if conf.hairpin:
                ctx.host.brport("set", index=host_link.index, mode=1)
            if conf.receive_steering:
                _steer(ctx, host_name)

            ipam_result = delegate.call(req, ipam, "ADD")
            undo.append(lambda: delegate.call(req, ipam, "DEL"))
            if not ipam_result or not ipam_result.get("ips"):
                raise CNIError(INVALID_NETWORK_CONFIG, "IPAM plugin returned missing IP config")
            if conf.policy:
                # Pending: nothing forwarded from or to the pod until the agent has judged it
                # (before this ADD returns).
                held = [i["address"] for i in ipam_result["ips"]]
                undo.append(lambda: _in_host(ctx, pending.release, held))
                _in_host(ctx, pending.hold, held)
            _gateways(ipam_result, conf)
            base = len(prev.get("interfaces", [])) if prev else 0
            _configure_pod_iface(pod, pod_index, ipam_result, base + 2)
        if conf.is_gateway:
            for ipc in ipam_result["ips"]:
                prefix = ipaddress.ip_interface(ipc["address"]).network.prefixlen
                _ensure_bridge_addr(ctx, bridge.index, conf.bridge,
                                    f"{ipc['gateway']}/{prefix}", conf.force_address)
            _enable_forwarding(ctx, ipam_result)
        addresses = [i["address"] for i in ipam_result["ips"]]
        if conf.anti_spoof:
            undo.append(lambda: _in_host(ctx, nft.del_antispoof, host_name))
            _in_host(ctx, nft.add_antispoof, host_name, pod_mac, addresses)
        if conf.ip_masq:
            tag = nft.masq_tag(req.config["name"], req.container_id, req.ifname)
            _in_host(ctx, nft.add_masq, tag, addresses)
        if conf.fast_path_uplink:
            from podnet.fastpath import podmap  # ctypes: only where the agent enabled it

            uplink, index = conf.fast_path_uplink, host_link.index
            undo.append(lambda: podmap.remove_pod(ctx.fast, uplink, index))
            podmap.add_pod(ctx.fast, uplink, index, host_link.mac, pod_mac, addresses,
                           policed=conf.policy)
        if conf.pod_records:
            records = conf.pod_records
            undo.append(lambda: podrecords.remove(records, host_name))
            record = podrecords.PodRecord.of_request(req.container_id, req.ifname, req.args,
                                                     addresses, req.netns)
            try:
                podrecords.write(records, host_name, record)
            except OSError as exc:
                raise CNIError(IO_FAILURE, f"writing the pod's record: {exc}") from None
    except OSError as exc:
        _rollback(undo)
        raise _netlink("ADD", exc) from None
    except BaseException:
        _rollback(undo)
        raise
    ours: Result = {
        "interfaces": [
            {"name": conf.bridge, "mac": bridge.mac},
            {"name": host_name, "mac": host_link.mac},
            {"name": req.ifname, "mac": pod_mac, "sandbox": req.netns},
        ],
        "ips": ipam_result["ips"],
        "routes": ipam_result.get("routes", []),
        "dns": ipam_result.get("dns", {}),
    }
    if conf.mtu:
        ours["interfaces"][2]["mtu"] = conf.mtu
    return _merge(prev, ours)


def _merge(prev: Result | None, ours: Result) -> Result:
    """Chained after another plugin: its interfaces, IPs and routes come first."""
    if not prev:
        return ours
    merged: Result = {
        "interfaces": prev.get("interfaces", []) + ours["interfaces"],
        "ips": prev.get("ips", []) + ours["ips"],
        "routes": prev.get("routes", []) + ours["routes"],
        "dns": ours["dns"] or prev.get("dns", {}),
    }
    return merged


def _enable_forwarding(ctx: HostContext, result: Result) -> None:
    families = {_family(i["address"]) for i in result["ips"]}
    if socket.AF_INET in families:
        ctx.ensure_sysctl("net/ipv4/ip_forward", "1")
    if socket.AF_INET6 in families:
        ctx.ensure_sysctl("net/ipv6/conf/all/forwarding", "1")


def _rollback(undo: list[Callable[[], object]]) -> None:
    for step in reversed(undo):
        try:
            step()
        except Exception as exc:  # keep undoing the rest; the original error is what counts
            protocol.log(f"rollback step failed: {exc!r}")


def cmd_del(ctx: HostContext, req: Request) -> None:
    conf = BridgeConf.parse(req.config)
    delegate.call(req, delegate.ipam_type(req), "DEL")
    port = host_veth_name(req.config["name"], req.container_id, req.ifname)
    if conf.fast_path_uplink:
        # Before the veth goes: its index says which entries are this pod's. Without the veth
        # (namespace already gone) the agent's reconcile removes them.
        host = ctx.fast.get_link(port)
        if host is not None:
            from podnet.fastpath import podmap

            try:
                podmap.remove_pod(ctx.fast, conf.fast_path_uplink, host.index)
            except OSError as exc:
                raise _netlink("removing the pod from the fast path", exc) from None
    if req.enter:
        # A DEL whose namespace is gone has nothing left to remove there: the veth went with it.
        with contextlib.suppress(CNIError), ctx.pod_fast(req.enter) as pod:
            try:
                delete_pod_link(ctx, pod, req.ifname, req.enter)
            except OSError as exc:
                raise _netlink(f"deleting {req.ifname}", exc) from None
    if conf.pod_records:
        try:
            podrecords.remove(conf.pod_records, port)
        except OSError as exc:
            raise CNIError(IO_FAILURE, f"removing the pod's record: {exc}") from None
    if conf.anti_spoof:
        _in_host(ctx, nft.del_antispoof, port)
    if conf.ip_masq:
        tag = nft.masq_tag(req.config["name"], req.container_id, req.ifname)
        _in_host(ctx, nft.del_masq, lambda t: t != tag)


def delete_pod_link(ctx: HostContext, pod: Rtnl, ifname: str, pod_ns: str) -> None:
    """Delete the pod's interface; done once the kernel announces its veth peer removed, the
    last of the pair (both ends unregistered, their addresses, routes and bridge port gone),
    rather than when the deleting call returns: the kernel holds that call until RCU grace
    periods have passed and the pair is freed, 18-20 ms of every DEL that nothing can
    observe. The call is left to a thread of its own, on a socket of its own."""
    link = pod.get_link(ifname)
    if link is None:
        return
    if link.kind != "veth" or not link.peer_index:
        pod.delete_link(ifname)
        return
    monitor = netns.rtnl_in(ctx.host_ns)
    try:
        monitor.watch_links()
        deleter = netns.rtnl_in(pod_ns)
        try:
            done, told = os.pipe2(os.O_CLOEXEC)
        except OSError:  # out of descriptors: the deleter's socket is not left open
            deleter.close()
            raise
        failed: list[OSError] = []

        def delete() -> None:
            try:
                deleter.delete_link(ifname)
            except OSError as exc:
                failed.append(exc)
            finally:
                deleter.close()
                with contextlib.suppress(OSError):  # the request may be answered already
                    os.write(told, b"1")
                os.close(told)

        try:
            threading.Thread(target=delete, name=f"del-{ifname}", daemon=True).start()
        except RuntimeError:  # no thread to be had: the call made here, as it takes
            delete()
        try:
            if monitor.link_removed(link.peer_index, done):
                return
        finally:
            os.close(done)
        if failed:  # the call ended first: it failed, or the peer is in another namespace
            raise failed[0]
    finally:
        monitor.close()


def _in_host(ctx: HostContext, fn: Callable[..., object], *args: Any) -> None:
    """Run a firewall change in the node's namespace, through the context's nftables
    session (`fn`'s `run`); its failure is an I/O error."""
    try:
        with ctx.in_host():
            fn(*args, run=ctx.nft.run)
    except NftError as exc:
        raise CNIError(IO_FAILURE, f"nftables: {exc}") from None


def cmd_check(ctx: HostContext, req: Request) -> None:
    from podnet.netlink import links  # pyroute2: CHECK is not on a pod's start-up path

    conf = BridgeConf.parse(req.config)
    prev = req.prev_result
    if prev is None:
        raise CNIError(INVALID_NETWORK_CONFIG, "CHECK requires a prevResult")
    delegate.call(req, delegate.ipam_type(req), "CHECK")
    problems: list[str] = []
    ifaces = prev.get("interfaces", [])
    pod_pos = next((i for i, f in enumerate(ifaces)
                    if f.get("name") == req.ifname and f.get("sandbox") == req.netns), None)
    if pod_pos is None:
        raise CNIError(CHECK_MISMATCH, f"prevResult has no interface {req.ifname} in sandbox "
                       f"{req.netns}")
    br_index = links.index_of(ctx.host, conf.bridge)
    if br_index is None:
        problems.append(f"bridge {conf.bridge} is missing")
    else:
        br = links.link(ctx.host, br_index)
        if links.kind_of(br) != "bridge":
            problems.append(f"{conf.bridge} is not a bridge")
        want = next((f for f in ifaces if f.get("name") == conf.bridge), None)
        if want and want.get("mac") and want["mac"] != links.mac_of(br):
            problems.append(f"bridge {conf.bridge} has MAC {links.mac_of(br)}, "
                            f"prevResult says {want['mac']}")
    with ctx.pod(req.enter) as pod:
        problems += _check_pod(ctx, pod, req, conf, prev, pod_pos, br_index)
    if problems:
        raise CNIError(CHECK_MISMATCH, "; ".join(problems))


def _steer(ctx: HostContext, host_name: str) -> None:
    try:
        ctx.sysfs.set_rps(host_name, sysfs.all_cpus())
    except OSError as exc:
        raise CNIError(IO_FAILURE, f"receive steering on {host_name}: "
                       f"{exc.strerror or exc}") from None


def _check_pod(ctx: HostContext, pod: Any, req: Request, conf: BridgeConf, prev: Result,
               pod_pos: int, br_index: int | None) -> list[str]:
    from podnet.netlink import links

    problems: list[str] = []
    want = prev["interfaces"][pod_pos]
    index = links.index_of(pod, req.ifname)
    if index is None:
        return [f"interface {req.ifname} is missing from {req.netns}"]
    msg = links.link(pod, index)
    if links.kind_of(msg) != "veth":
        problems.append(f"{req.ifname} is not a veth")
    if want.get("mac") and want["mac"] != links.mac_of(msg):
        problems.append(f"{req.ifname} has MAC {links.mac_of(msg)}, prevResult says "
                        f"{want['mac']}")
    if want.get("mtu") and want["mtu"] != msg.get_attr("IFLA_MTU"):
        problems.append(f"{req.ifname} has MTU {msg.get_attr('IFLA_MTU')}, prevResult says "
                        f"{want['mtu']}")
    peer_index = msg.get_attr("IFLA_LINK")
    peers = [f for f in ctx.host.get_links() if f["index"] == peer_index]
    if not peers:
        problems.append(f"the host end of {req.ifname} is missing")
    elif br_index is not None and peers[0].get_attr("IFLA_MASTER") != br_index:
        problems.append(f"host veth {peers[0].get_attr('IFLA_IFNAME')} is not on the bridge")
    elif conf.fast_path_uplink:
        from podnet.fastpath import podmap

        problems += podmap.check_pod(
            ctx.fast, conf.fast_path_uplink, peer_index, links.mac_of(msg),
            [i["address"] for i in prev.get("ips", []) if i.get("interface") == pod_pos])
    if peers and conf.receive_steering:
        host_name = peers[0].get_attr("IFLA_IFNAME")
        if not all(ctx.sysfs.rps(host_name)):
            problems.append(f"host veth {host_name} does not steer what it receives "
                            "(receiveSteering)")
    have = {str(a) for a in links.addresses(pod, index)}
    for ipc in prev.get("ips", []):
        if ipc.get("interface") == pod_pos and ipc["address"] not in have:
            problems.append(f"address {ipc['address']} is missing from {req.ifname}")
    for route in prev.get("routes", []):
        fam = links.family_of(route["dst"])
        dst = str(ipaddress.ip_network(route["dst"], strict=False))
        if not any(r["dst"] == dst and (not route.get("gw") or r["gw"] == route["gw"])
                   for r in links.routes(pod, fam)):
            problems.append(f"route {route['dst']} via {route.get('gw')} is missing")
    return problems


def cmd_gc(ctx: HostContext, req: Request) -> None:
    delegate.call(req, delegate.ipam_type(req), "GC")
    valid = req.config.get("cni.dev/valid-attachments", [])
    keep = {nft.masq_tag(req.config["name"], str(a.get("containerID")), str(a.get("ifname")))
            for a in valid if isinstance(a, dict)}
    prefix = req.config["name"] + ":"
    _in_host(ctx, nft.del_masq, lambda t: not t.startswith(prefix) or t in keep)


def cmd_status(ctx: HostContext, req: Request) -> None:
    BridgeConf.parse(req.config)
    delegate.call(req, delegate.ipam_type(req), "STATUS")


Command = Callable[[HostContext, Request], "Result | None"]
COMMANDS: dict[str, Command] = {
    "ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status,
}


def handlers(ctx: HostContext) -> dict[str, protocol.Handler]:
    def bind(fn: Command) -> protocol.Handler:
        return lambda req: fn(ctx, req)

    return {name: bind(fn) for name, fn in COMMANDS.items()}
