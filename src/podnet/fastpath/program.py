"""The fast path's one tc program, attached at ingress of the node's uplinks (and tunnel
device) and of every pod's host-side veth.

- Arriving from another node for a pod of this node (the pod map holds its address): rewrite the
  MACs, decrement the TTL and hand the packet straight to the pod's side of its veth
  (`bpf_redirect_peer`): no bridge, no IP forwarding, no second queue.
- Leaving a pod for a pod of another node: if the packet really is that pod's (its veth, MAC and
  address match the map; otherwise the normal path's anti-spoofing judges it), look the
  destination up in the node's routing table and send it out of the route's device with the
  neighbour the kernel keeps (`bpf_fib_lookup`, `bpf_redirect_neigh`): no bridge, no forwarding.

In the l2 design frames are switched, not routed (`switched_by` is the pod bridge's MAC): a frame
from another node addressed to a pod's MAC goes to the pod as it came, and a pod's frame to
another pod's MAC (not to the bridge's, not multicast) leaves by the uplink as it is; no TTL or
MAC changes, as a switch makes none.

In the overlay (`Encap`), a pod's packet for a pod subnet the tunnel map holds is encapsulated
here, as the node's VXLAN device would (outer IPv4, UDP, VXLAN, inner Ethernet to the peer's
VTEP MAC), and sent out of the underlay; arriving VXLAN packets for a pod of this node are
decapsulated at the underlay and handed to the pod, if their inner source belongs to the node
that sent them. No trip through the VXLAN device, the UDP socket or netfilter on either node.
Segmentation-offload super-packets and fragments keep going through the device.

Everything else (ARP, pods of this node, the node itself, the world, a TTL about to expire,
a route the program cannot use) passes to the normal path unchanged: the fast path only ever
skips hops the normal path would take to the same place.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from podnet.fastpath.asm import R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, Program
from podnet.netlink import codec
from podnet.wire import VXLAN_FLAG_VNI, VXLAN_OVERHEAD

# struct __sk_buff offsets (linux/bpf.h)
SKB_LEN, SKB_PKT_TYPE, SKB_IFINDEX, SKB_DATA, SKB_DATA_END, SKB_GSO_SIZE = 0, 4, 40, 76, 80, 176
# Ethernet and IPv4 header offsets in the frame
ETH_SRC, ETH_PROTO, IP_TOS, IP_FRAG, IP_TTL, IP_PROTO, IP_CHECK, IP_SRC, IP_DST = \
    6, 12, 15, 20, 22, 23, 24, 26, 30
ETH_LEN, FRAME_MIN = 14, 34  # Ethernet; + the fixed IPv4 header
ETH_P_IP_RAW = 0x0008  # 0x0800 as a little-endian load of network-order bytes reads it
# IPv6 header offsets in the frame: next header, hop limit, source, destination
IP6_NEXT, IP6_HOPS, IP6_SRC, IP6_DST = 20, 21, 22, 38
FRAME6_MIN = 54  # Ethernet + the fixed IPv6 header
ETH_P_IPV6_RAW = 0xDD86  # 0x86dd, as ETH_P_IP_RAW
ND_FIRST, ND_LAST = 133, 137  # ICMPv6 router and neighbour discovery: the normal path's
PACKET_HOST = 0
# helpers (linux/bpf.h's __BPF_FUNC_MAPPER order)
MAP_LOOKUP_ELEM, SKB_STORE_BYTES, REDIRECT, SKB_CHANGE_TYPE = 1, 9, 23, 32
SKB_ADJUST_ROOM, FIB_LOOKUP, REDIRECT_NEIGH, REDIRECT_PEER = 50, 69, 152, 155
FIB_LOOKUP_SKIP_NEIGH = 4  # the neighbour is bpf_redirect_neigh's to resolve, with its states
ADJ_ROOM_MAC = 1  # room between the Ethernet and the IP header
# ENCAP_L3_IPV4 | ENCAP_L4_UDP | ENCAP_L2_ETH, and the inner Ethernet header's length at bit 56:
# the skb is marked as a UDP tunnel so checksum offload finds the inner headers
ENCAP_FLAGS = (1 << 1) | (1 << 4) | (1 << 6)
TC_ACT_OK, TC_ACT_SHOT = 0, 2
# the pod map's value: host veth ifindex (u32), pod MAC, host veth MAC
VALUE_SIZE = 16
# the tunnel map's (key: a peer's pod subnet): the peer's node IP at 0, its VTEP MAC at 4
# stack: fib lookup parameters (64 bytes) at -64; redirect_neigh's next hop (20) at -88;
# the headers an encapsulation puts in front (50, 8-aligned as the stack must be) at -144
# an IPv6 pod map key (16) at HDR, which only an encapsulation (IPv4) uses
FIB, NH, KEY, HDR = -64, -88, -4, -144
KEY6 = HDR
FIB_FAMILY, FIB_PROTO, FIB_IFINDEX, FIB_TOS, FIB_SRC, FIB_DST = 0, 1, 8, 12, 16, 32
# VXLAN: what goes in front of the inner IP packet (podnet.wire), and where its fields sit in
# the encapsulated frame
ENCAP_LEN = VXLAN_OVERHEAD
UDP_DPORT, VXLAN_FLAGS, VXLAN_VNI, INNER_PROTO = 36, 42, 46, 62


@dataclass(frozen=True)
class Encap:
    """What the program needs to encapsulate as this node's VXLAN device does."""
    vni: int
    port: int
    local: ipaddress.IPv4Address  # the node's underlay address: the outer source
    mac: str  # the node's VTEP MAC: the inner source
    subnet_len: int  # the length of each node's pod subnet, the tunnel map's keys

    @property
    def subnet_mask(self) -> int:
        return _le(ipaddress.IPv4Network(f"0.0.0.0/{self.subnet_len}").netmask.packed)

    @property
    def vni_word(self) -> int:
        """The VXLAN header's second word: the 24-bit VNI, a reserved byte."""
        return _le((self.vni << 8).to_bytes(4, "big"))


def _le(raw: bytes) -> int:
    """Network-order bytes as the program's native (little-endian) load reads them."""
    return int.from_bytes(raw, "little")


def _raw32(ip: ipaddress.IPv4Address) -> int:
    return _le(ip.packed)


@dataclass(frozen=True)
class Pods6:
    """IPv6 pods on the fast path: their map (16-byte keys, the pod map's values) and the
    cluster's IPv6 network. Routed and switched as IPv4 pods are; into a tunnel the program
    routes them to the VXLAN device, which encapsulates."""
    map_fd: int
    cluster: ipaddress.IPv6Network


def _raw16(value: int) -> int:
    return _le(value.to_bytes(2, "big"))


def build(map_fd: int | None, uplinks: list[int], bridge: int,
          cluster: ipaddress.IPv4Network | None, switched_by: str | None = None,
          encap: tuple[Encap, int] | None = None, pods6: Pods6 | None = None) -> bytes:
    """The program for one node. `encap` is the overlay's parameters and the tunnel map's fd;
    uplinks[0] is then the underlay interface. `pods6`: IPv6 pods too (`_ipv6`); `cluster`
    (and the IPv4 pod map, `map_fd`) None: IPv6 pods only (an IPv6-only cluster).

    Registers every generator below shares: r6 the skb, r7 and r8 its data and data end
    (reloaded by `_reload` after a helper moves them), r9 the device the packet arrived on,
    until a generator takes it over as it says; r10 the stack (FIB, NH, KEY, HDR); r0-r5
    scratch and helper arguments. Labels: `inbound` (from an uplink), `pass` (the normal
    path), `drop` (with an overlay); each generator names those it defines."""
    p = Program()
    p.mov(R6, R1)
    p.load(4, R7, R6, SKB_DATA)
    p.load(4, R8, R6, SKB_DATA_END)
    p.mov(R2, R7)
    p.alu("+", R2, FRAME_MIN)
    p.jump_if_reg(R2, ">", R8, "pass")
    p.load(2, R2, R7, ETH_PROTO)
    if pods6 is not None:
        p.jump_if(R2, "==", ETH_P_IPV6_RAW, "ipv6")
    if cluster is None or map_fd is None:
        p.jump("pass")
    else:
        p.jump_if(R2, "!=", ETH_P_IP_RAW, "pass")
        _ipv4(p, map_fd, uplinks, bridge, cluster, switched_by, encap)
    if pods6 is not None:
        _ipv6(p, pods6, uplinks, bridge, switched_by)

    p.label("pass")
    p.mov_imm(R0, TC_ACT_OK)
    p.exit()
    if encap is not None:  # the verifier refuses code no path reaches
        p.label("drop")
        p.mov_imm(R0, TC_ACT_SHOT)
        p.exit()
    return p.assemble()


def _ipv4(p: Program, map_fd: int, uplinks: list[int], bridge: int,
          cluster: ipaddress.IPv4Network, switched_by: str | None,
          encap: tuple[Encap, int] | None) -> None:
    """IPv4 pods: from a pod's veth, routed, switched or encapsulated past the bridge; from
    another node, straight to the pod. Defines `inbound`; jumps to `pass` and `drop`."""
    p.load(4, R9, R6, SKB_IFINDEX)
    for index in uplinks:
        p.jump_if(R9, "==", index, "inbound")

    # -- from a pod on this node's veth (r9 = that veth) --------------------------------------
    _lookup(p, map_fd, IP_SRC)
    _sent_by_its_pod(p)
    p.load(4, R2, R7, IP_DST)
    p.alu32("&", R2, _raw32(cluster.netmask))
    p.jump32_if(R2, "!=", _raw32(cluster.network_address), "pass")
    _lookup(p, map_fd, IP_DST)
    p.jump_if(R0, "!=", 0, "pass")  # a pod of this node: the bridge's to switch
    if switched_by is not None:
        _switch_out(p, uplinks[0], switched_by)
    else:
        if encap is not None:
            _encap_out(p, *encap, uplinks[0])
        _route_out(p, bridge)

    # -- from another node, for a pod of this one ------------------------------------------------
    p.label("inbound")
    _lookup(p, map_fd, IP_DST)
    if switched_by is not None:
        p.jump_if(R0, "==", 0, "pass")
        _switch_in(p)
    else:
        p.jump_if(R0, "==", 0, "pass" if encap is None else "decap")
        _route_in(p)
        if encap is not None:
            _decap_in(p, map_fd, *encap, uplinks[0])


def _sent_by_its_pod(p: Program) -> None:
    """r0: the pod map's entry for the packet's source, or 0. On unless that pod sent it: from
    its veth (r9) and its MAC; otherwise to `pass`, where the normal path's anti-spoofing
    judges it."""
    p.jump_if(R0, "==", 0, "pass")
    p.load(4, R2, R0, 0)
    p.jump_if_reg(R2, "!=", R9, "pass")  # that address belongs to another pod's port
    p.load(4, R2, R7, ETH_SRC)
    p.load(4, R3, R0, 4)
    p.jump_if_reg(R2, "!=", R3, "pass")
    p.load(2, R2, R7, ETH_SRC + 4)
    p.load(2, R3, R0, 8)
    p.jump_if_reg(R2, "!=", R3, "pass")


def _ipv6(p: Program, pods6: Pods6, uplinks: list[int], bridge: int,
          switched_by: str | None) -> None:
    """IPv6 as IPv4: a pod's packet for another node's pod is routed (or switched) past the
    bridge; one from another node for a pod of this node goes straight to the pod. Neighbour
    and router discovery (ICMPv6 133-137) always takes the normal path. Defines `ipv6` (from
    the program's start, r2 the EtherType) and `inbound6`; jumps to `pass`."""
    p.label("ipv6")
    p.mov(R2, R7)
    p.alu("+", R2, FRAME6_MIN + 1)  # and the ICMPv6 type
    p.jump_if_reg(R2, ">", R8, "pass")
    p.load(1, R2, R7, IP6_NEXT)
    p.jump_if(R2, "!=", socket.IPPROTO_ICMPV6, "not_nd")
    p.load(1, R2, R7, FRAME6_MIN)
    p.jump_if(R2, "<", ND_FIRST, "not_nd")
    p.jump_if(R2, "<=", ND_LAST, "pass")
    p.label("not_nd")
    p.load(4, R9, R6, SKB_IFINDEX)
    for index in uplinks:
        p.jump_if(R9, "==", index, "inbound6")

    _lookup6(p, pods6.map_fd, IP6_SRC)
    _sent_by_its_pod(p)
    _in_prefix6(p, IP6_DST, pods6.cluster)
    _lookup6(p, pods6.map_fd, IP6_DST)
    p.jump_if(R0, "!=", 0, "pass")  # a pod of this node: the bridge's to switch
    if switched_by is not None:
        _switch_out(p, uplinks[0], switched_by, "6")
    else:
        _route_out6(p, bridge)

    p.label("inbound6")
    _lookup6(p, pods6.map_fd, IP6_DST)
    p.jump_if(R0, "==", 0, "pass")
    if switched_by is not None:
        _switch_in(p)
        return
    p.load(4, R2, R6, SKB_PKT_TYPE)
    p.jump_if(R2, "!=", PACKET_HOST, "pass")  # another host's: not ours to route
    p.load(1, R2, R7, IP6_HOPS)
    p.jump_if(R2, "<=", 1, "pass")
    p.alu("-", R2, 1)  # IPv6 has no header checksum to mend
    p.store(1, R7, IP6_HOPS, R2)
    _to_pod(p)


def _lookup6(p: Program, map_fd: int, field: int) -> None:
    """r0 = the IPv6 pod map's value for the packet's address at `field`, or 0."""
    for off in range(0, 16, 4):
        p.load(4, R2, R7, field + off)
        p.store(4, R10, KEY6 + off, R2)
    p.load_map_fd(R1, map_fd)
    p.mov(R2, R10)
    p.alu("+", R2, KEY6)
    p.call(MAP_LOOKUP_ELEM)


def _in_prefix6(p: Program, field: int, net: ipaddress.IPv6Network) -> None:
    """On if the address at `field` is in `net`, else to `pass`: word by word, the last one
    masked to the prefix."""
    packed, mask = net.network_address.packed, net.netmask.packed
    for off in range(0, (net.prefixlen + 31) // 32 * 4, 4):
        p.load(4, R2, R7, field + off)
        if mask[off:off + 4] != b"\xff" * 4:
            p.alu32("&", R2, _le(mask[off:off + 4]))
        p.jump32_if(R2, "!=", _le(packed[off:off + 4]), "pass")


def _route_out6(p: Program, bridge: int) -> None:
    """A pod's IPv6 packet for a peer's pod: `_route_out`'s lookup and send in IPv6 (the flow
    label as the route's flowinfo; the hop limit, which has no checksum, taken down by one)."""
    _new_lookup(p, IP6_HOPS, socket.AF_INET6)
    p.load(1, R2, R7, IP6_NEXT)
    p.store(1, R10, FIB + FIB_PROTO, R2)
    p.load(4, R2, R7, ETH_LEN)
    p.alu32("&", R2, _le(b"\x0f\xff\xff\xff"))  # version and traffic class off
    p.store(4, R10, FIB + FIB_TOS, R2)
    for off in range(0, 32, 4):  # source and destination
        p.load(4, R2, R7, IP6_SRC + off)
        p.store(4, R10, FIB + FIB_SRC + off, R2)
    _lookup_route(p, bridge)
    p.load(1, R2, R7, IP6_HOPS)
    p.alu("-", R2, 1)
    p.store(1, R7, IP6_HOPS, R2)
    _send_to_next_hop(p)


def _encap_out(p: Program, encap: Encap, tunnel_fd: int, underlay: int) -> None:
    """A pod's packet for a subnet behind a tunnel: put the VXLAN headers in front, send it
    out of the underlay. Otherwise on to `route_out` (a peer routed directly).

    Registers: r6 the skb, r7/r8 its data and end (reloaded after the headers grow), r9 the
    peer's tunnel map value (node IP, VTEP MAC); r0-r5 scratch. The headers are built at HDR on
    the stack (r10), then copied in front of the inner packet. Jumps to `route_out` (defined
    last), `pass` and `drop` (the program's); defines `hashed`, `hash_ports`, `route_out`."""
    p.load(4, R2, R7, IP_DST)
    p.alu32("&", R2, encap.subnet_mask)
    _lookup_key(p, tunnel_fd, R2)
    p.jump_if(R0, "==", 0, "route_out")
    p.load(4, R2, R6, SKB_GSO_SIZE)
    p.jump_if(R2, "!=", 0, "route_out")  # a TSO super-packet: the device segments it
    p.load(1, R2, R7, IP_TTL)
    p.jump_if(R2, "<=", 1, "pass")
    p.mov(R9, R0)  # the peer: node IP, VTEP MAC
    _outer_ipv4(p, _raw32(encap.local))
    _outer_udp_vxlan(p, encap)
    _inner_ethernet(p, encap)
    _push_and_send(p, underlay)
    p.label("route_out")


def _outer_ipv4(p: Program, local: int) -> None:
    """The outer IPv4 header at HDR: no options, DF, TTL 64, UDP, the inner TOS (as the
    device copies it), this node to the peer (r9), and its checksum."""
    h = HDR
    p.store_imm(1, R10, h, 0x45)
    p.load(1, R2, R7, IP_TOS)
    p.store(1, R10, h + 1, R2)
    _store_length(p, h + 2, ENCAP_LEN - ETH_LEN)
    p.store_imm(4, R10, h + 4, _le(bytes([0, 0, 0x40, 0])))
    p.store_imm(4, R10, h + 8, _le(bytes([64, socket.IPPROTO_UDP, 0, 0])))
    p.store_imm(4, R10, h + 12, local)
    p.load(4, R2, R9, 0)
    p.store(4, R10, h + 16, R2)
    # Its checksum: the one's complement sum of its 16-bit words, the constant ones summed
    # here (byte order does not change such a sum: the words are added as loaded).
    p.load(1, R0, R7, IP_TOS)
    p.alu("<<", R0, 8)
    p.alu("+", R0, 0x45 + 0x40 + _le(bytes([64, socket.IPPROTO_UDP])) + (local & 0xFFFF)
          + (local >> 16))
    p.load(2, R3, R10, h + 2)
    p.alu_reg("+", R0, R3)
    p.mov(R3, R2)
    p.alu(">>", R3, 16)
    p.alu_reg("+", R0, R3)
    p.alu("&", R2, 0xFFFF)
    p.alu_reg("+", R0, R2)
    for _ in range(2):
        p.mov(R2, R0)
        p.alu(">>", R2, 16)
        p.alu("&", R0, 0xFFFF)
        p.alu_reg("+", R0, R2)
    p.alu("^", R0, 0xFFFF)
    p.store(2, R10, h + 10, R0)


def _outer_udp_vxlan(p: Program, encap: Encap) -> None:
    """UDP at HDR + 20, then VXLAN: the source port from the flow (addresses, and ports where
    the packet has them), spreading flows over the underlay's paths as the device does, in
    49152-65535; no checksum, as the device sends it; the VNI. Defines `hash_ports` and
    `hashed`."""
    h = HDR
    p.load(4, R0, R7, IP_SRC)
    p.load(4, R2, R7, IP_DST)
    p.alu_reg("^", R0, R2)
    p.load(1, R2, R7, ETH_LEN)
    p.jump_if(R2, "!=", 0x45, "hashed")  # options: the ports are elsewhere
    p.load(1, R2, R7, IP_PROTO)
    p.jump_if(R2, "==", socket.IPPROTO_TCP, "hash_ports")
    p.jump_if(R2, "!=", socket.IPPROTO_UDP, "hashed")
    p.label("hash_ports")
    p.mov(R2, R7)
    p.alu("+", R2, FRAME_MIN + 4)
    p.jump_if_reg(R2, ">", R8, "hashed")
    p.load(4, R2, R7, FRAME_MIN)
    p.alu_reg("^", R0, R2)
    p.label("hashed")
    p.mov(R2, R0)
    p.alu(">>", R2, 16)
    p.alu_reg("^", R0, R2)
    p.alu("|", R0, 0xC0)  # the port's high byte, first in network order
    p.store(2, R10, h + 20, R0)
    p.store_imm(2, R10, h + 22, _raw16(encap.port))
    _store_length(p, h + 24, ENCAP_LEN - ETH_LEN - 20)
    p.store_imm(2, R10, h + 26, 0)
    p.store_imm(4, R10, h + 28, VXLAN_FLAG_VNI)
    p.store_imm(4, R10, h + 32, encap.vni_word)


def _inner_ethernet(p: Program, encap: Encap) -> None:
    """The inner Ethernet header at HDR + 36: to the peer's VTEP MAC (r9; its device takes
    it, should it decapsulate), from this node's."""
    h = HDR
    p.load(4, R2, R9, 4)
    p.store(4, R10, h + 36, R2)
    p.load(2, R2, R9, 8)
    p.store(2, R10, h + 40, R2)
    mac = codec.mac(encap.mac)
    p.store_imm(2, R10, h + 42, _le(mac[:2]))
    p.store_imm(4, R10, h + 44, _le(mac[2:]))
    p.store_imm(2, R10, h + 48, ETH_P_IP_RAW)


def _push_and_send(p: Program, underlay: int) -> None:
    """Grow the packet after its Ethernet header by the headers at HDR (flagged as a UDP
    tunnel, so that checksum offload finds the inner headers), write them, decrement the inner
    TTL and send the packet out of the underlay, whose neighbour the kernel resolves. Ends the
    program's run; jumps to `pass` (no room) or `drop` (grown but not written)."""
    p.mov(R1, R6)
    p.mov_imm(R2, ENCAP_LEN)
    p.mov_imm(R3, ADJ_ROOM_MAC)
    p.mov_imm(R4, ETH_LEN)
    p.alu("<<", R4, 56)
    p.alu("|", R4, ENCAP_FLAGS)
    p.call(SKB_ADJUST_ROOM)
    p.jump_if(R0, "!=", 0, "pass")  # refused (too long for the room): the device's to do
    p.mov(R1, R6)
    p.mov_imm(R2, ETH_LEN)
    p.mov(R3, R10)
    p.alu("+", R3, HDR)
    p.mov_imm(R4, ENCAP_LEN)
    p.mov_imm(R5, 0)
    p.call(SKB_STORE_BYTES)
    p.jump_if(R0, "!=", 0, "drop")  # grown but not written: no packet to pass on
    _reload(p, FRAME_MIN + ENCAP_LEN, "drop")
    _decrement_ttl(p, "encap", ENCAP_LEN)
    # The outer Ethernet header: the kernel routes the outer destination out of the underlay.
    p.mov_imm(R1, underlay)
    p.mov_imm(R2, 0)
    p.mov_imm(R3, 0)
    p.mov_imm(R4, 0)
    p.call(REDIRECT_NEIGH)
    p.exit()


def _decap_in(p: Program, map_fd: int, encap: Encap, tunnel_fd: int, underlay: int) -> None:
    """VXLAN from a peer, to this node, for one of its pods: take the outer headers off and
    deliver the inner packet as `_route_in` does. Defines `decap` (reached from `inbound` when
    the outer destination is no pod); r9 holds the arrival device, then the pod's entry; jumps
    to `pass`, `drop` and `_route_in`'s `deliver`."""
    p.label("decap")
    p.jump_if(R9, "!=", underlay, "pass")
    p.mov(R2, R7)
    p.alu("+", R2, FRAME_MIN + ENCAP_LEN)
    p.jump_if_reg(R2, ">", R8, "pass")
    for size, off, want in ((1, ETH_LEN, 0x45), (1, IP_PROTO, socket.IPPROTO_UDP),
                            (4, IP_DST, _raw32(encap.local)), (2, UDP_DPORT, _raw16(encap.port)),
                            (4, VXLAN_FLAGS, VXLAN_FLAG_VNI),
                            (4, VXLAN_VNI, encap.vni_word),
                            (2, INNER_PROTO, ETH_P_IP_RAW)):
        p.load(size, R2, R7, off)
        p.jump32_if(R2, "!=", want, "pass")
    p.load(2, R2, R7, IP_FRAG)
    p.alu("&", R2, _le(b"\x3f\xff"))  # a fragment is the kernel's to reassemble
    p.jump_if(R2, "!=", 0, "pass")
    p.load(4, R2, R6, SKB_GSO_SIZE)
    p.jump_if(R2, "!=", 0, "pass")  # a GRO super-packet: the device takes it apart
    p.load(4, R2, R6, SKB_PKT_TYPE)
    p.jump_if(R2, "!=", PACKET_HOST, "pass")
    p.load(1, R2, R7, IP_TTL + ENCAP_LEN)
    p.jump_if(R2, "<=", 1, "pass")
    # The inner source must be a pod of the node that sent it (the outer source), as the
    # normal path accepts VXLAN from known nodes only.
    p.load(4, R2, R7, IP_SRC + ENCAP_LEN)
    p.alu32("&", R2, encap.subnet_mask)
    _lookup_key(p, tunnel_fd, R2)
    p.jump_if(R0, "==", 0, "pass")
    p.load(4, R2, R0, 0)
    p.load(4, R3, R7, IP_SRC)
    p.jump_if_reg(R2, "!=", R3, "pass")
    _lookup(p, map_fd, IP_DST + ENCAP_LEN)
    p.jump_if(R0, "==", 0, "pass")
    p.mov(R9, R0)
    p.mov(R1, R6)
    p.mov_imm(R2, -ENCAP_LEN)
    p.mov_imm(R3, ADJ_ROOM_MAC)
    p.mov_imm(R4, 0)
    p.call(SKB_ADJUST_ROOM)
    p.jump_if(R0, "!=", 0, "pass")
    _reload(p, FRAME_MIN, "drop")
    p.mov(R0, R9)
    p.jump("deliver")


def _store_length(p: Program, off: int, extra: int) -> None:
    """A 16-bit length field at r10 + off: the frame's length + extra, in network order."""
    p.load(4, R2, R6, SKB_LEN)
    p.alu("+", R2, extra)
    p.to_be16(R2)
    p.store(2, R10, off, R2)


def _reload(p: Program, need: int, short: str) -> None:
    """The packet pointers again after a helper moved the data; `need` bytes or `short`."""
    p.load(4, R7, R6, SKB_DATA)
    p.load(4, R8, R6, SKB_DATA_END)
    p.mov(R2, R7)
    p.alu("+", R2, need)
    p.jump_if_reg(R2, ">", R8, short)


def _route_out(p: Program, bridge: int) -> None:
    """A pod's packet for a peer routed directly: look the route up as if the packet arrived
    on the bridge, and send it out of the route's device to its next hop. The FIB lookup's
    and the next hop's arguments are built on the stack (FIB, NH); r9 the route's device.
    Jumps to `pass` where the normal path must act (no route, the bridge's, TTL 1)."""
    _new_lookup(p, IP_TTL, socket.AF_INET)
    for src, dst, size in ((IP_PROTO, FIB_PROTO, 1), (IP_TOS, FIB_TOS, 1),
                           (IP_SRC, FIB_SRC, 4), (IP_DST, FIB_DST, 4)):
        p.load(size, R2, R7, src)
        p.store(size, R10, FIB + dst, R2)
    _lookup_route(p, bridge)
    _decrement_ttl(p, "out")
    _send_to_next_hop(p)


def _new_lookup(p: Program, hops: int, family: int) -> None:
    """To `pass` where the TTL (hop limit) at `hops` ends here: the normal path sends the
    time-exceeded error. Otherwise the FIB lookup's parameters zeroed, of `family`."""
    p.load(1, R2, R7, hops)
    p.jump_if(R2, "<=", 1, "pass")
    p.mov_imm(R1, 0)
    for off in range(FIB, 0, 8):
        p.store(8, R10, off, R1)
    p.store_imm(1, R10, FIB + FIB_FAMILY, family)


def _lookup_route(p: Program, bridge: int) -> None:
    """The FIB lookup of the parameters at FIB, as if the packet arrived on the bridge, where
    the normal path routes it; r9 the route's device. To `pass` where it fails or the route
    is the bridge's."""
    p.store_imm(4, R10, FIB + FIB_IFINDEX, bridge)
    p.mov(R1, R6)
    p.mov(R2, R10)
    p.alu("+", R2, FIB)
    p.mov_imm(R3, 64)
    p.mov_imm(R4, FIB_LOOKUP_SKIP_NEIGH)
    p.call(FIB_LOOKUP)
    p.jump_if(R0, "!=", 0, "pass")
    p.load(4, R9, R10, FIB + FIB_IFINDEX)  # the route's device
    p.jump_if(R9, "==", bridge, "pass")


def _send_to_next_hop(p: Program) -> None:
    """Send the packet out of the route's device (r9) to the next hop the FIB lookup left at
    FIB_DST, of the family it left at FIB_FAMILY (IPv6 also where an IPv4 route goes via an
    IPv6 gateway: 16 bytes then); the kernel resolves its neighbour. Ends the run."""
    p.mov_imm(R1, 0)
    for off in range(NH, FIB, 8):
        p.store(8, R10, off, R1)
    p.load(1, R2, R10, FIB + FIB_FAMILY)
    p.store(4, R10, NH, R2)
    for off in range(0, 16, 4):
        p.load(4, R2, R10, FIB + FIB_DST + off)
        p.store(4, R10, NH + 4 + off, R2)
    p.mov(R1, R9)
    p.mov(R2, R10)
    p.alu("+", R2, NH)
    p.mov_imm(R3, 20)
    p.mov_imm(R4, 0)
    p.call(REDIRECT_NEIGH)
    p.exit()


def _route_in(p: Program) -> None:
    """From another node, for a pod of this one (r0: its pod map entry): rewrite the MACs to
    the pod's and the host veth's, TTL - 1, and hand it to the pod's side of the veth.
    Defines `deliver`, also the decapsulated packets' way in; jumps to `pass`."""
    p.load(4, R2, R6, SKB_PKT_TYPE)
    p.jump_if(R2, "!=", PACKET_HOST, "pass")  # another host's: not ours to route
    p.load(1, R2, R7, IP_TTL)
    p.jump_if(R2, "<=", 1, "pass")
    p.label("deliver")  # r0: the pod's map entry
    _decrement_ttl(p, "in")
    _to_pod(p)


def _to_pod(p: Program) -> None:
    """To the pod of map entry r0: the MACs rewritten to the pod's and its host veth's, the
    packet handed to the pod's side of the veth. Ends the run."""
    for src, dst, size in ((4, 0, 4), (8, 4, 2), (10, 6, 2), (12, 8, 4)):  # MACs
        p.load(size, R2, R0, src)
        p.store(size, R7, dst, R2)
    p.load(4, R9, R0, 0)
    p.mov(R1, R9)
    p.mov_imm(R2, 0)
    p.call(REDIRECT_PEER)
    p.exit()


def _switch_out(p: Program, uplink: int, bridge_mac: str, tag: str = "") -> None:
    """l2: a pod's unicast frame for another node's pod goes straight to the uplink; one for
    the bridge itself (the gateway), broadcast and multicast to `pass`. Defines
    `to_uplink<tag>`."""
    raw = codec.mac(bridge_mac)
    p.load(1, R2, R7, 0)
    p.alu("&", R2, 1)
    p.jump_if(R2, "!=", 0, "pass")  # broadcast, multicast: every port's
    p.load(4, R2, R7, 0)
    p.jump32_if(R2, "!=", _le(raw[:4]), f"to_uplink{tag}")
    p.load(2, R2, R7, 4)
    p.jump_if(R2, "==", _le(raw[4:]), "pass")  # to the bridge (gateway)
    p.label(f"to_uplink{tag}")
    p.mov_imm(R1, uplink)
    p.mov_imm(R2, 0)
    p.call(REDIRECT)
    p.exit()


def _switch_in(p: Program) -> None:
    """l2: a frame from the uplink addressed to a pod of this node (r0: its entry) goes
    straight to the pod; jumps to `pass` for any other."""
    p.load(4, R2, R7, 0)  # only a frame addressed to that pod's MAC
    p.load(4, R3, R0, 4)
    p.jump_if_reg(R2, "!=", R3, "pass")
    p.load(2, R2, R7, 4)
    p.load(2, R3, R0, 8)
    p.jump_if_reg(R2, "!=", R3, "pass")
    p.load(4, R9, R0, 0)
    # The uplink is a promiscuous bridge port: the frame was "another host's" to it.
    p.mov(R1, R6)
    p.mov_imm(R2, PACKET_HOST)
    p.call(SKB_CHANGE_TYPE)
    p.mov(R1, R9)
    p.mov_imm(R2, 0)
    p.call(REDIRECT_PEER)
    p.exit()


def _lookup(p: Program, map_fd: int, field: int) -> None:
    """r0 = the pod map's value for the packet's address at `field`, or 0."""
    p.load(4, R2, R7, field)
    _lookup_key(p, map_fd, R2)


def _lookup_key(p: Program, map_fd: int, reg: int) -> None:
    """r0 = the map's value for the 4-byte key in `reg`, or 0."""
    p.store(4, R10, KEY, reg)
    p.load_map_fd(R1, map_fd)
    p.mov(R2, R10)
    p.alu("+", R2, KEY)
    p.call(MAP_LOOKUP_ELEM)


def _decrement_ttl(p: Program, tag: str, at: int = 0) -> None:
    """TTL - 1 of the IP header `at` bytes further than a plain frame's, with the header
    checksum updated incrementally, as the kernel's ip_decrease_ttl does (the TTL is the high
    byte of its 16-bit word, so the sum grows by 0x0100 in network order: 1 in this
    little-endian load)."""
    p.load(1, R2, R7, IP_TTL + at)
    p.alu("-", R2, 1)
    p.store(1, R7, IP_TTL + at, R2)
    p.load(2, R2, R7, IP_CHECK + at)
    p.alu("+", R2, 1)
    p.jump_if(R2, "<", 0xFFFF, f"csum_{tag}")
    p.alu("+", R2, 1)
    p.label(f"csum_{tag}")
    p.store(2, R7, IP_CHECK + at, R2)
