"""Probes that run inside any namespace from one process: each socket is made with the calling
thread briefly inside the sender's namespace (setns), so hundreds of pairs run in parallel
without a process per probe."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time

from podnet.netlink import netns

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


class EchoServer:
    """Answers each TCP connection with the source address it saw, then closes it."""

    def __init__(self, ns_path: str, port: int = ECHO_PORT) -> None:
        # One socket for both families: IPv4 clients arrive as ::ffff:a.b.c.d.
        self.sock = socket_in(ns_path, socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind(("::", port))
        self.sock.listen(256)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
                addr = peer[0].removeprefix("::ffff:")
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(addr.encode() + b"\n")

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


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
                # IPv4 raw sockets see the IP header; IPv6 ones only the ICMPv6 message.
                start = (data[0] & 0x0F) * 4 if family == socket.AF_INET else 0
                rtype, _code, _sum, rid, rseq = struct.unpack("!BBHHH", data[start:start + 8])
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
