"""Finding this node's underlay: its IP, interface and MTU."""

from __future__ import annotations

import ipaddress
import socket

from pyroute2 import IPRoute

from podnet.backends.base import NodeInfo
from podnet.netlink import links


def detect(name: str, iface: str | None, node_ip: str | None) -> NodeInfo:
    """From --node-ip, else --iface's first IPv4 address, else the default route's interface."""
    ipr = IPRoute(groups=0)
    try:
        if node_ip:
            ip = ipaddress.IPv4Address(node_ip)
            for msg in ipr.get_addr(family=socket.AF_INET):
                if msg.get_attr("IFA_ADDRESS") == str(ip):
                    return _info(ipr, name, ip, int(msg["index"]))
            raise ValueError(f"no interface holds the node IP {ip}")
        if iface is None:
            defaults = [r for r in ipr.get_routes(family=socket.AF_INET, table=254)
                        if r["dst_len"] == 0 and r.get_attr("RTA_OIF")]
            if not defaults:
                raise ValueError("no default route to find the node's interface; give --iface "
                                 "or --node-ip")
            index = int(defaults[0].get_attr("RTA_OIF"))
        else:
            found = links.index_of(ipr, iface)
            if found is None:
                raise ValueError(f"interface {iface} does not exist")
            index = found
        addrs = [a for a in links.addresses(ipr, index) if a.version == 4]
        master = links.link(ipr, index).get_attr("IFLA_MASTER")
        if not addrs and master:
            # A port of a bridge that took over its addresses (the l2 backend's node bridge).
            index = int(master)
            addrs = [a for a in links.addresses(ipr, index) if a.version == 4]
        if not addrs:
            raise ValueError(f"interface #{index} has no IPv4 address")
        return _info(ipr, name, ipaddress.IPv4Address(addrs[0].ip), index)
    finally:
        ipr.close()


ETH_MAX_MTU = 65535  # a bridge's or veth's largest MTU (lo has 65536)


def _info(ipr: IPRoute, name: str, ip: ipaddress.IPv4Address, index: int) -> NodeInfo:
    msg = links.link(ipr, index)
    return NodeInfo(name=name, ip=ip, iface=str(msg.get_attr("IFLA_IFNAME")), iface_index=index,
                    mtu=min(int(msg.get_attr("IFLA_MTU")), ETH_MAX_MTU))
