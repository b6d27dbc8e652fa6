"""SCTP's INIT and INIT ACK as verify's probes write and read them."""

from __future__ import annotations

import socket

from podnet.verify import sctp
from podnet.verify.probes import raw_payload


def test_crc32c_is_castagnolis() -> None:
    assert sctp.crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    assert sctp.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720's 32 zero bytes


def test_an_init_and_its_ack_read_back() -> None:
    init = sctp.packet(40000, 9000, 0, sctp.INIT, 0x1234)
    assert sctp.parse(init) == (40000, 9000, 0, sctp.INIT, 0x1234, b"")
    ack = sctp.packet(9000, 40000, 0x1234, sctp.INIT_ACK, 0x99, b"10.244.1.2")
    assert len(ack) % 4 == 0  # chunks and parameters end on 4 bytes
    assert sctp.parse(ack) == (9000, 40000, 0x1234, sctp.INIT_ACK, 0x99, b"10.244.1.2")


def test_a_damaged_or_other_packet_is_not_read() -> None:
    init = bytearray(sctp.packet(40000, 9000, 0, sctp.INIT, 0x1234))
    init[20] ^= 1
    assert sctp.parse(bytes(init)) is None  # its checksum no longer holds
    assert sctp.parse(b"\0" * 8) is None
    assert sctp.parse(sctp.packet(40000, 9000, 0x1234, 0, 0x1234)) is None  # a DATA chunk


def test_the_ip_header_comes_off_ipv4_only() -> None:
    init = sctp.packet(1, 2, 0, sctp.INIT, 3)
    assert raw_payload(socket.AF_INET, bytes([0x45]) + bytes(19) + init) == init
    assert raw_payload(socket.AF_INET6, init) == init
