"""Small netlink helpers over pyroute2: links, addresses, routes."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.netlink.constants import IFA_F_NODAD, RTN_UNICAST

__all__ = ["IPRoute", "NetlinkError"]


def by_name(ipr: IPRoute, name: str) -> Any | None:
    """The link message for a name (one kernel lookup, not a dump); None if absent."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.EINVAL):
            return None
        raise


def index_of(ipr: IPRoute, name: str) -> int | None:
    msg = by_name(ipr, name)
    return None if msg is None else int(msg["index"])


def link(ipr: IPRoute, index: int) -> Any:
    return ipr.link("get", index=index)[0]


def kind_of(msg: Any) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    return None if info is None else info.get_attr("IFLA_INFO_KIND")


def info_data(msg: Any) -> Any | None:
    """The kind's own attributes of a link (IFLA_INFO_DATA: a VXLAN's VNI, a GRE's local)."""
    info = msg.get_attr("IFLA_LINKINFO")
    return None if info is None else info.get_attr("IFLA_INFO_DATA")


def mac_of(msg: Any) -> str:
    return str(msg.get_attr("IFLA_ADDRESS"))


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete by name; False when it was not there."""
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
        return False
    return True


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def addresses(ipr: IPRoute, index: int) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    out: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    for msg in ipr.get_addr(index=index):
        out.append(ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"))
    return out


def add_address(ipr: IPRoute, index: int, iface: str) -> None:
    """Add an address; IPv6 ones skip duplicate address detection, which would hold them back
    for seconds: IPAM already made them unique."""
    addr = ipaddress.ip_interface(iface)
    extra = {"flags": IFA_F_NODAD} if addr.version == 6 else {}
    try:
        ipr.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen,
                 **extra)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def del_address(ipr: IPRoute, index: int, iface: str) -> None:
    addr = ipaddress.ip_interface(iface)
    ipr.addr("del", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)


def routes(ipr: IPRoute, family: int, table: int = 254) -> Iterator[dict[str, Any]]:
    """Main-table unicast routes as {dst, gw, oif}, dst in CIDR form."""
    for msg in ipr.get_routes(family=family, table=table):
        if msg["type"] != RTN_UNICAST:
            continue
        dst = msg.get_attr("RTA_DST")
        default = "0.0.0.0" if family == socket.AF_INET else "::"
        yield {"dst": f"{dst or default}/{msg['dst_len']}", "gw": msg.get_attr("RTA_GATEWAY"),
               "oif": msg.get_attr("RTA_OIF")}


def add_route(ipr: IPRoute, dst: str, gw: str | None, oif: int | None, **extra: Any) -> None:
    """Add or replace a route (idempotent)."""
    net = ipaddress.ip_network(dst, strict=False)
    spec: dict[str, Any] = {"dst": str(net), **extra}
    if gw:
        spec["gateway"] = gw
    if oif is not None:
        spec["oif"] = oif
    ipr.route("replace", **spec)


def ensure_bridge(ipr: IPRoute, name: str, mac: str | None, mtu: int) -> int:
    """The bridge, made if absent (with `mac`, else its first MAC pinned) and up; its index."""
    msg = by_name(ipr, name)
    if msg is None:
        spec: dict[str, Any] = {"ifname": name, "kind": "bridge", "mtu": mtu}
        if mac:
            spec["address"] = mac
        ipr.link("add", **spec)
        msg = by_name(ipr, name)
        assert msg is not None
        if not mac:  # pinned, so that it does not follow the lowest port MAC
            ipr.link("set", index=msg["index"], address=mac_of(msg))
    ipr.link("set", index=msg["index"], state="up")
    return int(msg["index"])
