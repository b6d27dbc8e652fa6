"""Probes that run inside any namespace from one process: each socket is made with the calling
thread briefly inside the sender's namespace (setns), so hundreds of pairs run in parallel
without a process per probe."""

from __future__ import annotations

import abc
import contextlib
import errno
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from podnet.netlink import netns
from podnet.verify import sctp

IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IPV6_DONTFRAG = 62
ECHO_PORT = 7946
ICMP_ECHO = {socket.AF_INET: (8, 0), socket.AF_INET6: (128, 129)}  # request, reply


def family_of(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def socket_in(ns_path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    with netns.entered(ns_path):
        return socket.socket(family, kind, proto)


class Echo(abc.ABC):
    """A server answering probes in a namespace from a thread of its own, until closed."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.socks = socks
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(self.socks, [], [], 0.2)
            except (OSError, ValueError):  # closed
                return
            for sock in ready:
                with contextlib.suppress(OSError):  # one peer's trouble, not the server's
                    self.answer(sock)

    @abc.abstractmethod
    def answer(self, sock: socket.socket) -> None:
        """Answer what is waiting on `sock`."""

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        for sock in self.socks:
            sock.close()


def _dual_stack(ns_path: str, kind: int, port: int) -> socket.socket:
    """One socket for both families: IPv4 peers arrive as ::ffff:a.b.c.d."""
    sock = socket_in(ns_path, socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    return sock


class EchoServer(Echo):
    """Answers each TCP connection with the source address it saw, then closes it."""

    def __init__(self, ns_path: str, port: int = ECHO_PORT) -> None:
        sock = _dual_stack(ns_path, socket.SOCK_STREAM, port)
        sock.listen(256)
        super().__init__([sock])

    def answer(self, sock: socket.socket) -> None:
        conn, peer = sock.accept()
        with conn:
            conn.sendall(peer[0].removeprefix("::ffff:").encode() + b"\n")


class UdpEchoServer(Echo):
    """Answers each datagram with the source address it saw."""

    def __init__(self, ns_path: str, port: int) -> None:
        super().__init__([_dual_stack(ns_path, socket.SOCK_DGRAM, port)])

    def answer(self, sock: socket.socket) -> None:
        _, peer = sock.recvfrom(64)
        sock.sendto(peer[0].removeprefix("::ffff:").encode() + b"\n", peer)


class SctpEchoServer(Echo):
    """Answers each SCTP INIT to `port` (either family) with an INIT ACK whose state cookie is
    the source address it saw (podnet.verify.sctp)."""

    def __init__(self, ns_path: str, port: int) -> None:
        self.port = port
        super().__init__([socket_in(ns_path, f, socket.SOCK_RAW, socket.IPPROTO_SCTP)
                          for f in (socket.AF_INET, socket.AF_INET6)])

    def answer(self, sock: socket.socket) -> None:
        data, peer = sock.recvfrom(2048)
        got = sctp.parse(raw_payload(sock.family, data))
        if got is None or got[1] != self.port or got[3] != sctp.INIT:
            return
        sport, dport, _, _, tag, _ = got
        sock.sendto(sctp.packet(dport, sport, tag, sctp.INIT_ACK, _tag(), peer[0].encode()),
                    (peer[0], 0))


SERVERS: dict[str, Callable[[str, int], Echo]] = {
    "TCP": EchoServer, "UDP": UdpEchoServer, "SCTP": SctpEchoServer}


def raw_payload(family: int, data: bytes) -> bytes:
    """What a raw socket received, past the IP header: IPv4 ones hand the header over, IPv6
    ones do not."""
    return data[(data[0] & 0x0F) * 4:] if family == socket.AF_INET else data


def _tag() -> int:
    """A random verification tag (never 0, which SCTP reserves for the INIT's header)."""
    return int.from_bytes(os.urandom(4), "big") | 1


def seen_source(protocol: str, src_ns: str, dst_ip: str, port: int,
                timeout: float = 2.0) -> str:
    """The source address the receiver's echo server saw, by TCP, UDP or SCTP; raises
    OSError if it did not answer."""
    probe = {"TCP": tcp_seen_source, "UDP": udp_seen_source, "SCTP": sctp_seen_source}
    return probe[protocol](src_ns, dst_ip, port, timeout)


def udp_seen_source(src_ns: str, dst_ip: str, port: int, timeout: float = 2.0) -> str:
    """A datagram's, asked up to three times (a datagram may be lost)."""
    sock = socket_in(src_ns, family_of(dst_ip), socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout / 3)
        sock.connect((dst_ip, port))
        for _ in range(3):
            sock.send(b"podnet")
            with contextlib.suppress(TimeoutError):
                return sock.recv(64).decode().strip()
    raise TimeoutError(errno.ETIMEDOUT, "no answer")


def sctp_seen_source(src_ns: str, dst_ip: str, port: int, timeout: float = 2.0) -> str:
    """An SCTP INIT's (its INIT ACK's cookie), the INIT sent up to three times."""
    family = family_of(dst_ip)
    sock = socket_in(src_ns, family, socket.SOCK_RAW, socket.IPPROTO_SCTP)
    tag = _tag()
    sport = 32768 + tag % 28000
    want = ipaddress.ip_address(dst_ip)
    with sock:
        for _ in range(3):
            sock.sendto(sctp.packet(sport, port, 0, sctp.INIT, tag), (dst_ip, 0))
            deadline = time.monotonic() + timeout / 3
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                data, peer = sock.recvfrom(2048)
                got = sctp.parse(raw_payload(family, data))
                if (got is not None and ipaddress.ip_address(peer[0]) == want
                        and got[:4] == (port, sport, tag, sctp.INIT_ACK)):
                    return got[5].decode()
    raise TimeoutError(errno.ETIMEDOUT, "no INIT ACK")


def tcp_seen_source(src_ns: str, dst_ip: str, port: int = ECHO_PORT,
                    timeout: float = 2.0) -> str:
    """The source address the receiver saw; raises OSError if unreachable."""
    sock = socket_in(src_ns, family_of(dst_ip), socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((dst_ip, port))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
        return data.decode().strip()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def ping(src_ns: str, dst_ip: str, size: int = 56, dont_fragment: bool = False,
         timeout: float = 2.0, tries: int = 2) -> bool:
    """One ICMP (or ICMPv6) echo of `size` payload bytes, DF set if asked (IPv6 routers never
    fragment: a too-big packet is dropped either way), answered within the timeout."""
    family = family_of(dst_ip)
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    request, reply = ICMP_ECHO[family]
    sock = socket_in(src_ns, family, socket.SOCK_RAW, proto)
    with sock:
        if dont_fragment and family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        elif dont_fragment:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
        # A new identifier per probe: each is a new flow to connection tracking, which a
        # policy judges afresh (a reused one would ride an earlier probe's entry).
        ident = int.from_bytes(os.urandom(2), "big")
        payload = (b"podnet-verify" * (size // 13 + 1))[:size]
        for seq in range(1, tries + 1):
            header = struct.pack("!BBHHH", request, 0, 0, ident, seq)
            # The kernel sums ICMPv6 itself (its checksum covers a pseudo-header).
            check = _checksum(header + payload) if family == socket.AF_INET else 0
            packet = struct.pack("!BBHHH", request, 0, check, ident, seq)
            try:
                sock.sendto(packet + payload, (dst_ip, 0))
            except OSError:
                return False  # e.g. EMSGSIZE: the path MTU is below the size asked
            deadline = time.monotonic() + timeout / tries
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, src = sock.recvfrom(65535)
                except TimeoutError:
                    break
                rtype, _code, _sum, rid, rseq = struct.unpack_from(
                    "!BBHHH", raw_payload(family, data))
                if rtype == reply and rid == ident and rseq == seq and src[0] == dst_ip:
                    return True
        return False


def source_address(ns_path: str | None, dst: str) -> str | None:
    """The source address the namespace's kernel picks to reach `dst` (its route's preferred
    source; None: the caller's namespace): a node reaches another node's pods from its tunnel
    address over vxlan."""
    from pyroute2.netlink.exceptions import NetlinkError

    from podnet.netlink import netns

    ipr = netns.iproute_in(ns_path)
    try:
        routes = ipr.route("get", dst=dst)
        src = routes[0].get_attr("RTA_PREFSRC") if routes else None
        return str(src) if src else None
    except (OSError, NetlinkError):  # no route: the probe itself finds it unreachable
        return None
    finally:
        ipr.close()
