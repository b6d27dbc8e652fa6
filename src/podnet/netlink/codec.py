"""podnet's one netlink codec: the header, attributes (plain and nested), addresses of either
family and link-layer addresses, and the one receive loop every request, batch and dump reads
its answers through. rtmsg (routes, neighbours, FDB), fastlink (links, addresses, pod routes)
and tc (the fast path's filters) pack their messages with it.

pyroute2 is podnet's netlink library where speed does not matter; these fixed layouts are what
a pod's ADD and a 5000-peer sync send, packed with `struct` in microseconds.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator

HDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
NLMSG_ERROR, NLMSG_DONE = 2, 3
F_REQUEST, F_ACK, F_ECHO, F_ROOT, F_MATCH = 0x1, 0x4, 0x8, 0x100, 0x200
F_REPLACE, F_EXCL, F_CREATE, F_APPEND = 0x100, 0x200, 0x400, 0x800
NLA_F_NESTED = 0x8000
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP, NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK = 1, 10, 12  # socket options
# A dump's datagram is at most 32 kB (the kernel's cap); an error's copy of the request is
# its header alone where the socket asks for NETLINK_CAP_ACK, as batches do.
RECEIVE_SIZE = 64 << 10
_receiving = threading.local()
FLAGS = {  # the flags of each command, as `ip` sends them
    "add": F_REQUEST | F_ACK | F_CREATE | F_EXCL,
    "replace": F_REQUEST | F_ACK | F_CREATE | F_REPLACE,
    "append": F_REQUEST | F_ACK | F_CREATE | F_APPEND,
    "del": F_REQUEST | F_ACK,
}


class NetlinkError(OSError):
    """A request the kernel refused (errno in .errno)."""


# -- packing --------------------------------------------------------------------------------
def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return HDR.pack(HDR.size + len(body), mtype, flags, seq, 0) + body


def attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def nest(kind: int, data: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, data)


def family_of(address: str) -> int:
    """AF_INET or AF_INET6, by the address's own notation."""
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def ip(text: str) -> bytes:
    return socket.inet_pton(family_of(text), text)


def ntop(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def mac(text: str) -> bytes:
    """A link-layer address: a MAC, or an IPv4 address (a GRE device's peers)."""
    if "." in text:
        return socket.inet_aton(text)
    return bytes(int(part, 16) for part in text.split(":"))


def lladdr(raw: bytes | None) -> str | None:
    """A link-layer address as text: a MAC, or a GRE peer's IPv4 address; None if neither."""
    if raw and len(raw) == 6:
        return ":".join(f"{b:02x}" for b in raw)
    return socket.inet_ntoa(raw) if raw and len(raw) == 4 else None


# -- parsing --------------------------------------------------------------------------------
def attrs(buf: bytes, pos: int, end: int) -> dict[int, bytes]:
    """The attributes between pos and end, by type (the nested flag cleared)."""
    out = {}
    while pos + 4 <= end:
        length, kind = struct.unpack_from("=HH", buf, pos)
        if length < 4:
            break
        out[kind & 0x3FFF] = buf[pos + 4:pos + length]
        pos += length + (-length % 4)
    return out


def receive(sock: socket.socket) -> Iterator[tuple[int, int, bytes, int, int]]:
    """Every message that arrives, as (type, sequence, buffer, body start, end), without end:
    the caller stops when it has what it waits for.

    Each datagram is read into its thread's one buffer and copied out at its size: a buffer
    allocated per datagram (thousands in a sync, each an ack) costs an allocation of the whole
    size every time, and its shrinking leaves holes in the heap."""
    into = getattr(_receiving, "buffer", None)
    if into is None:
        into = _receiving.buffer = bytearray(RECEIVE_SIZE)
    view = memoryview(into)
    while True:
        size = sock.recv_into(into, RECEIVE_SIZE, socket.MSG_TRUNC)
        if size > RECEIVE_SIZE:  # MSG_TRUNC: the datagram's size, though it did not fit
            raise NetlinkError(errno.EMSGSIZE, f"a netlink datagram of {size} bytes, more "
                               f"than the {RECEIVE_SIZE} read")
        buf = bytes(view[:size])
        pos = 0
        while pos + HDR.size <= len(buf):
            length, mtype, _flags, seq, _port = HDR.unpack_from(buf, pos)
            yield mtype, seq, buf, pos + HDR.size, pos + length
            pos += max(length, HDR.size) + (-length % 4)


def error_code(buf: bytes, start: int) -> int:
    """An NLMSG_ERROR's errno (0: an acknowledgement)."""
    return int(-struct.unpack_from("=i", buf, start)[0])


def dump(sock: socket.socket) -> Iterator[tuple[int, bytes, int, int]]:
    """The messages of a dump, up to its end: (type, buffer, body start, end)."""
    for mtype, _seq, buf, start, end in receive(sock):
        if mtype == NLMSG_DONE:
            return
        if mtype == NLMSG_ERROR:
            if code := error_code(buf, start):
                raise NetlinkError(code, os.strerror(code))
            return
        yield mtype, buf, start, end


def ack(sock: socket.socket, seq: int,
        echoed: int | None = None) -> tuple[bytes, int, int] | None:
    """Wait for request `seq`'s acknowledgement; NetlinkError if it was refused. With
    `echoed` (a request sent with F_ECHO), the kernel's echo of that type before the ack:
    (buffer, body start, end), or None where the kernel echoed none."""
    echo = None
    for mtype, rseq, buf, start, end in receive(sock):
        if rseq != seq:
            continue
        if mtype == NLMSG_ERROR:
            if code := error_code(buf, start):
                raise NetlinkError(code, os.strerror(code))
            return echo
        if mtype == echoed:
            echo = (buf, start, end)
    return None
