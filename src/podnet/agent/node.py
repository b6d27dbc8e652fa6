"""Finding this node's underlay: its IP, interface and MTU."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import replace

from pyroute2 import IPRoute

from podnet.backends.base import NodeInfo
from podnet.datastore.model import NodeIP
from podnet.netlink import links


def detect(name: str, iface: str | None, node_ip: str | None) -> NodeInfo:
    """From --node-ip (one address, or IPV4,IPV6 as kubelet takes it), else --iface's first
    address, else the default route's interface's.

    The first address is an IPv4 one where the interface has one, else its first global IPv6
    one: an IPv6-only underlay gives the node an IPv6 address, and a link-local one cannot be
    reached from other links. A node with an IPv4 node IP also publishes its interface's first
    IPv6 one (unless --node-ip names it): a dual-stack underlay carries IPv6 pods directly."""
    ipr = IPRoute(groups=0)
    try:
        if node_ip:
            first, _, second = node_ip.partition(",")
            ip = ipaddress.ip_address(first)
            info = _info(ipr, name, ip, _holder(ipr, ip))
            if second:
                ip6 = ipaddress.IPv6Address(second)
                _holder(ipr, ip6)
                return replace(info, ip6=ip6)
            return _with_ip6(ipr, info)
        if iface is None:
            index = _default_route_link(ipr)
        else:
            found = links.index_of(ipr, iface)
            if found is None:
                raise ValueError(f"interface {iface} does not exist")
            index = found
        addr = _first_address(ipr, index)
        master = links.link(ipr, index).get_attr("IFLA_MASTER")
        if addr is None and master:
            # A port of a bridge that took over its addresses (the l2 backend's node bridge).
            index = int(master)
            addr = _first_address(ipr, index)
        if addr is None:
            raise ValueError(f"interface #{index} has no IPv4 or global IPv6 address")
        return _with_ip6(ipr, _info(ipr, name, addr, index))
    finally:
        ipr.close()


def _holder(ipr: IPRoute, ip: NodeIP) -> int:
    """The interface that holds `ip`."""
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    for msg in ipr.get_addr(family=family):
        if ipaddress.ip_address(msg.get_attr("IFA_ADDRESS")) == ip:
            return int(msg["index"])
    raise ValueError(f"no interface holds the node IP {ip}")


def _with_ip6(ipr: IPRoute, info: NodeInfo) -> NodeInfo:
    """An IPv4 node's IPv6 address on the same interface, where it has one."""
    if info.ip.version == 6:
        return info
    v6 = [a.ip for a in links.addresses(ipr, info.iface_index)
          if isinstance(a.ip, ipaddress.IPv6Address) and _reachable(a.ip)]
    return replace(info, ip6=v6[0]) if v6 else info


def _reachable(ip: NodeIP) -> bool:
    """Whether other nodes could reach the node at `ip`: not link-local, loopback (lo's ::1
    beside an address put on lo) or multicast."""
    return not (ip.is_link_local or ip.is_loopback or ip.is_multicast or ip.is_unspecified)


def _default_route_link(ipr: IPRoute) -> int:
    """The interface of the default route: IPv4's, else IPv6's (an IPv6-only underlay)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family, table=254):
            if r["dst_len"] == 0 and r.get_attr("RTA_OIF"):
                return int(r.get_attr("RTA_OIF"))
    raise ValueError("no default route to find the node's interface; give --iface or "
                     "--node-ip")


def _first_address(ipr: IPRoute, index: int) -> NodeIP | None:
    addrs = links.addresses(ipr, index)
    v4 = [a.ip for a in addrs if a.version == 4]
    v6 = [a.ip for a in addrs if a.version == 6 and _reachable(a.ip)]
    return (v4 or v6 or [None])[0]


ETH_MAX_MTU = 65535  # a bridge's or veth's largest MTU (lo has 65536)


def _info(ipr: IPRoute, name: str, ip: NodeIP, index: int) -> NodeInfo:
    msg = links.link(ipr, index)
    return NodeInfo(name=name, ip=ip, iface=str(msg.get_attr("IFLA_IFNAME")), iface_index=index,
                    mtu=min(int(msg.get_attr("IFLA_MTU")), ETH_MAX_MTU))
