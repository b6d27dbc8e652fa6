"""The CNI plugin's ADD and DEL in raw rtnetlink: link lookup, veth creation into the pod's
namespace, addresses, link state, routes, link deletion.

Every pod start pays for these, and pyroute2 costs ~0.5 ms a request here (and ~100 ms to import,
which the in-process path would pay per pod); packed with `struct` each is a few microseconds
plus the kernel's own work. The unit tests decode these messages with pyroute2's parsers.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
from dataclasses import dataclass

from podnet.netlink import codec, rtmsg
from podnet.netlink.codec import NetlinkError
from podnet.netlink.constants import IFA_F_NODAD, RT_TABLE_MAIN, RTN_UNICAST, RTPROT_STATIC

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_NET_NS_FD = 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP = 0x1
RTNLGRP_LINK = 1  # the multicast group of link notifications
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
IFINFO = struct.Struct("=BxHiII")
IFADDR = struct.Struct("=BBBBi")


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    flags: int
    mtu: int
    mac: str
    master: int
    peer_index: int
    kind: str | None


class Rtnl:
    """One raw NETLINK_ROUTE socket (made in the namespace the calling thread is in)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.socket(socket.AF_NETLINK,
                                          socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self.sock.bind((0, 0))
        # Dumps filtered by the kernel (an address dump for one link, not for every veth).
        self.sock.setsockopt(codec.SOL_NETLINK, codec.NETLINK_GET_STRICT_CHK, 1)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, mtype: int, flags: int, body: bytes) -> int:
        """Send one message; its sequence number."""
        self.seq += 1
        self.sock.send(codec.message(mtype, flags, self.seq, body))
        return self.seq

    def request(self, mtype: int, flags: int, body: bytes,
                echo: bool = False) -> tuple[bytes, int, int] | None:
        """Send and wait for the ack; with `echo`, the kernel's echo of the message made (the
        same type), None where it echoes none."""
        flags |= codec.F_REQUEST | codec.F_ACK | (codec.F_ECHO if echo else 0)
        return codec.ack(self.sock, self.send(mtype, flags, body), mtype if echo else None)

    # -- links -----------------------------------------------------------------------------------
    def get_link(self, name: str) -> Link | None:
        seq = self.send(RTM_GETLINK, codec.F_REQUEST, IFINFO.pack(0, 0, 0, 0, 0)
                        + codec.attr(IFLA_IFNAME, name.encode() + b"\0"))
        for mtype, rseq, buf, start, end in codec.receive(self.sock):
            if rseq == seq and mtype == codec.NLMSG_ERROR:
                code = codec.error_code(buf, start)
                if code in (errno.ENODEV, errno.EINVAL):
                    return None
                raise NetlinkError(code, os.strerror(code))
            if rseq == seq and mtype == RTM_NEWLINK:
                return _parse_link(buf, start, end)
        return None

    def create_veth(self, name: str, peer: str, peer_netns_fd: int, mtu: int | None,
                    master: int, peer_mac: str) -> Link | None:
        """A veth pair: `name` here, enslaved to `master` and up; `peer` in the netns, down
        (the kernel cannot open it before its peer is linked: ENOTCONN), with the MAC given
        (so that the caller knows it without asking that namespace). The link made here (its
        index, MAC and peer's index), as the kernel echoes it; None if it is gone."""
        peer_attrs = codec.attr(IFLA_IFNAME, peer.encode() + b"\0")
        peer_attrs += codec.attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
        peer_attrs += codec.attr(IFLA_ADDRESS, codec.mac(peer_mac))
        attrs = codec.attr(IFLA_IFNAME, name.encode() + b"\0")
        if mtu:
            peer_attrs += codec.attr(IFLA_MTU, struct.pack("=I", mtu))
            attrs += codec.attr(IFLA_MTU, struct.pack("=I", mtu))
        attrs += codec.attr(IFLA_MASTER, struct.pack("=I", master))
        info = codec.attr(IFLA_INFO_KIND, b"veth\0") + codec.nest(
            IFLA_INFO_DATA, codec.nest(VETH_INFO_PEER, IFINFO.pack(0, 0, 0, 0, 0) + peer_attrs))
        attrs += codec.nest(IFLA_LINKINFO, info)
        echoed = self.request(RTM_NEWLINK, codec.F_CREATE | codec.F_EXCL,
                              IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP) + attrs, echo=True)
        # The echo saves asking for the link again (a round trip of every pod's ADD); older
        # kernels do not echo a new link.
        return _parse_link(*echoed) if echoed is not None else self.get_link(name)

    def set_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, 0, IFINFO.pack(0, 0, index, IFF_UP, IFF_UP))

    def delete_link(self, name: str) -> bool:
        """Delete by name; False when it was not there."""
        try:
            self.request(RTM_DELLINK, 0, IFINFO.pack(0, 0, 0, 0, 0)
                         + codec.attr(IFLA_IFNAME, name.encode() + b"\0"))
        except NetlinkError as exc:
            if exc.errno in (errno.ENODEV, errno.EINVAL):
                return False
            raise
        return True

    def watch_links(self) -> None:
        """From now on, the namespace's link notifications arrive on this socket too."""
        self.sock.setsockopt(codec.SOL_NETLINK, codec.NETLINK_ADD_MEMBERSHIP, RTNLGRP_LINK)

    def link_removed(self, index: int, done: int) -> bool:
        """Wait (on a `watch_links` socket) for the kernel's notice that link `index` is
        removed: True; False when the descriptor `done` becomes readable first."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(done, select.POLLIN)
        self.sock.setblocking(False)
        while True:
            for fd, _ in poller.poll():
                if fd == done:
                    return False
                try:
                    for mtype, _seq, buf, start, _end in codec.receive(self.sock):
                        family, _type, gone, _flags, _change = IFINFO.unpack_from(buf, start)
                        # A bridge port's removal is announced as RTM_DELLINK of AF_BRIDGE
                        # first; the link's own notice, of AF_UNSPEC, once its addresses,
                        # routes and bridge port are gone.
                        if mtype == RTM_DELLINK and gone == index and family == socket.AF_UNSPEC:
                            return True
                except BlockingIOError:
                    continue

    # -- addresses and routes ----------------------------------------------------------------------
    def add_address(self, index: int, iface: str) -> None:
        addr = ipaddress.ip_interface(iface)
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        packed = addr.ip.packed
        flags = IFA_F_NODAD if addr.version == 6 else 0  # IPAM made it unique
        body = IFADDR.pack(family, addr.network.prefixlen, flags, 0, index)
        body += codec.attr(IFA_LOCAL, packed) + codec.attr(IFA_ADDRESS, packed)
        try:
            self.request(RTM_NEWADDR, codec.F_CREATE | codec.F_EXCL, body)
        except NetlinkError as exc:
            if exc.errno != errno.EEXIST:
                raise

    def addresses(self, index: int) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        """The addresses on a link (one dump of RTM_GETADDR)."""
        out: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
        self.send(RTM_GETADDR, codec.F_REQUEST | codec.F_ROOT | codec.F_MATCH,
                  IFADDR.pack(0, 0, 0, 0, index))
        for mtype, buf, start, end in codec.dump(self.sock):
            if mtype != RTM_NEWADDR:
                continue
            _fam, plen, _f, _scope, ifindex = IFADDR.unpack_from(buf, start)
            a = codec.attrs(buf, start + IFADDR.size, end)
            raw = a.get(IFA_ADDRESS) or a.get(IFA_LOCAL)
            if ifindex == index and raw is not None:
                out.append(ipaddress.ip_interface((ipaddress.ip_address(raw), plen)))
        return out

    def del_address(self, index: int, iface: str) -> None:
        addr = ipaddress.ip_interface(iface)
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        body = IFADDR.pack(family, addr.network.prefixlen, 0, 0, index)
        body += codec.attr(IFA_LOCAL, addr.ip.packed) + codec.attr(IFA_ADDRESS, addr.ip.packed)
        self.request(RTM_DELADDR, 0, body)

    def add_route(self, dst: str, gateway: str | None, oif: int) -> None:
        net = ipaddress.ip_network(dst, strict=False)
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        body = rtmsg.RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                                scope, RTN_UNICAST, 0)
        if net.prefixlen:
            body += codec.attr(rtmsg.RTA_DST, net.network_address.packed)
        body += codec.attr(rtmsg.RTA_OIF, struct.pack("=I", oif))
        if gateway:
            body += codec.attr(rtmsg.RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        self.request(rtmsg.RTM_NEWROUTE, codec.F_CREATE | codec.F_REPLACE, body)


def random_mac() -> str:
    """A random unicast, locally administered MAC, as the kernel gives a new veth."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return codec.lladdr(bytes(raw)) or ""


def _parse_link(buf: bytes, start: int, end: int) -> Link:
    _fam, _type, index, flags, _change = IFINFO.unpack_from(buf, start)
    a = codec.attrs(buf, start + IFINFO.size, end)
    kind = None
    if IFLA_LINKINFO in a:
        info = codec.attrs(a[IFLA_LINKINFO], 0, len(a[IFLA_LINKINFO]))
        if IFLA_INFO_KIND in info:
            kind = info[IFLA_INFO_KIND].rstrip(b"\0").decode()

    def u32(key: int) -> int:
        return struct.unpack("=I", a[key][:4])[0] if key in a else 0

    return Link(index=index, name=a.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(), flags=flags,
                mtu=u32(IFLA_MTU), mac=codec.lladdr(a.get(IFLA_ADDRESS)) or "", master=u32(
                    IFLA_MASTER), peer_index=u32(IFLA_LINK), kind=kind)
