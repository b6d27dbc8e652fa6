"""The fast path's IPv6 pods, run by the kernel on frames this test hands it
(BPF_PROG_TEST_RUN, in a namespace of the test's own: nothing is sent anywhere) and read back
byte for byte: routed out past the bridge with the hop limit taken down, delivered to a pod
from another node, and everything it must not touch (neighbour discovery, another pod's
source, addresses beyond the cluster) left to the normal path unchanged."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import IPRoute

from podnet.fastpath import bpf, podmap, program
from podnet.fastpath.podmap import PodEntry
from podnet.netlink import codec, links, netns

TC_ACT_REDIRECT = 7
CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
CLUSTER6 = ipaddress.IPv6Network("fd00:10:244::/56")
POD1, POD2 = ipaddress.IPv6Address("fd00:10:244:1::2"), ipaddress.IPv6Address("fd00:10:244:2::3")
POD_MAC, HOST_MAC, BRIDGE_MAC = "02:00:00:00:01:02", "02:00:00:00:ff:01", "02:00:00:00:00:fe"
LO = 1  # frames arrive on the namespace's loopback
NODE_MAC = "00:00:00:00:00:00"  # lo's: a frame to it is the node's
UNUSED = 1000


def ipv6(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, hops: int = 64,
         icmp_type: int = 128) -> bytes:
    """An ICMPv6 message (an echo request by default); its checksum is not the program's
    concern and stays zero."""
    payload = struct.pack("!BBHHH", icmp_type, 0, 0, 1, 1) + b"podnet" * 4
    return struct.pack("!IHBB", 6 << 28 | 0x12345, len(payload), socket.IPPROTO_ICMPV6,
                       hops) + src.packed + dst.packed + payload


def frame(dst_mac: str, src_mac: str, packet: bytes) -> bytes:
    return codec.mac(dst_mac) + codec.mac(src_mac) + b"\x86\xdd" + packet


class Node:
    """A node's program and maps, as the agent loads them for a dual-stack cluster."""

    def __init__(self, uplinks: list[int], bridge: int, switched_by: str | None = None,
                 cluster: ipaddress.IPv4Network | None = CLUSTER) -> None:
        self.pods = bpf.create_hash_map(podmap.NAME, podmap.KEY_SIZE, podmap.VALUE_SIZE, 16)
        self.pods6 = bpf.create_hash_map(podmap.NAME6, podmap.KEY_SIZES[6], podmap.VALUE_SIZE,
                                         16)
        self.prog = bpf.load_program("podnet_test", program.build(
            self.pods, uplinks, bridge, cluster, switched_by, None,
            program.Pods6(self.pods6, CLUSTER6)))

    def pod(self, ip: ipaddress.IPv6Address, veth: int, policed: bool = False) -> None:
        bpf.map_update(self.pods6, ip.packed, PodEntry(veth, POD_MAC, HOST_MAC, policed).pack())

    def run(self, data: bytes) -> tuple[int, bytes]:
        return bpf.test_run(self.prog, data)

    def close(self) -> None:
        for fd in (self.prog, self.pods, self.pods6):
            os.close(fd)


def _route_via_veth(address: str, dst: str, gateway: str) -> None:
    """In the namespace entered: forwarding on, as on a node, and `dst` routed via `gateway`
    on a veth holding `address` (the route a FIB lookup finds; nothing is sent on it)."""
    ipv6 = ":" in address
    netns.write_sysctl("net/ipv6/conf/all/forwarding" if ipv6 else "net/ipv4/ip_forward", "1")
    ipr = IPRoute()
    try:
        ipr.link("add", ifname="up0", kind="veth", peer={"ifname": "up1"})
        for name in ("lo", "up0", "up1"):
            ipr.link("set", index=links.index_of(ipr, name), state="up")
        up0 = links.index_of(ipr, "up0")
        assert up0 is not None
        links.add_address(ipr, up0, address)
        links.add_route(ipr, dst, gateway, up0)
    finally:
        ipr.close()


@pytest.fixture(params=["dual-stack", "IPv6-only"])
def routed(make_ns: Callable[[str], str],
           request: pytest.FixtureRequest) -> Iterator[tuple[Node, Node]]:
    """node1 sees frames from its pod (on lo), routed via a veth towards node2's pods; node2
    sees them arrive on its uplink (lo) for its pod. In a dual-stack cluster's program and in
    an IPv6-only one's (which has no IPv4 part)."""
    cluster = CLUSTER if request.param == "dual-stack" else None
    with netns.entered(make_ns("bpf6")):
        _route_via_veth("fd00:192:168:1::11/64", "fd00:10:244:2::/64", "fd00:192:168:1::12")
        # node1's lookup as if from the bridge: lo here
        both = Node([UNUSED], LO, cluster=cluster), Node([LO], UNUSED, cluster=cluster)
        try:
            both[0].pod(POD1, LO)
            both[1].pod(POD2, 42)
            yield both
        finally:
            for node in both:
                node.close()


def test_a_pods_packet_is_routed_past_the_bridge(routed: tuple[Node, Node]) -> None:
    node1, _ = routed
    sent = frame(BRIDGE_MAC, POD_MAC, ipv6(POD1, POD2))
    verdict, out = node1.run(sent)
    assert verdict == TC_ACT_REDIRECT  # out of up0, the kernel resolving fd00:192:168:1::12
    assert out[:21] == sent[:21] and out[21] == 63 and out[22:] == sent[22:]


def test_a_pod_from_another_node_gets_it_directly(routed: tuple[Node, Node]) -> None:
    _, node2 = routed
    packet = ipv6(POD1, POD2, hops=63)
    verdict, out = node2.run(frame(NODE_MAC, "02:00:00:00:00:98", packet))
    assert verdict == TC_ACT_REDIRECT  # into the pod's namespace
    assert out[:14] == codec.mac(POD_MAC) + codec.mac(HOST_MAC) + b"\x86\xdd"
    assert out[14:21] == packet[:7] and out[21] == 62 and out[22:] == packet[8:]


@pytest.mark.parametrize("case", ["neighbour solicitation", "router solicitation",
                                  "another pod's source", "another MAC", "beyond the cluster",
                                  "a pod of this node", "hop limit 1"])
def test_what_the_normal_path_keeps(routed: tuple[Node, Node], case: str) -> None:
    node1, _ = routed
    src, dst, hops, kind, mac = POD1, POD2, 64, 128, POD_MAC
    if case == "neighbour solicitation":
        kind = 135
    if case == "router solicitation":
        kind = 133
    if case == "another pod's source":  # its entry names another veth
        src = ipaddress.IPv6Address("fd00:10:244:1::9")
        node1.pod(src, 77)
    if case == "another MAC":
        mac = "02:00:00:00:01:99"
    if case == "beyond the cluster":
        dst = ipaddress.IPv6Address("fd00:10:245::1")
    if case == "a pod of this node":
        dst = ipaddress.IPv6Address("fd00:10:244:1::3")
        node1.pod(dst, 78)
    if case == "hop limit 1":
        hops = 1
    sent = frame(BRIDGE_MAC, mac, ipv6(src, dst, hops, kind))
    assert node1.run(sent) == (program.TC_ACT_OK, sent)


def test_pods_held_by_policy_take_the_normal_path(routed: tuple[Node, Node]) -> None:
    """NetworkPolicy holds a pod on the normal path (its entry's POLICED bit): neither its
    own packets nor those for it are carried past the node's rules."""
    node1, node2 = routed
    node1.pod(POD1, LO, policed=True)
    sent = frame(BRIDGE_MAC, POD_MAC, ipv6(POD1, POD2))
    assert node1.run(sent) == (program.TC_ACT_OK, sent)
    node2.pod(POD2, 42, policed=True)
    arriving = frame(NODE_MAC, "02:00:00:00:00:98", ipv6(POD1, POD2, hops=63))
    assert node2.run(arriving) == (program.TC_ACT_OK, arriving)
    node2.pod(POD2, 42)
    assert node2.run(arriving)[0] == TC_ACT_REDIRECT


def test_arrivals_for_no_pod_here_pass(routed: tuple[Node, Node]) -> None:
    _, node2 = routed
    for packet in (ipv6(POD1, ipaddress.IPv6Address("fd00:10:244:2::7")),
                   ipv6(POD1, POD2, hops=1)):
        sent = frame(NODE_MAC, "02:00:00:00:00:98", packet)
        assert node2.run(sent) == (program.TC_ACT_OK, sent)
    other_host = frame("02:00:00:00:00:99", "02:00:00:00:00:98", ipv6(POD1, POD2))
    assert node2.run(other_host) == (program.TC_ACT_OK, other_host)  # not ours to route


def test_switched_frames_go_as_they_are(make_ns: Callable[[str], str]) -> None:
    """l2: a pod's frame for another node's pod leaves by the uplink unchanged; one from the
    uplink for a pod of this node goes to it unchanged (no hop, no MAC rewrite)."""
    with netns.entered(make_ns("bpf6")):
        node = Node([UNUSED], UNUSED + 1, switched_by=BRIDGE_MAC)
        try:
            node.pod(POD1, LO)
            out_frame = frame("02:00:00:00:02:03", POD_MAC, ipv6(POD1, POD2))
            assert node.run(out_frame) == (TC_ACT_REDIRECT, out_frame)
            to_gateway = frame(BRIDGE_MAC, POD_MAC, ipv6(POD1, POD2))
            assert node.run(to_gateway) == (program.TC_ACT_OK, to_gateway)
        finally:
            node.close()
        uplink = Node([LO], UNUSED + 1, switched_by=BRIDGE_MAC)
        try:
            uplink.pod(POD2, 42)
            in_frame = frame(POD_MAC, "02:00:00:00:02:03", ipv6(POD1, POD2))
            assert uplink.run(in_frame) == (TC_ACT_REDIRECT, in_frame)
        finally:
            uplink.close()


def test_an_ipv6_only_program_leaves_ipv4_alone(make_ns: Callable[[str], str]) -> None:
    """A pod's IPv4 packet that a dual-stack program routes, an IPv6-only one passes as it
    is."""
    with netns.entered(make_ns("bpf6")):
        _route_via_veth("192.168.1.11/24", "10.244.2.0/24", "192.168.1.12")
        v4 = (codec.mac(BRIDGE_MAC) + codec.mac(POD_MAC) + b"\x08\x00"
              + bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 244, 1, 2, 10, 244, 2, 3])
              + bytes(8))
        for cluster, verdict in ((CLUSTER, TC_ACT_REDIRECT), (None, program.TC_ACT_OK)):
            node = Node([UNUSED], LO, cluster=cluster)
            try:
                bpf.map_update(node.pods, bytes([10, 244, 1, 2]),
                               PodEntry(LO, POD_MAC, HOST_MAC).pack())
                assert node.run(v4)[0] == verdict, cluster
            finally:
                node.close()


@pytest.mark.parametrize("variant", ["routed", "switched", "encap", "ipv6-only"])
def test_every_variant_with_ipv6_loads(variant: str) -> None:
    """The verifier's verdict on each node's dual-stack program."""
    pods = bpf.create_hash_map(podmap.NAME, podmap.KEY_SIZE, podmap.VALUE_SIZE, 16)
    pods6 = bpf.create_hash_map(podmap.NAME6, podmap.KEY_SIZES[6], podmap.VALUE_SIZE, 16)
    tunnel_map = bpf.create_hash_map(podmap.TUNNEL_MAPS[4], 4, podmap.TUNNEL_VALUE.size, 16)
    encap = (program.Overlay(program.Encap(1, 8472, ipaddress.IPv4Address("192.168.0.11"),
                                           "0a:00:00:00:00:01", ((4, 24),)), {4: tunnel_map})
             if variant == "encap" else None)
    code = program.build(pods, [UNUSED], UNUSED + 1, None if variant == "ipv6-only" else CLUSTER,
                         BRIDGE_MAC if variant == "switched" else None, encap,
                         program.Pods6(pods6, CLUSTER6))
    try:
        os.close(bpf.load_program("podnet_test", code))
    finally:
        for fd in (pods, pods6, tunnel_map):
            os.close(fd)
