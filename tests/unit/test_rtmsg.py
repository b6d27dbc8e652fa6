"""The packed messages say what pyroute2 would: decoded with pyroute2's own parsers; the receive
loop reads datagrams at their size."""

from __future__ import annotations

import socket

import pytest
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg as pr_rtmsg

from podnet.netlink import codec, constants, rtmsg


def _decode(cls: type, data: bytes) -> object:
    msg = cls(data)
    msg.decode()
    return msg


def test_route_decodes_as_pyroute2_reads_it() -> None:
    data = rtmsg.route("replace", 7, "10.244.3.0/24", oif=5, proto=88, gateway="10.244.3.0",
                       flags=constants.RTNH_F_ONLINK)
    msg = _decode(pr_rtmsg, data)
    assert msg["header"]["type"] == rtmsg.RTM_NEWROUTE  # type: ignore[index]
    assert msg["header"]["sequence_number"] == 7  # type: ignore[index]
    assert msg["header"]["flags"] == 0x505  # type: ignore[index]
    assert (msg["family"], msg["dst_len"], msg["proto"], msg["flags"]) == (  # type: ignore[index]
        socket.AF_INET, 24, 88, 4)
    assert msg.get_attr("RTA_DST") == "10.244.3.0"  # type: ignore[attr-defined]
    assert msg.get_attr("RTA_GATEWAY") == "10.244.3.0"  # type: ignore[attr-defined]
    assert msg.get_attr("RTA_OIF") == 5  # type: ignore[attr-defined]
    assert msg.get_attr("RTA_TABLE") == 254  # type: ignore[attr-defined]
    assert msg["header"]["length"] == len(data)  # type: ignore[index]


def test_neigh_and_fdb_decode_as_pyroute2_reads_them() -> None:
    n = _decode(ndmsg, rtmsg.neigh("del", 1, "10.244.3.0", "0a:01:02:03:04:05", 9))
    assert n["header"]["type"] == rtmsg.RTM_DELNEIGH  # type: ignore[index]
    assert (n["family"], n["ifindex"], n["state"]) == (socket.AF_INET, 9, 0x80)  # type: ignore[index]
    assert n.get_attr("NDA_DST") == "10.244.3.0"  # type: ignore[attr-defined]
    assert n.get_attr("NDA_LLADDR") == "0a:01:02:03:04:05"  # type: ignore[attr-defined]
    f = _decode(ndmsg, rtmsg.fdb("append", 2, "0a:01:02:03:04:05", "192.168.1.7", 9))
    assert (f["family"], f["flags"]) == (socket.AF_BRIDGE, constants.NTF_SELF)  # type: ignore[index]
    assert f["header"]["flags"] & codec.F_APPEND  # type: ignore[index]
    assert f.get_attr("NDA_DST") == "192.168.1.7"  # type: ignore[attr-defined]


def test_ipv6_route_and_neigh_decode_as_pyroute2_reads_them() -> None:
    r = _decode(pr_rtmsg, rtmsg.route("replace", 3, "fd00:10:244:3::/64", oif=5, proto=88,
                                      gateway="fd00:10:244:3::", flags=constants.RTNH_F_ONLINK))
    assert (r["family"], r["dst_len"]) == (socket.AF_INET6, 64)  # type: ignore[index]
    assert r.get_attr("RTA_DST") == "fd00:10:244:3::"  # type: ignore[attr-defined]
    assert r.get_attr("RTA_GATEWAY") == "fd00:10:244:3::"  # type: ignore[attr-defined]
    # An IPv6 route via a node's IPv4 address: RTA_VIA, as `ip route add ... via inet` sends.
    via = _decode(pr_rtmsg, rtmsg.route("replace", 4, "fd00:10:244:3::/64", oif=2, proto=88,
                                        gateway="192.168.1.7"))
    assert via.get_attr("RTA_GATEWAY") is None  # type: ignore[attr-defined]
    assert via.get_attr("RTA_VIA")["addr"] == "192.168.1.7"  # type: ignore[attr-defined]
    n = _decode(ndmsg, rtmsg.neigh("replace", 5, "fd00:10:244:3::", "0a:01:02:03:04:05", 9))
    assert n["family"] == socket.AF_INET6  # type: ignore[index]
    assert n.get_attr("NDA_DST") == "fd00:10:244:3::"  # type: ignore[attr-defined]


def test_receive_reads_each_datagram_at_its_size_and_refuses_one_too_large() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        ack = codec.HDR.pack(36, codec.NLMSG_ERROR, 0, 5, 0) + bytes(20)
        done = codec.HDR.pack(20, codec.NLMSG_DONE, 0, 6, 0) + bytes(4)
        a.send(ack)
        a.send(done)
        messages = codec.receive(b)
        assert next(messages) == (codec.NLMSG_ERROR, 5, ack, 16, 36)
        assert next(messages) == (codec.NLMSG_DONE, 6, done, 16, 20)
        a.send(bytes(codec.RECEIVE_SIZE + 4))
        with pytest.raises(codec.NetlinkError, match="more than"):
            next(messages)
