"""The fast path's VXLAN encapsulation and decapsulation, for pods of either family over an
underlay of either, run by the kernel on frames this test hands it (BPF_PROG_TEST_RUN, in a
namespace of the test's own: nothing is sent anywhere), and read back byte for byte: what a
peer's VXLAN device would accept (over IPv6 with the UDP checksum it checks), and the pod's
packet again."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.fastpath import bpf, btf, podmap, program
from podnet.fastpath.podmap import PodEntry
from podnet.firewall import libnft
from podnet.netlink import codec, links, netns
from podnet.wire import VXLAN_SOURCE_PORTS

TC_ACT_REDIRECT = 7
IP = ipaddress.IPv4Address | ipaddress.IPv6Address
CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
CLUSTER6 = ipaddress.IPv6Network("fd00:10:244::/56")
NODES: dict[int, tuple[IP, IP, IP]] = {  # node1, node2, a node3 of each underlay family
    4: tuple(ipaddress.IPv4Address(f"192.168.0.1{i}") for i in (1, 2, 3)),  # type: ignore
    6: tuple(ipaddress.IPv6Address(f"fd00:192:168::1{i}") for i in (1, 2, 3)),  # type: ignore
}
PODS: dict[int, tuple[IP, IP]] = {
    4: (ipaddress.IPv4Address("10.244.1.2"), ipaddress.IPv4Address("10.244.2.3")),
    6: (ipaddress.IPv6Address("fd00:10:244:1::2"), ipaddress.IPv6Address("fd00:10:244:2::3")),
}
SUBNET_LENS = ((4, 24), (6, 64))
VTEP1, VTEP2 = "0a:00:00:00:00:01", "0a:00:00:00:00:02"
POD_MAC, HOST_MAC, BRIDGE_MAC = "02:00:00:00:01:02", "02:00:00:00:ff:01", "02:00:00:00:00:fe"
LO = 1  # the frames arrive on the namespace's loopback, whose MAC is all zeros
UNUSED = 1000  # ifindexes the program names but these frames never reach
ETHERTYPE = {4: b"\x08\x00", 6: b"\x86\xdd"}
FAMILIES = [(u, i) for u in (4, 6) for i in (4, 6)]
FAMILY_IDS = [f"inner{i}-over{u}" for u, i in FAMILIES]


def checksum(data: bytes) -> int:
    """The one's complement sum of the 16-bit words: 0xffff over data whose checksum is
    right."""
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo(src: IP, dst: IP, proto: int, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!xBH", proto, length)
    return src.packed + dst.packed + struct.pack("!I3xB", length, proto)


def packet(src: IP, dst: IP, ttl: int = 64, proto: str = "icmp", partial: bool = False,
           ports: tuple[int, int] = (40000, 53), udp_csum: bool = True,
           label: int = 0x12345) -> bytes:
    """An IP packet of src's family, its transport checksum complete, or `partial` as a pod's
    offloaded one leaves it (the field holds the pseudo-header's sum, the rest is the NIC's)."""
    body = b"podnet" * 4
    if proto == "icmp":
        number = socket.IPPROTO_ICMP if src.version == 4 else socket.IPPROTO_ICMPV6
        segment, at = struct.pack("!BBHHH", 8 if src.version == 4 else 128, 0, 0, 1, 1) + body, 2
    elif proto == "udp":
        number, at = socket.IPPROTO_UDP, 6
        segment = struct.pack("!HHHH", *ports, 8 + len(body), 0) + body
    elif proto == "tcp":
        number, at = socket.IPPROTO_TCP, 16
        segment = struct.pack("!HHIIBBHHH", *ports, 1, 0, 5 << 4, 0x18, 512, 0, 0) + body
    else:  # SCTP: a CRC32c, no one's complement sum
        number, at, segment = socket.IPPROTO_SCTP, 8, struct.pack("!HHII", *ports, 1, 0) + body
    head = b"" if number == socket.IPPROTO_ICMP else pseudo(src, dst, number, len(segment))
    if number != socket.IPPROTO_SCTP and (number != socket.IPPROTO_UDP or udp_csum):
        csum = 0xFFFF - checksum(head) if partial else 0xFFFF - checksum(head + segment)
        csum = 0xFFFF - csum if partial else csum  # the field holds the folded sum itself
        segment = segment[:at] + struct.pack("!H", csum or 0xFFFF) + segment[at + 2:]
    if src.version == 6:
        return struct.pack("!IHBB", 6 << 28 | label, len(segment), number, ttl) \
            + src.packed + dst.packed + segment
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 7, 0, ttl, number, 0,
                         src.packed, dst.packed)
    return header[:10] + struct.pack("!H", 0xFFFF - checksum(header)) + header[12:] + segment


def complete(pkt: bytes, proto: str) -> bytes:
    """What checksum offload makes of a `partial` packet: the transport checksum filled in."""
    version = pkt[0] >> 4
    hlen, at = (20, 16) if proto == "tcp" else (20, 6)
    if version == 6:
        hlen = 40
        src, dst = ipaddress.IPv6Address(pkt[8:24]), ipaddress.IPv6Address(pkt[24:40])
        number = pkt[6]
    else:
        src, dst = ipaddress.IPv4Address(pkt[12:16]), ipaddress.IPv4Address(pkt[16:20])
        number = pkt[9]
    segment = bytearray(pkt[hlen:])
    segment[at:at + 2] = b"\0\0"
    csum = 0xFFFF - checksum(pseudo(src, dst, number, len(segment)) + bytes(segment))
    segment[at:at + 2] = struct.pack("!H", csum or 0xFFFF)
    return pkt[:hlen] + bytes(segment)


def frame(dst_mac: str, src_mac: str, pkt: bytes) -> bytes:
    return codec.mac(dst_mac) + codec.mac(src_mac) + ETHERTYPE[pkt[0] >> 4] + pkt


def inner_of(out: bytes, underlay: int) -> bytes:
    return out[14 + (50 if underlay == 4 else 70):]


def arriving(wire: bytes, underlay: int) -> bytes:
    """An encapsulated frame as the peer receives it: to its MAC (lo's), with the outer
    EtherType, which the kernel's neighbour output writes (BPF_PROG_TEST_RUN returns the
    frame before that)."""
    return bytes(6) + wire[6:12] + ETHERTYPE[underlay] + wire[14:]


def outer_udp_ok(out: bytes) -> bool:
    """Whether an IPv6-encapsulated frame's UDP checksum is right, as the receiver checks."""
    src, dst = ipaddress.IPv6Address(out[22:38]), ipaddress.IPv6Address(out[38:54])
    datagram = out[54:]
    csum = struct.unpack_from("!H", datagram, 6)[0]
    return csum != 0 and checksum(pseudo(src, dst, socket.IPPROTO_UDP, len(datagram))
                                  + datagram) == 0xFFFF


class Node:
    """A node's program and maps, as the agent loads them for a dual-stack overlay."""

    def __init__(self, local: IP, mac: str, uplinks: list[int]) -> None:
        self.pods = {4: bpf.create_hash_map(podmap.NAME, 4, podmap.VALUE_SIZE, 16),
                     6: bpf.create_hash_map(podmap.NAME6, 16, podmap.VALUE_SIZE, 16)}
        self.tunnels = {f: bpf.create_hash_map(name, podmap.KEY_SIZES[f],
                                               podmap.TUNNEL_VALUE.size, 16)
                        for f, name in podmap.TUNNEL_MAPS.items()}
        encap = program.Encap(1, 8472, local, mac, SUBNET_LENS)
        self.length = encap.length
        self.prog = bpf.load_program("podnet_test", program.build(
            self.pods[4], uplinks, UNUSED + 2, CLUSTER, None,
            program.Overlay(encap, self.tunnels), program.Pods6(self.pods[6], CLUSTER6),
            btf.conntrack()))

    def pod(self, ip: IP, veth: int, policed: bool = False) -> None:
        bpf.map_update(self.pods[ip.version], ip.packed,
                       PodEntry(veth, POD_MAC, HOST_MAC, policed).pack())

    def peer(self, subnet: str, node: IP, mac: str) -> None:
        net = ipaddress.ip_network(subnet)
        bpf.map_update(self.tunnels[net.version], net.network_address.packed,
                       podmap.tunnel_value((node, mac)))

    def run(self, data: bytes) -> tuple[int, bytes]:
        """The program's verdict on the frame, and the frame as it left the program."""
        return bpf.test_run(self.prog, data)

    def close(self) -> None:
        for fd in (self.prog, *self.pods.values(), *self.tunnels.values()):
            os.close(fd)


@pytest.fixture(params=[4, 6], ids=["over4", "over6"])
def underlay(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def nodes(make_ns: Callable[[str], str], underlay: int) -> Iterator[tuple[Node, Node]]:
    """node1 sees the frames arrive on a pod's veth (lo), node2 on its underlay (lo)."""
    ip1, ip2, _ = NODES[underlay]
    with netns.entered(make_ns("bpf")):
        node1 = Node(ip1, VTEP1, [UNUSED, UNUSED + 1])
        node2 = Node(ip2, VTEP2, [LO, UNUSED + 1])
        try:
            for pod1, pod2 in PODS.values():
                node1.pod(pod1, LO)
                node2.pod(pod2, 42)
            for subnet, node, ip, mac in (("10.244.2.0/24", node1, ip2, VTEP2),
                                          ("fd00:10:244:2::/64", node1, ip2, VTEP2),
                                          ("10.244.1.0/24", node2, ip1, VTEP1),
                                          ("fd00:10:244:1::/64", node2, ip1, VTEP1)):
                node.peer(subnet, ip, mac)
            yield node1, node2
        finally:
            node1.close()
            node2.close()


@pytest.mark.parametrize("inner", [4, 6], ids=["inner4", "inner6"])
def test_encapsulates_as_a_vxlan_device_would(nodes: tuple[Node, Node], underlay: int,
                                              inner: int) -> None:
    node1, _ = nodes
    pod1, pod2 = PODS[inner]
    ip1, ip2, _ = NODES[underlay]
    sent = packet(pod1, pod2)
    verdict, out = node1.run(frame(BRIDGE_MAC, POD_MAC, sent))
    assert verdict == TC_ACT_REDIRECT  # out of the underlay, the kernel resolving the next hop
    assert len(out) == 14 + node1.length + len(sent)
    if underlay == 4:
        outer, udp = out[14:34], 34
        ver, _tos, total, _id, frag, ttl, proto, _c, src, dst = struct.unpack(
            "!BBHHHBBH4s4s", outer)
        assert (ver, total, frag, ttl, proto) == (0x45, len(out) - 14, 0x4000, 64,
                                                   socket.IPPROTO_UDP)
        assert checksum(outer) == 0xFFFF
    else:
        udp = 54
        word, length, proto, ttl = struct.unpack_from("!IHBB", out, 14)
        src, dst = out[22:38], out[38:54]
        assert (word >> 28, length, proto, ttl) == (6, len(out) - 54, socket.IPPROTO_UDP, 64)
        assert outer_udp_ok(out)  # what the peer's device checks over IPv6
    assert (src, dst) == (ip1.packed, ip2.packed)
    sport, dport, length, ucsum = struct.unpack_from("!HHHH", out, udp)
    assert VXLAN_SOURCE_PORTS[0] <= sport < VXLAN_SOURCE_PORTS[1]
    assert dport == 8472 and length == len(out) - udp
    assert ucsum == 0 or underlay == 6  # no checksum over IPv4, as the device sends it
    assert out[udp + 8:udp + 16] == bytes([0x08, 0, 0, 0, 0, 0, 1, 0])  # VNI 1 valid
    assert out[udp + 16:udp + 30] == codec.mac(VTEP2) + codec.mac(VTEP1) + ETHERTYPE[inner]
    got = inner_of(out, underlay)
    if inner == 4:  # routed once, as the node does
        assert got[8] == 63 and checksum(got[:20]) == 0xFFFF
        assert got[:8] == sent[:8] and got[12:] == sent[12:]
    else:
        assert got[7] == 63 and got[:7] == sent[:7] and got[8:] == sent[8:]


@pytest.mark.parametrize("inner", [4, 6], ids=["inner4", "inner6"])
@pytest.mark.parametrize(("proto", "partial"), [("tcp", False), ("tcp", True), ("udp", False),
                                                ("udp", True), ("icmp", False)],
                         ids=["tcp", "tcp-offloaded", "udp", "udp-offloaded", "icmp"])
def test_the_outer_ipv6_checksum_holds(make_ns: Callable[[str], str], inner: int, proto: str,
                                       partial: bool) -> None:
    """Over IPv6 the outer UDP checksum is computed from the headers: right whether the
    inner transport checksum was complete or is filled in by offload afterwards."""
    pod1, pod2 = PODS[inner]
    with netns.entered(make_ns("bpf")):
        node = Node(NODES[6][0], VTEP1, [UNUSED, UNUSED + 1])
        try:
            node.pod(pod1, LO)
            node.peer("10.244.2.0/24" if inner == 4 else "fd00:10:244:2::/64", NODES[6][1],
                      VTEP2)
            sent = packet(pod1, pod2, proto=proto, partial=partial)
            verdict, out = node.run(frame(BRIDGE_MAC, POD_MAC, sent))
        finally:
            node.close()
    assert verdict == TC_ACT_REDIRECT
    if partial:
        out = out[:84] + complete(out[84:], proto)
    assert outer_udp_ok(out)


@pytest.mark.parametrize("case", ["sctp", "udp without checksum", "fragment"])
def test_over_ipv6_what_headers_cannot_checksum_takes_the_device(make_ns: Callable[[str], str],
                                                                case: str) -> None:
    pod1, pod2 = PODS[4]
    with netns.entered(make_ns("bpf")):
        node = Node(NODES[6][0], VTEP1, [UNUSED, UNUSED + 1])
        try:
            node.pod(pod1, LO)
            node.peer("10.244.2.0/24", NODES[6][1], VTEP2)
            pkt = bytearray(packet(pod1, pod2, proto="sctp" if case == "sctp" else "udp",
                                   udp_csum=case != "udp without checksum"))
            if case == "fragment":
                pkt[6] = 0x20  # more fragments: the rest of the datagram is not here
                pkt[10:12] = b"\0\0"
                pkt[10:12] = struct.pack("!H", 0xFFFF - checksum(bytes(pkt[:20])))
            sent = frame(BRIDGE_MAC, POD_MAC, bytes(pkt))
            verdict, out = node.run(sent)
        finally:
            node.close()
    # Routed to the VXLAN device (here: no route, the normal path), untouched.
    assert verdict == program.TC_ACT_OK and out == sent


def test_the_source_port_follows_the_flow(nodes: tuple[Node, Node], underlay: int) -> None:
    """Flows spread over the underlay's paths (ECMP hashes the outer ports), each flow on
    one path (no reordering). A flow as the kernel's flow dissector tells them apart: by
    addresses and ports, an IPv6 packet with a flow label by its label instead of its
    ports (each socket's own)."""
    node1, _ = nodes
    udp = 34 if underlay == 4 else 54

    def sport(flow: int, inner: int) -> int:
        pod1, pod2 = PODS[inner]
        _, out = node1.run(frame(BRIDGE_MAC, POD_MAC, packet(
            pod1, pod2, proto="udp", ports=(40000 + flow, 53), label=0x12345 + flow)))
        return int(struct.unpack_from("!H", out, udp)[0])

    low, high = VXLAN_SOURCE_PORTS
    for inner in (4, 6):
        ports = [sport(f, inner) for f in range(16)]
        assert ports == [sport(f, inner) for f in range(16)]
        assert len(set(ports)) > 8 and all(low <= p < high for p in ports)


@pytest.mark.parametrize("inner", [4, 6], ids=["inner4", "inner6"])
def test_decapsulates_to_the_pod_what_its_peer_encapsulated(nodes: tuple[Node, Node],
                                                            underlay: int, inner: int) -> None:
    node1, node2 = nodes
    pod1, pod2 = PODS[inner]
    sent = packet(pod1, pod2)
    _, wire = node1.run(frame(BRIDGE_MAC, POD_MAC, sent))
    verdict, out = node2.run(arriving(wire, underlay))
    assert verdict == TC_ACT_REDIRECT  # into the pod's namespace
    assert out[:14] == codec.mac(POD_MAC) + codec.mac(HOST_MAC) + ETHERTYPE[inner]
    if inner == 4:  # routed by both nodes
        assert out[14 + 8] == 62 and checksum(out[14:34]) == 0xFFFF
        assert out[34:] == sent[20:]
    else:
        assert out[14 + 7] == 62 and out[14:21] == sent[:7] and out[22:] == sent[8:]


@pytest.mark.parametrize("case", ["source of another node", "other VNI", "fragment",
                                  "not for a pod here", "TTL expires", "held by policy"])
@pytest.mark.parametrize("inner", [4, 6], ids=["inner4", "inner6"])
def test_decapsulation_leaves_the_rest_to_the_normal_path(nodes: tuple[Node, Node],
                                                          underlay: int, inner: int,
                                                          case: str) -> None:
    node1, node2 = nodes
    (src, dst), ttl = PODS[inner], 64
    if case == "source of another node":  # node1 sending for a pod of node3's subnet
        src = ipaddress.ip_address("10.244.3.9" if inner == 4 else "fd00:10:244:3::9")
        node1.pod(src, LO)
        for node in (node1, node2):
            node.peer("10.244.3.0/24" if inner == 4 else "fd00:10:244:3::/64",
                      NODES[underlay][2], VTEP1)
    if case == "not for a pod here":
        dst = ipaddress.ip_address("10.244.2.4" if inner == 4 else "fd00:10:244:2::4")
    if case == "TTL expires":
        ttl = 2  # 1 after node1's hop
    if case == "held by policy":  # NetworkPolicy judges it on the normal path: the device's
        node2.pod(dst, 42, policed=True)
    verdict, wire = node1.run(frame(BRIDGE_MAC, POD_MAC, packet(src, dst, ttl)))
    assert verdict == TC_ACT_REDIRECT
    arrived = bytearray(arriving(wire, underlay))
    vxlan = 14 + (28 if underlay == 4 else 48)
    if case == "other VNI":
        arrived[vxlan + 6] = 2
    if case == "fragment":  # more fragments; over IPv6 a fragment header comes first
        arrived[20] = 0x20 if underlay == 4 else socket.IPPROTO_FRAGMENT
    verdict, out = node2.run(bytes(arrived))
    assert verdict == program.TC_ACT_OK and out == bytes(arrived)


@pytest.mark.parametrize("inner", [4, 6], ids=["inner4", "inner6"])
def test_a_pod_held_by_policy_sends_by_the_normal_path(nodes: tuple[Node, Node],
                                                       inner: int) -> None:
    node1, _ = nodes
    pod1, pod2 = PODS[inner]
    node1.pod(pod1, LO, policed=True)
    sent = frame(BRIDGE_MAC, POD_MAC, packet(pod1, pod2))
    verdict, out = node1.run(sent)
    assert verdict == program.TC_ACT_OK and out == sent
    node1.pod(pod1, LO)  # released: encapsulated again
    assert node1.run(sent)[0] == TC_ACT_REDIRECT


def _established(src: IP, dst: IP) -> tuple[int, int]:
    """In the namespace entered: a TCP connection from src to dst over lo, as conntrack
    follows it (on, as a node's rules turn it on), with data both ways; its ports."""
    libnft.run("table inet t {\n chain c {\n type filter hook output priority 0;\n"
               " ct state established accept\n }\n}\n")
    ipr = IPRoute()
    try:
        lo = links.index_of(ipr, "lo")
        assert lo is not None
        ipr.link("set", index=lo, state="up")
        for ip in (src, dst):
            links.add_address(ipr, lo, f"{ip}/{ip.max_prefixlen}")
        # An IPv6 address's local route is installed by the kernel's address work queue,
        # after the reply: connecting before it is there fails as unreachable.
        deadline = time.monotonic() + 10
        while not all(_routable(ipr, ip) for ip in (src, dst)) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        ipr.close()
    family = socket.AF_INET if src.version == 4 else socket.AF_INET6
    with socket.socket(family) as server, socket.socket(family) as client:
        client.settimeout(5)
        server.bind((str(dst), 0))
        server.listen()
        client.bind((str(src), 0))
        client.connect(server.getsockname()[:2])
        conn, _ = server.accept()
        with conn:
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.sendall(b"pong")
            assert client.recv(4) == b"pong"
            return client.getsockname()[1], server.getsockname()[1]


def _routable(ipr: IPRoute, ip: IP) -> bool:
    try:
        ipr.route("get", dst=str(ip))
    except NetlinkError:
        return False
    return True


def _half_open(src: IP, dst: IP) -> tuple[int, int]:
    """In the namespace entered (after `_established`): a connection whose handshake never
    completes (its SYN-ACK dropped after conntrack saw it): held, never established; its
    ports."""
    family = socket.AF_INET if src.version == 4 else socket.AF_INET6
    with socket.socket(family) as server, socket.socket(family) as client:
        server.bind((str(dst), 0))
        server.listen()
        port = server.getsockname()[1]
        libnft.run(f"insert rule inet t c tcp sport {port} drop\n")
        client.bind((str(src), 0))
        client.setblocking(False)
        assert client.connect_ex((str(dst), port)) == errno.EINPROGRESS
        return client.getsockname()[1], port


@pytest.mark.parametrize("inner", [4, 6], ids=["inner4", "inner6"])
def test_a_policed_pods_established_connection_keeps_the_fast_path(
        nodes: tuple[Node, Node], underlay: int, inner: int) -> None:
    """Pods policy isolates: the segments of a connection the normal path let through
    (conntrack holds it established) are tunnelled and delivered by the program; a SYN, a
    FIN, a connection conntrack does not know or never saw established, and other protocols
    are the normal path's."""
    node1, node2 = nodes
    pod1, pod2 = PODS[inner]
    node1.pod(pod1, LO, policed=True)
    node2.pod(pod2, 42, policed=True)
    ports = _established(pod1, pod2)
    half_open = _half_open(pod1, pod2)
    segment = packet(pod1, pod2, proto="tcp", ports=ports)
    verdict, wire = node1.run(frame(BRIDGE_MAC, POD_MAC, segment))
    assert verdict == TC_ACT_REDIRECT and inner_of(wire, underlay)[20 if inner == 4 else 40:] \
        == segment[20 if inner == 4 else 40:]
    assert node2.run(arriving(wire, underlay))[0] == TC_ACT_REDIRECT  # into the pod
    flags = 13 + (20 if inner == 4 else 40)
    for other in (bytes([*segment[:flags], 0x02, *segment[flags + 1:]]),  # SYN
                  bytes([*segment[:flags], 0x11, *segment[flags + 1:]]),  # FIN
                  packet(pod1, pod2, proto="tcp", ports=(ports[0], ports[1] + 1)),
                  packet(pod1, pod2, proto="tcp", ports=half_open),
                  packet(pod1, pod2, proto="udp", ports=ports), packet(pod1, pod2)):
        sent = frame(BRIDGE_MAC, POD_MAC, other)
        assert node1.run(sent) == (program.TC_ACT_OK, sent)
    # Arriving at node2 from a node (tunnelled by a released node1): judged there alike.
    node1.pod(pod1, LO)
    _, syn = node1.run(frame(BRIDGE_MAC, POD_MAC, bytes(
        [*segment[:flags], 0x02, *segment[flags + 1:]])))
    arrived = arriving(syn, underlay)
    assert node2.run(arrived) == (program.TC_ACT_OK, arrived)


@pytest.mark.parametrize("inner", [4, 6], ids=["inner4", "inner6"])
def test_peers_routed_directly_are_not_encapsulated(nodes: tuple[Node, Node],
                                                    inner: int) -> None:
    node1, _ = nodes
    elsewhere = ipaddress.ip_address("10.244.5.5" if inner == 4 else "fd00:10:244:5::5")
    sent = frame(BRIDGE_MAC, POD_MAC, packet(PODS[inner][0], elsewhere))
    verdict, out = node1.run(sent)  # no tunnel entry: routed (here: no route, normal path)
    assert verdict == program.TC_ACT_OK and out == sent


@pytest.mark.parametrize("variant", ["routed", "switched", "encap"])
def test_every_variant_of_the_program_loads(variant: str) -> None:
    """The verifier's verdict on each node's program (it refuses, e.g., unreachable code)."""
    pods = bpf.create_hash_map(podmap.NAME, podmap.KEY_SIZE, podmap.VALUE_SIZE, 16)
    tunnel_map = bpf.create_hash_map(podmap.TUNNEL_MAPS[4], 4, podmap.TUNNEL_VALUE.size, 16)
    overlay = (program.Overlay(program.Encap(1, 8472, NODES[4][0], VTEP1, SUBNET_LENS[:1]),
                               {4: tunnel_map}) if variant == "encap" else None)
    code = program.build(pods, [UNUSED], UNUSED + 1, CLUSTER,
                         BRIDGE_MAC if variant == "switched" else None, overlay)
    try:
        os.close(bpf.load_program("podnet_test", code))
    finally:
        os.close(pods)
        os.close(tunnel_map)


@pytest.mark.parametrize("pods", ["ipv4", "ipv6", "dual"])
def test_every_overlay_of_either_family_loads(underlay: int, pods: str) -> None:
    """The program of each pod family over each underlay family: IPv4-only pods over IPv6,
    IPv6-only pods over IPv4, and so on."""
    families = {"ipv4": [4], "ipv6": [6], "dual": [4, 6]}[pods]
    pod_maps = {f: bpf.create_hash_map(podmap.NAME if f == 4 else podmap.NAME6,
                                       podmap.KEY_SIZES[f], podmap.VALUE_SIZE, 16)
                for f in families}
    tunnels = {f: bpf.create_hash_map(podmap.TUNNEL_MAPS[f], podmap.KEY_SIZES[f],
                                      podmap.TUNNEL_VALUE.size, 16) for f in families}
    lens = tuple(x for x in SUBNET_LENS if x[0] in families)
    overlay = program.Overlay(program.Encap(1, 8472, NODES[underlay][0], VTEP1, lens), tunnels)
    code = program.build(pod_maps.get(4), [UNUSED], UNUSED + 1, CLUSTER if 4 in families else None,
                         None, overlay,
                         program.Pods6(pod_maps[6], CLUSTER6) if 6 in families else None)
    try:
        os.close(bpf.load_program("podnet_test", code))
    finally:
        for fd in (*pod_maps.values(), *tunnels.values()):
            os.close(fd)
