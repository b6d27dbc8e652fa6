"""Many rtnetlink requests in few system calls: messages packed by `rtmsg`, carried by one raw
netlink socket in chunks, the kernel's acks matched back by sequence number."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from podnet.netlink import codec, netns, rtmsg

CHUNK = 60_000
PACKERS: dict[str, Callable[..., bytes]] = {
    "route": rtmsg.route, "neigh": rtmsg.neigh, "fdb": rtmsg.fdb}
ADD_IGNORE = (errno.EEXIST,)
DEL_IGNORE = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)


@dataclass
class Op:
    kind: str  # "route", "neigh", "fdb"
    command: str  # "add", "replace", "append", "del"
    args: dict[str, Any]
    ignore: tuple[int, ...] = ()  # errnos that mean "already so" (EEXIST on add, ENOENT on del)


@dataclass
class Failure:
    op: Op
    errno: int

    def __str__(self) -> str:
        return f"{self.op.kind} {self.op.command} {self.op.args}: {os.strerror(self.errno)}"


@dataclass
class BatchResult:
    failures: list[Failure] = field(default_factory=list)
    sent: int = 0


def raw_socket(ns_path: str | None = None) -> socket.socket:
    """A NETLINK_ROUTE socket, in the namespace at ns_path (None: the thread's own)."""
    def make() -> socket.socket:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)

    if ns_path is None:
        sock = make()
    else:
        with netns.entered(ns_path):
            sock = make()
    sock.bind((0, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    # Acks without the original message echoed back: small acks for big batches.
    sock.setsockopt(codec.SOL_NETLINK, codec.NETLINK_CAP_ACK, 1)
    return sock


def apply(ops: list[Op], ns_path: str | None = None) -> BatchResult:
    """Send every op; failures (other than each op's ignored errnos) are returned, not raised."""
    result = BatchResult()
    if not ops:
        return result
    messages = [PACKERS[op.kind](op.command, seq, **op.args) for seq, op in enumerate(ops, 1)]
    by_seq = dict(enumerate(ops, 1))
    with raw_socket(ns_path) as sock:
        start = 0
        while start < len(messages):
            end, size = start, 0
            while end < len(messages) and (size < CHUNK or end == start):
                size += len(messages[end])
                end += 1
            sock.send(b"".join(messages[start:end]))
            _collect_acks(sock, end - start, by_seq, result)
            result.sent += end - start
            start = end
    return result


def _collect_acks(sock: socket.socket, count: int, by_seq: dict[int, Op],
                  result: BatchResult) -> None:
    if count == 0:
        return
    seen = 0
    for mtype, seq, buf, start, _end in codec.receive(sock):
        if mtype != codec.NLMSG_ERROR:
            continue
        code = codec.error_code(buf, start)
        op = by_seq.get(seq)
        if code and op is not None and code not in op.ignore:
            result.failures.append(Failure(op, code))
        seen += 1
        if seen == count:
            return
