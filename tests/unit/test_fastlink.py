"""The plugin's raw requests say what pyroute2 would: decoded with pyroute2's own parsers."""

from __future__ import annotations

import socket
import struct
from typing import Any

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from podnet.netlink import codec, constants, fastlink


class Capture:
    """A stand-in socket that keeps what is sent and acks it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def bind(self, _addr: Any) -> None:
        pass

    def setsockopt(self, *_args: Any) -> None:
        pass

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv_into(self, buffer: bytearray, _size: int, _flags: int) -> int:
        """The ack; before it, for a request to echo, the request itself (as the kernel
        echoes a new link: the same message type and sequence)."""
        last = self.sent[-1]
        flags, seq = struct.unpack_from("=HI", last, 6)
        reply = struct.pack("=IHHIIi", 36, 2, 0, seq, 0, 0) + last[:16]
        if flags & codec.F_ECHO:
            reply = last + b"\0" * (-len(last) % 4) + reply
        buffer[:len(reply)] = reply
        return len(reply)


def _decode(cls: type, data: bytes) -> Any:
    msg = cls(data)
    msg.decode()
    return msg


def test_create_veth_decodes_as_pyroute2_reads_it() -> None:
    cap = Capture()
    rt = fastlink.Rtnl(cap)  # type: ignore[arg-type]
    link = rt.create_veth("veth1234abcd", "eth0", 7, 1450, master=3,
                          peer_mac="02:00:5e:10:00:01")
    assert len(cap.sent) == 1  # the link echoed: not asked for again
    assert link is not None and (link.name, link.mtu, link.master) == ("veth1234abcd", 1450, 3)
    msg = _decode(ifinfmsg, cap.sent[0])
    assert msg["header"]["type"] == fastlink.RTM_NEWLINK
    assert msg["flags"] & fastlink.IFF_UP and msg["change"] & fastlink.IFF_UP
    assert msg.get_attr("IFLA_IFNAME") == "veth1234abcd"
    assert msg.get_attr("IFLA_MTU") == 1450 and msg.get_attr("IFLA_MASTER") == 3
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer.get_attr("IFLA_IFNAME") == "eth0"
    assert peer.get_attr("IFLA_NET_NS_FD") == 7 and peer.get_attr("IFLA_MTU") == 1450
    assert peer.get_attr("IFLA_ADDRESS") == "02:00:5e:10:00:01"


def test_a_random_mac_is_unicast_and_locally_administered() -> None:
    for _ in range(64):
        first = int(fastlink.random_mac().split(":")[0], 16)
        assert first & 0x01 == 0 and first & 0x02


def test_address_decodes_as_pyroute2_reads_it() -> None:
    cap = Capture()
    rt = fastlink.Rtnl(cap)  # type: ignore[arg-type]
    rt.add_address(4, "fd00::2/64")
    msg = _decode(ifaddrmsg, cap.sent[0])
    assert (msg["family"], msg["prefixlen"], msg["index"]) == (socket.AF_INET6, 64, 4)
    assert msg["flags"] == constants.IFA_F_NODAD
    assert msg.get_attr("IFA_LOCAL") == "fd00::2"
