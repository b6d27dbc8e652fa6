"""The fast path's VXLAN encapsulation and decapsulation, run by the kernel on frames this test
hands it (BPF_PROG_TEST_RUN, in a namespace of the test's own: nothing is sent anywhere), and
read back byte for byte: what a peer's VXLAN device would accept, and the pod's packet again."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterator

import pytest

from podnet.fastpath import bpf, podmap, program
from podnet.fastpath.podmap import PodEntry
from podnet.netlink import codec, netns

TC_ACT_REDIRECT = 7
CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
NODE1, NODE2 = ipaddress.IPv4Address("192.168.0.11"), ipaddress.IPv4Address("192.168.0.12")
VTEP1, VTEP2 = "0a:00:00:00:00:01", "0a:00:00:00:00:02"
POD1, POD2 = ipaddress.IPv4Address("10.244.1.2"), ipaddress.IPv4Address("10.244.2.3")
POD_MAC, HOST_MAC, BRIDGE_MAC = "02:00:00:00:01:02", "02:00:00:00:ff:01", "02:00:00:00:00:fe"
LO = 1  # the frames arrive on the namespace's loopback, whose MAC is all zeros
UNUSED = 1000  # ifindexes the program names but these frames never reach


def checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total  # 0xffff over a header whose checksum is right


def ipv4(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, ttl: int = 64,
         udp_ports: tuple[int, int] | None = None) -> bytes:
    if udp_ports is None:
        proto, payload = socket.IPPROTO_ICMP, struct.pack("!BBHHH", 8, 0, 0, 1, 1)  # echo
    else:
        proto, payload = socket.IPPROTO_UDP, struct.pack("!HHHH", *udp_ports, 8 + 24, 0)
    payload += b"podnet" * 4
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 7, 0, ttl,
                         proto, 0, src.packed, dst.packed)
    csum = 0xFFFF - checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + payload


def frame(dst_mac: str, src_mac: str, packet: bytes) -> bytes:
    return codec.mac(dst_mac) + codec.mac(src_mac) + b"\x08\x00" + packet


class Node:
    """A node's program and maps, as the agent would load them."""

    def __init__(self, local: ipaddress.IPv4Address, mac: str, uplinks: list[int]) -> None:
        self.pods = bpf.create_hash_map(podmap.NAME, podmap.KEY_SIZE, podmap.VALUE_SIZE, 16)
        self.tunnels = bpf.create_hash_map(podmap.TUNNEL_MAP, podmap.TUNNEL_KEY_SIZE,
                                           podmap.TUNNEL_VALUE.size, 16)
        encap = program.Encap(1, 8472, local, mac, 24)
        self.prog = bpf.load_program("podnet_test", program.build(
            self.pods, uplinks, UNUSED + 2, CLUSTER, None, (encap, self.tunnels)))

    def pod(self, ip: ipaddress.IPv4Address, veth: int) -> None:
        bpf.map_update(self.pods, ip.packed, PodEntry(veth, POD_MAC, HOST_MAC).pack())

    def peer(self, subnet: str, node: ipaddress.IPv4Address, mac: str) -> None:
        key = ipaddress.IPv4Network(subnet).network_address.packed
        bpf.map_update(self.tunnels, key, podmap.tunnel_value((node, mac)))

    def run(self, data: bytes) -> tuple[int, bytes]:
        """The program's verdict on the frame, and the frame as it left the program."""
        return bpf.test_run(self.prog, data)

    def close(self) -> None:
        for fd in (self.prog, self.pods, self.tunnels):
            os.close(fd)


@pytest.fixture
def nodes(make_ns: Callable[[str], str]) -> Iterator[tuple[Node, Node]]:
    """node1 sees the frames arrive on a pod's veth (lo), node2 on its underlay (lo)."""
    with netns.entered(make_ns("bpf")):
        node1 = Node(NODE1, VTEP1, [UNUSED, UNUSED + 1])
        node2 = Node(NODE2, VTEP2, [LO, UNUSED + 1])
        try:
            node1.pod(POD1, LO)
            node1.peer("10.244.2.0/24", NODE2, VTEP2)
            node2.pod(POD2, 42)
            node2.peer("10.244.1.0/24", NODE1, VTEP1)
            yield node1, node2
        finally:
            node1.close()
            node2.close()


def test_encapsulates_as_a_vxlan_device_would(nodes: tuple[Node, Node]) -> None:
    node1, _ = nodes
    inner = ipv4(POD1, POD2)
    verdict, out = node1.run(frame(BRIDGE_MAC, POD_MAC, inner))
    assert verdict == TC_ACT_REDIRECT  # out of the underlay, the kernel resolving the next hop
    assert len(out) == 14 + program.ENCAP_LEN + len(inner)
    outer = out[14:34]
    ver, _tos, total, _id, frag, ttl, proto, _c, src, dst = struct.unpack("!BBHHHBBH4s4s", outer)
    assert (ver, total, frag, ttl, proto) == (0x45, len(out) - 14, 0x4000, 64, socket.IPPROTO_UDP)
    assert (src, dst) == (NODE1.packed, NODE2.packed)
    assert checksum(outer) == 0xFFFF
    sport, dport, length, ucsum = struct.unpack("!HHHH", out[34:42])
    assert sport >= 49152 and dport == 8472 and length == len(out) - 34 and ucsum == 0
    assert out[42:50] == bytes([0x08, 0, 0, 0, 0, 0, 1, 0])  # flags: VNI valid; VNI 1
    assert out[50:64] == codec.mac(VTEP2) + codec.mac(VTEP1) + b"\x08\x00"
    sent = out[64:]
    assert sent[8] == 63 and checksum(sent[:20]) == 0xFFFF  # routed once, as the node does
    assert sent[:8] == inner[:8] and sent[12:] == inner[12:]


def test_the_source_port_follows_the_flow(nodes: tuple[Node, Node]) -> None:
    """Flows spread over the underlay's paths (ECMP hashes the outer ports), each flow on
    one path (no reordering)."""
    node1, _ = nodes

    def sport(ports: tuple[int, int]) -> int:
        _, out = node1.run(frame(BRIDGE_MAC, POD_MAC, ipv4(POD1, POD2, udp_ports=ports)))
        return int(struct.unpack_from("!H", out, 34)[0])

    flows = [(40000 + i, 53) for i in range(16)]
    ports = [sport(f) for f in flows]
    assert ports == [sport(f) for f in flows]
    assert len(set(ports)) > 8 and all(p >= 49152 for p in ports)


def test_decapsulates_to_the_pod_what_its_peer_encapsulated(nodes: tuple[Node, Node]) -> None:
    node1, node2 = nodes
    inner = ipv4(POD1, POD2)
    _, wire = node1.run(frame(BRIDGE_MAC, POD_MAC, inner))
    arrived = bytes(6) + wire[6:]  # to this node's MAC: lo's
    verdict, out = node2.run(arrived)
    assert verdict == TC_ACT_REDIRECT  # into the pod's namespace
    assert out[:14] == codec.mac(POD_MAC) + codec.mac(HOST_MAC) + b"\x08\x00"
    assert out[14 + 8] == 62 and checksum(out[14:34]) == 0xFFFF  # routed by both nodes
    assert out[34:] == inner[20:]


@pytest.mark.parametrize("case", ["source of another node", "other VNI", "fragment",
                                  "not for a pod here", "TTL expires"])
def test_decapsulation_leaves_the_rest_to_the_normal_path(nodes: tuple[Node, Node],
                                                          case: str) -> None:
    node1, node2 = nodes
    src, dst, ttl = POD1, POD2, 64
    if case == "source of another node":  # node1 sending for a pod of node3's subnet
        src = ipaddress.IPv4Address("10.244.3.9")
        node1.pod(src, LO)
        node1.peer("10.244.3.0/24", ipaddress.IPv4Address("192.168.0.13"), VTEP1)
        node2.peer("10.244.3.0/24", ipaddress.IPv4Address("192.168.0.13"), VTEP1)
    if case == "not for a pod here":
        dst = ipaddress.IPv4Address("10.244.2.4")
    if case == "TTL expires":
        ttl = 2  # 1 after node1's hop
    _, wire = node1.run(frame(BRIDGE_MAC, POD_MAC, ipv4(src, dst, ttl)))
    arrived = bytearray(bytes(6) + wire[6:])
    if case == "other VNI":
        arrived[48] = 2
    if case == "fragment":
        arrived[20] = 0x20  # more fragments
    verdict, out = node2.run(bytes(arrived))
    assert verdict == program.TC_ACT_OK and out == bytes(arrived)


def test_peers_routed_directly_are_not_encapsulated(nodes: tuple[Node, Node]) -> None:
    node1, _ = nodes
    sent = frame(BRIDGE_MAC, POD_MAC, ipv4(POD1, ipaddress.IPv4Address("10.244.5.5")))
    verdict, out = node1.run(sent)  # no tunnel entry: routed (here: no route, normal path)
    assert verdict == program.TC_ACT_OK and out == sent


@pytest.mark.parametrize("variant", ["routed", "switched", "encap"])
def test_every_variant_of_the_program_loads(variant: str) -> None:
    """The verifier's verdict on each node's program (it refuses, e.g., unreachable code)."""
    pods = bpf.create_hash_map(podmap.NAME, podmap.KEY_SIZE, podmap.VALUE_SIZE, 16)
    tunnel_map = bpf.create_hash_map(podmap.TUNNEL_MAP, podmap.TUNNEL_KEY_SIZE,
                                     podmap.TUNNEL_VALUE.size, 16)
    encap = (program.Encap(1, 8472, NODE1, VTEP1, 24), tunnel_map) if variant == "encap" \
        else None
    code = program.build(pods, [UNUSED], UNUSED + 1, CLUSTER,
                         BRIDGE_MAC if variant == "switched" else None, encap)
    try:
        os.close(bpf.load_program("podnet_test", code))
    finally:
        os.close(pods)
        os.close(tunnel_map)
