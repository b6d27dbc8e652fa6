"""SCTP's first two packets, INIT and INIT ACK, for probes over raw sockets where the kernel has
no SCTP of its own (these machines lack it, as many nodes do): what policy and connection
tracking see is a real association's start, the INIT a new connection and the INIT ACK its
reply (its verification tag the INIT's initiate tag, as conntrack checks)."""

from __future__ import annotations

import struct

INIT, INIT_ACK = 1, 2
STATE_COOKIE = 7
HEADER = struct.Struct("!HHI4s")  # ports, verification tag, checksum (CRC32c, below)
INIT_CHUNK = struct.Struct("!BBHIIHHI")  # type, flags, length, initiate tag, a_rwnd,
# outbound and inbound streams, initial TSN


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def packet(sport: int, dport: int, vtag: int, chunk: int, tag: int, cookie: bytes = b"") -> bytes:
    """An SCTP packet of one INIT or INIT ACK chunk; an INIT ACK's state cookie `cookie`."""
    params = b""
    if chunk == INIT_ACK:
        padded = cookie + b"\0" * (-len(cookie) % 4)
        params = struct.pack("!HH", STATE_COOKIE, 4 + len(cookie)) + padded
    body = INIT_CHUNK.pack(chunk, 0, INIT_CHUNK.size + len(params), tag, 65536, 1, 1, tag) \
        + params
    raw = HEADER.pack(sport, dport, vtag, b"\0" * 4) + body
    # the CRC goes in as the little-endian word it is computed as (RFC 9260, appendix A)
    return raw[:8] + struct.pack("<I", crc32c(raw)) + raw[12:]


def parse(data: bytes) -> tuple[int, int, int, int, int, bytes] | None:
    """(source port, destination port, verification tag, chunk type, initiate tag, state
    cookie) of an INIT or INIT ACK whose checksum holds; None for anything else."""
    if len(data) < HEADER.size + INIT_CHUNK.size:
        return None
    sport, dport, vtag, csum = HEADER.unpack_from(data)
    if csum != struct.pack("<I", crc32c(data[:8] + b"\0" * 4 + data[12:])):
        return None
    chunk, _, _, tag, *_ = INIT_CHUNK.unpack_from(data, HEADER.size)
    if chunk not in (INIT, INIT_ACK):
        return None
    cookie = b""
    at = HEADER.size + INIT_CHUNK.size
    if chunk == INIT_ACK and len(data) >= at + 4:
        kind, size = struct.unpack_from("!HH", data, at)
        if kind == STATE_COOKIE:
            cookie = data[at + 4:at + size]
    return sport, dport, vtag, chunk, tag, cookie
