"""Packing and parsing of the three rtnetlink messages a backend sends by the thousand: routes,
neighbours and bridge FDB entries, of either address family (an address's family is read from
the address itself; a route's gateway of the other family goes as RTA_VIA), packed and parsed
with the one codec (codec.py).

pyroute2 is podnet's netlink library, but its encoder costs 0.1-0.5 ms a message in this
interpreter; a peer set of 5000 nodes is 15000 messages. These fixed layouts are packed with
`struct` instead (microseconds each), and a unit test decodes them with pyroute2's own parsers
to prove they say what pyroute2 would. Dumps of the same three tables are parsed the same way,
so that the reconcile loop stays cheap at scale.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from podnet.netlink import codec
from podnet.netlink.codec import F_MATCH, F_REQUEST, F_ROOT, FLAGS
from podnet.netlink.constants import (
    NTF_SELF,
    NUD_PERMANENT,
    RT_TABLE_MAIN,
    RTN_UNICAST,
    RTNH_F_ONLINK,
)

RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE, RTA_VIA = 1, 4, 5, 15, 18
NDA_DST, NDA_LLADDR = 1, 2
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BBHiHBB")


def route(command: str, seq: int, dst: str, oif: int, proto: int, gateway: str | None = None,
          flags: int = 0) -> bytes:
    addr, _, plen = dst.partition("/")
    family = codec.family_of(addr)
    full = 32 if family == socket.AF_INET else 128
    body = RTMSG.pack(family, int(plen or full), 0, 0, RT_TABLE_MAIN, proto, 0, RTN_UNICAST,
                      flags)
    body += codec.attr(RTA_TABLE, struct.pack("=I", RT_TABLE_MAIN))
    body += codec.attr(RTA_DST, codec.ip(addr))
    body += codec.attr(RTA_OIF, struct.pack("=I", oif))
    if gateway and codec.family_of(gateway) == family:
        body += codec.attr(RTA_GATEWAY, codec.ip(gateway))
    elif gateway:  # an IPv4 route via an IPv6 next hop (RFC 5549, Linux 5.2+)
        via = struct.pack("=H", codec.family_of(gateway)) + codec.ip(gateway)
        body += codec.attr(RTA_VIA, via)
    mtype = RTM_DELROUTE if command == "del" else RTM_NEWROUTE
    return codec.message(mtype, FLAGS[command], seq, body)


def neigh(command: str, seq: int, dst: str, lladdr: str, ifindex: int) -> bytes:
    body = NDMSG.pack(codec.family_of(dst), 0, 0, ifindex, NUD_PERMANENT, 0, 0)
    body += codec.attr(NDA_DST, codec.ip(dst)) + codec.attr(NDA_LLADDR, codec.mac(lladdr))
    mtype = RTM_DELNEIGH if command == "del" else RTM_NEWNEIGH
    return codec.message(mtype, FLAGS[command], seq, body)


def fdb(command: str, seq: int, lladdr: str, dst: str, ifindex: int) -> bytes:
    """A bridge FDB entry of a VXLAN device: a neighbour of family AF_BRIDGE."""
    body = NDMSG.pack(socket.AF_BRIDGE, 0, 0, ifindex, NUD_PERMANENT, NTF_SELF, 0)
    body += codec.attr(NDA_LLADDR, codec.mac(lladdr)) + codec.attr(NDA_DST, codec.ip(dst))
    mtype = RTM_DELNEIGH if command == "del" else RTM_NEWNEIGH
    return codec.message(mtype, FLAGS[command], seq, body)


# -- dumps ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouteInfo:
    dst: str
    gw: str | None
    oif: int
    proto: int
    table: int
    onlink: bool


@dataclass(frozen=True)
class NeighInfo:
    family: int
    ifindex: int
    state: int
    flags: int
    dst: str | None
    lladdr: str | None


def _dump(sock: socket.socket, mtype: int, body: bytes) -> Iterator[tuple[int, bytes, int, int]]:
    sock.send(codec.message(mtype, F_REQUEST | F_ROOT | F_MATCH, 1, body))
    yield from codec.dump(sock)


def dump_routes(sock: socket.socket, family: int = socket.AF_INET) -> Iterator[RouteInfo]:
    unspecified = "0.0.0.0" if family == socket.AF_INET else "::"
    for _t, buf, start, end in _dump(sock, RTM_GETROUTE,
                                     RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
        _fam, dst_len, _s, _tos, table, proto, _scope, rtype, flags = RTMSG.unpack_from(
            buf, start)
        if rtype != RTN_UNICAST:
            continue
        a = codec.attrs(buf, start + RTMSG.size, end)
        if RTA_TABLE in a:
            table = struct.unpack("=I", a[RTA_TABLE])[0]
        dst = codec.ntop(a[RTA_DST]) if RTA_DST in a else unspecified
        gw = (codec.ntop(a[RTA_GATEWAY]) if RTA_GATEWAY in a
              else codec.ntop(a[RTA_VIA][2:]) if RTA_VIA in a else None)
        oif = struct.unpack("=I", a[RTA_OIF])[0] if RTA_OIF in a else 0
        yield RouteInfo(f"{dst}/{dst_len}", gw, oif, proto, table,
                        bool(flags & RTNH_F_ONLINK))


def dump_neighbours(sock: socket.socket, family: int) -> Iterator[NeighInfo]:
    """Neighbours of `family`: AF_INET, AF_INET6, or AF_BRIDGE (FDB entries, whose NDA_DST is
    the remote's address of either family)."""
    for _t, buf, start, end in _dump(sock, RTM_GETNEIGH, NDMSG.pack(family, 0, 0, 0, 0, 0, 0)):
        fam, _p1, _p2, ifindex, state, flags, _type = NDMSG.unpack_from(buf, start)
        a = codec.attrs(buf, start + NDMSG.size, end)
        raw = a.get(NDA_DST, b"")
        dst = codec.ntop(raw) if len(raw) in (4, 16) else None
        yield NeighInfo(fam, ifindex, state, flags, dst, codec.lladdr(a.get(NDA_LLADDR)))
