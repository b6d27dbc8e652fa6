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

In the overlay (`Encap`), a pod's packet for a pod subnet a tunnel map holds is encapsulated
here, as the node's VXLAN device would (outer IPv4 or IPv6 as the underlay is, UDP, VXLAN,
inner Ethernet to the peer's VTEP MAC), and sent out of the underlay; arriving VXLAN packets for
a pod of this node are decapsulated at the underlay and handed to the pod, if their inner source
belongs to the node that sent them. Pods of either family, over an underlay of either. No trip
through the VXLAN device, the UDP socket or netfilter on either node. A flow takes one path:
its segmentation-offload super-packets too are encapsulated here (over IPv4; their segments
get their headers when the kernel segments them) and decapsulated here as they arrive (GRO
super-packets of TCP). Fragments keep going through the device, and so over IPv6 do
super-packets and packets whose outer UDP checksum cannot be had from their headers
(`_checksummed`), routed to it here; the outer source port is picked as the device picks it, so
a flow the two share is one flow on the wire.

A pod NetworkPolicy isolates (its pod map entry's POLICED bit) keeps the fast path only for
packets of TCP connections the normal path has let through: the kernel's connection tracking
holds them as established (`_established`, asking conntrack as a kfunc). Every connection's
first packets, its SYN, FIN and RST, and all else of such a pod take the normal path, where the
node's policy judges them.

Everything else (ARP, pods of this node, the node itself, the world, a TTL about to expire,
a route the program cannot use) passes to the normal path unchanged: the fast path only ever
skips hops the normal path would take to the same place.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from podnet.fastpath.asm import R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, Program
from podnet.fastpath.btf import Conntrack
from podnet.netlink import codec
from podnet.wire import VXLAN6_OVERHEAD, VXLAN_FLAG_VNI, VXLAN_OVERHEAD, VXLAN_SOURCE_PORTS

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
MAP_LOOKUP_ELEM, SKB_STORE_BYTES, REDIRECT, SKB_CHANGE_TYPE, GET_HASH_RECALC = 1, 9, 23, 32, 34
SKB_ADJUST_ROOM, FIB_LOOKUP, REDIRECT_NEIGH, REDIRECT_PEER = 50, 69, 152, 155
FIB_LOOKUP_SKIP_NEIGH = 4  # the neighbour is bpf_redirect_neigh's to resolve, with its states
ADJ_ROOM_MAC = 1  # room between the Ethernet and the IP header
# A segmentation-offload super-packet keeps its segment size across the headers added or
# taken off: the pods' MTU already leaves room for them (the kernel insists on it for UDP).
FIXED_GSO = 1 << 0
# ENCAP_L3_IPV4 or _IPV6 (the outer header's), ENCAP_L4_UDP | ENCAP_L2_ETH, and the inner
# Ethernet header's length at bit 56: the skb is marked as a UDP tunnel so checksum offload
# finds the inner headers (and its protocol becomes the outer header's)
ENCAP_L3 = {4: 1 << 1, 6: 1 << 2}
ENCAP_FLAGS = (1 << 4) | (1 << 6) | FIXED_GSO
# Taking the outer headers off: the skb's protocol becomes the inner header's (DECAP_L3_IPV4,
# _IPV6), as an inner family other than the outer one needs
DECAP_L3 = {4: 1 << 7, 6: 1 << 8}
TC_ACT_OK, TC_ACT_SHOT = 0, 2
# the pod map's value: host veth ifindex (u32), pod MAC, host veth MAC; the ifindex's top bit
# (no ifindex has it) set while NetworkPolicy holds the pod on the normal path
VALUE_SIZE = 16
POLICED = 1 << 31
# the tunnel maps' (keys: a peer's pod subnet of one family): the peer's VTEP MAC at 0, its
# node IP (the underlay's family; IPv4 in the first 4 bytes) at 8
TUNNEL_MAC, TUNNEL_IP = 0, 8
# stack: fib lookup parameters (64 bytes) at -64; redirect_neigh's next hop (20) at -88;
# the headers an encapsulation puts in front (at most 70, 8-aligned as the stack must be) at
# -144, which the 16-byte keys of IPv6 lookups share (a lookup is done before they are built)
FIB, NH, KEY, HDR = -64, -88, -4, -144
KEY6 = HDR
# below them, a conntrack lookup's tuple (at most 36 bytes) and options (16), the pod entry
# kept across the calls, and the status read before the entry is released
CT_TUPLE, CT_OPTS, CT_ENTRY, CT_STATUS = -200, -160, -208, -216
CT_CURRENT_NETNS = -1
IPS_ASSURED = 1 << 2  # both directions seen, the handshake done (nf_conntrack_common.h)
TCP_FIN_SYN_RST = 0x07  # the flags conntrack must see to follow a connection's life
FIB_FAMILY, FIB_PROTO, FIB_IFINDEX, FIB_TOS, FIB_SRC, FIB_DST = 0, 1, 8, 12, 16, 32


@dataclass(frozen=True)
class Family:
    """Where one IP version's header fields sit in a frame (right after the Ethernet
    header), and the suffix of the labels its code defines."""
    version: int
    ethertype: int  # as a native load reads it
    hops: int  # TTL, hop limit
    proto: int  # protocol, next header
    src: int
    dst: int
    header: int  # the fixed header's length
    tag: str

    @property
    def addr_len(self) -> int:
        return 4 if self.version == 4 else 16


V4 = Family(4, ETH_P_IP_RAW, IP_TTL, IP_PROTO, IP_SRC, IP_DST, 20, "")
V6 = Family(6, ETH_P_IPV6_RAW, IP6_HOPS, IP6_NEXT, IP6_SRC, IP6_DST, 40, "6")
FAMILY = {4: V4, 6: V6}


@dataclass(frozen=True)
class Encap:
    """What the program needs to encapsulate as this node's VXLAN device does."""
    vni: int
    port: int
    # The node's underlay address: the outer source; its family the outer header's.
    local: ipaddress.IPv4Address | ipaddress.IPv6Address
    mac: str  # the node's VTEP MAC: the inner source
    # The length of each node's pod subnet per pod family, the tunnel maps' keys.
    subnet_lens: tuple[tuple[int, int], ...] = ()
    # The node's VXLAN device's outer source port range, [low, high): the program picks a
    # flow's port as the device does, so the packets either sends are one flow on the wire.
    source_ports: tuple[int, int] = VXLAN_SOURCE_PORTS

    @property
    def outer(self) -> Family:
        return FAMILY[self.local.version]

    @property
    def length(self) -> int:
        """What goes in front of the inner IP packet (podnet.wire)."""
        return VXLAN_OVERHEAD if self.local.version == 4 else VXLAN6_OVERHEAD

    def subnet_len(self, family: int) -> int | None:
        return dict(self.subnet_lens).get(family)

    def mask(self, family: int) -> bytes:
        """The netmask of the family's pod subnets, network order."""
        length = self.subnet_len(family)
        assert length is not None
        bits = 32 if family == 4 else 128
        return ((1 << bits) - (1 << (bits - length))).to_bytes(bits // 8, "big")

    @property
    def vni_word(self) -> int:
        """The VXLAN header's second word: the 24-bit VNI, a reserved byte."""
        return _le((self.vni << 8).to_bytes(4, "big"))


@dataclass(frozen=True)
class Overlay:
    """The encapsulation's parameters and its tunnel map's fd per pod family."""
    encap: Encap
    tunnels: dict[int, int]


def _le(raw: bytes) -> int:
    """Network-order bytes as the program's native (little-endian) load reads them."""
    return int.from_bytes(raw, "little")


def _raw32(ip: ipaddress.IPv4Address) -> int:
    return _le(ip.packed)


@dataclass(frozen=True)
class Pods6:
    """IPv6 pods on the fast path: their map (16-byte keys, the pod map's values) and the
    cluster's IPv6 network. Routed, switched and tunnelled as IPv4 pods are."""
    map_fd: int
    cluster: ipaddress.IPv6Network


def _raw16(value: int) -> int:
    return _le(value.to_bytes(2, "big"))


def build(map_fd: int | None, uplinks: list[int], bridge: int,
          cluster: ipaddress.IPv4Network | None, switched_by: str | None = None,
          overlay: Overlay | None = None, pods6: Pods6 | None = None,
          conntrack: Conntrack | None = None) -> bytes:
    """The program for one node. `overlay`: the program encapsulates to the tunnel maps'
    peers and decapsulates what they send; uplinks[0] is then the underlay interface.
    `pods6`: IPv6 pods too (`_ipv6`); `cluster` (and the IPv4 pod map, `map_fd`) None: IPv6
    pods only (an IPv6-only cluster). `conntrack`: the kernel's, for the established
    connections of pods policy isolates; None: those pods take the normal path alone.

    Registers every generator below shares: r6 the skb, r7 and r8 its data and data end
    (reloaded by `_reload` after a helper moves them), r9 the device the packet arrived on,
    until a generator takes it over as it says; r10 the stack (FIB, NH, KEY, HDR); r0-r5
    scratch and helper arguments. Labels: `inbound`/`inbound6` (from an uplink), `pass` (the
    normal path), `drop` (with an overlay); each generator names those it defines."""
    pods4 = None if cluster is None or map_fd is None else (map_fd, cluster)
    outer = overlay.encap.outer.version if overlay is not None else None
    p = Program()
    p.mov(R6, R1)
    p.load(4, R7, R6, SKB_DATA)
    p.load(4, R8, R6, SKB_DATA_END)
    p.mov(R2, R7)
    p.alu("+", R2, FRAME_MIN)
    p.jump_if_reg(R2, ">", R8, "pass")
    p.load(2, R2, R7, ETH_PROTO)
    if pods6 is not None or outer == 6:
        p.jump_if(R2, "==", ETH_P_IPV6_RAW, "ipv6")
    if pods4 is None and outer != 4:
        p.jump("pass")
    else:
        p.jump_if(R2, "!=", ETH_P_IP_RAW, "pass")
        _ipv4(p, pods4, uplinks, bridge, switched_by, overlay, conntrack)
    if pods6 is not None or outer == 6:
        _ipv6(p, pods6, uplinks, bridge, switched_by, overlay, conntrack)
    if overlay is not None:
        maps = {4: map_fd, 6: pods6.map_fd if pods6 is not None else None}
        _decap_in(p, overlay, {f: fd for f, fd in maps.items() if fd is not None}, uplinks[0],
                  conntrack)

    p.label("pass")
    p.mov_imm(R0, TC_ACT_OK)
    p.exit()
    if overlay is not None:  # the verifier refuses code no path reaches
        p.label("drop")
        p.mov_imm(R0, TC_ACT_SHOT)
        p.exit()
    return p.assemble()


def _ipv4(p: Program, pods: tuple[int, ipaddress.IPv4Network] | None, uplinks: list[int],
          bridge: int, switched_by: str | None, overlay: Overlay | None,
          ct: Conntrack | None) -> None:
    """IPv4 pods: from a pod's veth, routed, switched or encapsulated past the bridge; from
    another node, straight to the pod. Without IPv4 pods (an IPv6-only cluster over an IPv4
    underlay) only what arrives on the underlay, for `decap`. Defines `inbound`; jumps to
    `pass`, `decap` and `drop`."""
    decap = overlay is not None and overlay.encap.outer is V4
    p.load(4, R9, R6, SKB_IFINDEX)
    for index in uplinks:
        p.jump_if(R9, "==", index, "inbound")
    if pods is None:
        p.jump("pass")
        p.label("inbound")
        p.jump("decap")
        return
    map_fd, cluster = pods

    # -- from a pod on this node's veth (r9 = that veth) --------------------------------------
    _lookup(p, map_fd, V4, IP_SRC)
    _sent_by_its_pod(p, ct, V4)
    p.load(4, R2, R7, IP_DST)
    p.alu32("&", R2, _raw32(cluster.netmask))
    p.jump32_if(R2, "!=", _raw32(cluster.network_address), "pass")
    _lookup(p, map_fd, V4, IP_DST)
    p.jump_if(R0, "!=", 0, "pass")  # a pod of this node: the bridge's to switch
    if switched_by is not None:
        _switch_out(p, uplinks[0], switched_by)
    else:
        if overlay is not None and 4 in overlay.tunnels:
            _encap_out(p, overlay.encap, overlay.tunnels[4], V4, uplinks[0])
        _route_out(p, bridge)

    # -- from another node, for a pod of this one ------------------------------------------------
    p.label("inbound")
    _lookup(p, map_fd, V4, IP_DST)
    if switched_by is not None:
        p.jump_if(R0, "==", 0, "pass")
        _switch_in(p, ct, V4)
    else:
        p.jump_if(R0, "==", 0, "decap" if decap else "pass")
        _route_in(p, ct)


def _sent_by_its_pod(p: Program, ct: Conntrack | None, family: Family) -> None:
    """r0: the pod map's entry for the packet's source, or 0. On unless that pod sent it: from
    its veth (r9) and its MAC; otherwise to `pass`, where the normal path's anti-spoofing
    judges it. A pod policy isolates goes on as `_judged` says."""
    p.jump_if(R0, "==", 0, "pass")
    p.load(4, R2, R0, 0)
    p.alu32("&", R2, POLICED - 1)  # its veth, whether policy isolates it or not
    p.jump_if_reg(R2, "!=", R9, "pass")  # that address belongs to another pod's port
    p.load(4, R2, R7, ETH_SRC)
    p.load(4, R3, R0, 4)
    p.jump_if_reg(R2, "!=", R3, "pass")
    p.load(2, R2, R7, ETH_SRC + 4)
    p.load(2, R3, R0, 8)
    p.jump_if_reg(R2, "!=", R3, "pass")
    _judged(p, ct, family, 0, "out" + family.tag)


def _judged(p: Program, ct: Conntrack | None, family: Family, at: int, tag: str) -> None:
    """On if the pod of entry r0 is free of policy, or its packet (whose IP header lies `at`
    bytes further than a plain frame's) belongs to a connection the normal path let through;
    to `pass` otherwise, where the node's rules judge it. Keeps r0. Defines `free_<tag>`."""
    p.load(4, R2, R0, 0)
    p.jump32_if(R2, "<", POLICED, f"free_{tag}")
    if ct is None:
        p.jump("pass")
    else:
        p.store(8, R10, CT_ENTRY, R0)
        _established(p, ct, family, at)
        p.load(8, R0, R10, CT_ENTRY)
    p.label(f"free_{tag}")


def _established(p: Program, ct: Conntrack, family: Family, at: int) -> None:
    """On if the packet is a TCP segment, neither SYN, FIN nor RST, of a connection conntrack
    holds as established (ASSURED: the handshake seen both ways, by the normal path, whose
    policy let it be); to `pass` otherwise, as for every other protocol. What would hide
    the ports (IPv4 options, fragments, IPv6 extension headers) also passes."""
    l4 = ETH_LEN + family.header + at
    p.mov(R2, R7)
    p.alu("+", R2, l4 + 14)  # to the TCP flags
    p.jump_if_reg(R2, ">", R8, "pass")
    p.load(1, R2, R7, family.proto + at)
    p.jump_if(R2, "!=", socket.IPPROTO_TCP, "pass")
    if family is V4:
        p.load(1, R2, R7, ETH_LEN + at)
        p.jump_if(R2, "!=", 0x45, "pass")
        p.load(2, R2, R7, IP_FRAG + at)
        p.alu("&", R2, _le(b"\x3f\xff"))
        p.jump_if(R2, "!=", 0, "pass")
    p.load(1, R2, R7, l4 + 13)
    p.alu("&", R2, TCP_FIN_SYN_RST)
    p.jump_if(R2, "!=", 0, "pass")
    # struct bpf_sock_tuple: the addresses and then the ports, as the packet has them
    size = 2 * family.addr_len + 4
    for off in range(0, size, 4):
        p.load(4, R2, R7, family.src + at + off)
        p.store(4, R10, CT_TUPLE + off, R2)
    # struct bpf_ct_opts: the skb's namespace, TCP, the default zone
    p.store_imm(4, R10, CT_OPTS, CT_CURRENT_NETNS)
    for off in range(4, ct.opts_size, 4):
        p.store_imm(4, R10, CT_OPTS + off, 0)
    p.store_imm(1, R10, CT_OPTS + 8, socket.IPPROTO_TCP)
    p.mov(R1, R6)
    p.mov(R2, R10)
    p.alu("+", R2, CT_TUPLE)
    p.mov_imm(R3, size)
    p.mov(R4, R10)
    p.alu("+", R4, CT_OPTS)
    p.mov_imm(R5, ct.opts_size)
    p.call_kfunc(ct.lookup)
    p.jump_if(R0, "==", 0, "pass")
    p.load(8, R2, R0, ct.status)
    p.store(8, R10, CT_STATUS, R2)
    p.mov(R1, R0)
    p.call_kfunc(ct.release)  # the verifier wants every reference the lookup took back
    p.load(8, R2, R10, CT_STATUS)
    p.alu("&", R2, IPS_ASSURED)
    p.jump_if(R2, "==", 0, "pass")


def _ipv6(p: Program, pods6: Pods6 | None, uplinks: list[int], bridge: int,
          switched_by: str | None, overlay: Overlay | None, ct: Conntrack | None) -> None:
    """IPv6 as IPv4: a pod's packet for another node's pod is routed, switched or
    encapsulated past the bridge; one from another node for a pod of this node goes straight
    to the pod. Neighbour and router discovery (ICMPv6 133-137) always takes the normal path.
    Without IPv6 pods (over an IPv6 underlay) only what arrives on the underlay, for
    `decap6`. Defines `ipv6` (from the program's start, r2 the EtherType), `inbound6` and
    `deliver6`; jumps to `pass`, `decap6` and `drop`."""
    decap = overlay is not None and overlay.encap.outer is V6
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
    if pods6 is None:
        p.jump("pass")
        p.label("inbound6")
        p.jump("decap6")
        return

    _lookup(p, pods6.map_fd, V6, IP6_SRC)
    _sent_by_its_pod(p, ct, V6)
    _in_prefix6(p, IP6_DST, pods6.cluster)
    _lookup(p, pods6.map_fd, V6, IP6_DST)
    p.jump_if(R0, "!=", 0, "pass")  # a pod of this node: the bridge's to switch
    if switched_by is not None:
        _switch_out(p, uplinks[0], switched_by, "6")
    else:
        if overlay is not None and 6 in overlay.tunnels:
            _encap_out(p, overlay.encap, overlay.tunnels[6], V6, uplinks[0])
        _route_out6(p, bridge)

    p.label("inbound6")
    _lookup(p, pods6.map_fd, V6, IP6_DST)
    if switched_by is not None:
        p.jump_if(R0, "==", 0, "pass")
        _switch_in(p, ct, V6)
        return
    p.jump_if(R0, "==", 0, "decap6" if decap else "pass")
    _judged(p, ct, V6, 0, "in6")
    p.load(4, R2, R6, SKB_PKT_TYPE)
    p.jump_if(R2, "!=", PACKET_HOST, "pass")  # another host's: not ours to route
    p.load(1, R2, R7, IP6_HOPS)
    p.jump_if(R2, "<=", 1, "pass")
    p.label("deliver6")  # r0: the pod's map entry
    _decrement_hops6(p)
    _to_pod(p)


def _decrement_hops6(p: Program, at: int = 0) -> None:
    """Hop limit - 1 (IPv6 has no header checksum to mend) of the header `at` bytes further
    than a plain frame's."""
    p.load(1, R2, R7, IP6_HOPS + at)
    p.alu("-", R2, 1)
    p.store(1, R7, IP6_HOPS + at, R2)


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
    label as the route's flowinfo; the hop limit, which has no checksum, taken down by one).
    Defines `route_out6`, where an encapsulation leaves what it does not take."""
    p.label("route_out6")
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
    _decrement_hops6(p)
    _send_to_next_hop(p)


# -- the overlay ---------------------------------------------------------------------------------
def _encap_out(p: Program, encap: Encap, tunnel_fd: int, inner: Family, underlay: int) -> None:
    """A pod's packet (of family `inner`) for a subnet behind a tunnel: put the VXLAN headers
    in front, send it out of the underlay. Otherwise on to `route_out` (a peer routed
    directly; a packet the device must take).

    Registers: r6 the skb, r7/r8 its data and end (reloaded after the headers grow), r9 the
    peer's tunnel map value (VTEP MAC, node IP); r0-r5 scratch. The headers are built at HDR
    on the stack (r10), then copied in front of the inner packet. Jumps to `route_out<tag>`
    (defined next, by the routing code), `pass` and `drop` (the program's); defines the label
    of `_checksummed`."""
    other = "route_out" + inner.tag
    _lookup(p, tunnel_fd, inner, inner.dst, encap.mask(inner.version))
    p.jump_if(R0, "==", 0, other)
    if encap.outer is V6:
        # A super-packet's segments over IPv6 need their own UDP checksums, which the
        # kernel's UDP tunnel segmentation computes only for the device's (UDP_TUNNEL_CSUM).
        p.load(4, R2, R6, SKB_GSO_SIZE)
        p.jump_if(R2, "!=", 0, other)
    else:  # a super-packet whose outer length would not fit its 16 bits: the device's
        p.load(4, R2, R6, SKB_LEN)
        p.jump_if(R2, ">", 0xFFFF + ETH_LEN - encap.length, other)
    p.load(1, R2, R7, inner.hops)
    p.jump_if(R2, "<=", 1, "pass")
    if encap.outer is V6:
        _checksummed(p, inner, other)
    p.mov(R9, R0)  # the peer: VTEP MAC, node IP
    _inner_tos(p, inner)
    if encap.outer is V4:
        _outer_ipv4(p, encap)
    else:
        _outer_ipv6(p, encap)
    _outer_udp_vxlan(p, encap)
    _inner_ethernet(p, encap, inner)
    _push_and_send(p, encap, inner, underlay)


def _checksummed(p: Program, inner: Family, other: str) -> None:
    """On where the outer UDP checksum over IPv6 (which a receiving device checks) can be had
    from the headers alone: the inner packet's transport checksum covers the rest of it, so
    that part sums to the complement of the inner pseudo-header (`_udp6_checksum`). That holds
    for TCP, UDP with a checksum and ICMP(v6) in an unfragmented packet without options or
    extension headers; any other goes to `other`, the device's way. Defines
    `checksummed<tag>`."""
    ok = "checksummed" + inner.tag
    if inner is V4:
        p.load(1, R2, R7, ETH_LEN)
        p.jump_if(R2, "!=", 0x45, other)
        p.load(2, R2, R7, IP_FRAG)
        p.alu("&", R2, _le(b"\x3f\xff"))
        p.jump_if(R2, "!=", 0, other)
    p.load(1, R2, R7, inner.proto)
    p.jump_if(R2, "==", socket.IPPROTO_TCP, ok)
    p.jump_if(R2, "==", socket.IPPROTO_ICMP if inner is V4 else socket.IPPROTO_ICMPV6, ok)
    p.jump_if(R2, "!=", socket.IPPROTO_UDP, other)
    if inner is V4:  # UDP over IPv4 may go without a checksum
        p.mov(R2, R7)
        p.alu("+", R2, FRAME_MIN + 8)
        p.jump_if_reg(R2, ">", R8, other)
        p.load(2, R2, R7, FRAME_MIN + 6)
        p.jump_if(R2, "==", 0, other)
    p.label(ok)


def _inner_tos(p: Program, inner: Family) -> None:
    """r2 = the inner packet's TOS (IPv4) or traffic class (IPv6), which the outer header
    copies as the device does."""
    if inner is V4:
        p.load(1, R2, R7, IP_TOS)
        return
    p.load(1, R2, R7, ETH_LEN)
    p.alu("&", R2, 0x0F)
    p.alu("<<", R2, 4)
    p.load(1, R3, R7, ETH_LEN + 1)
    p.alu(">>", R3, 4)
    p.alu_reg("|", R2, R3)


def _outer_ipv4(p: Program, encap: Encap) -> None:
    """The outer IPv4 header at HDR: no options, DF, TTL 64, UDP, the inner TOS (r2), this
    node to the peer (r9), and its checksum."""
    h, local = HDR, _le(encap.local.packed)
    p.store_imm(1, R10, h, 0x45)
    p.store(1, R10, h + 1, R2)
    _store_length(p, h + 2, encap.length - ETH_LEN)
    p.store_imm(4, R10, h + 4, _le(bytes([0, 0, 0x40, 0])))
    p.store_imm(4, R10, h + 8, _le(bytes([64, socket.IPPROTO_UDP, 0, 0])))
    p.store_imm(4, R10, h + 12, local)
    p.load(4, R2, R9, TUNNEL_IP)
    p.store(4, R10, h + 16, R2)
    # Its checksum: the one's complement sum of its 16-bit words (byte order does not change
    # such a sum: the words are added as loaded).
    p.mov_imm(R0, 0)
    _sum(p, R10, h, h + 20)
    _fold(p)
    p.alu("^", R0, 0xFFFF)
    p.store(2, R10, h + 10, R0)


def _outer_ipv6(p: Program, encap: Encap) -> None:
    """The outer IPv6 header at HDR: the inner traffic class (r2), no flow label, hop limit
    64, UDP, this node to the peer (r9)."""
    h = HDR
    p.mov(R3, R2)
    p.alu(">>", R3, 4)
    p.alu("|", R3, 0x60)
    p.store(1, R10, h, R3)
    p.alu("&", R2, 0x0F)
    p.alu("<<", R2, 4)
    p.store(1, R10, h + 1, R2)
    p.store_imm(2, R10, h + 2, 0)
    _store_length(p, h + 4, encap.length - ETH_LEN - V6.header)
    p.store_imm(2, R10, h + 6, _le(bytes([socket.IPPROTO_UDP, 64])))
    local = encap.local.packed
    for off in range(0, 16, 4):
        p.store_imm(4, R10, h + 8 + off, _le(local[off:off + 4]))
        p.load(4, R2, R9, TUNNEL_IP + off)
        p.store(4, R10, h + 24 + off, R2)


def _outer_udp_vxlan(p: Program, encap: Encap) -> None:
    """UDP after the outer IP header at HDR, then VXLAN: the source port picked from the
    device's range by the flow's hash (the socket's, or the kernel's flow dissector's) as the
    device picks it (`udp_flow_src_port`): a flow whose packets the device sends in part (over
    IPv6 its super-packets) keeps one outer port, one path through the underlay's ECMP and
    one receive queue; checksum zero (over IPv6 `_udp6_checksum` sets it once the packet is
    whole); the VNI. r0-r5 are the helper's; r6-r9 and the packet pointers are kept."""
    h = HDR + encap.outer.header
    low, high = encap.source_ports
    p.mov(R1, R6)
    p.call(GET_HASH_RECALC)
    p.mov(R2, R0)
    p.alu("<<", R2, 16)
    p.alu_reg("^", R0, R2)
    p.alu32("|", R0, 0)  # hash ^= hash << 16, in 32 bits
    p.alu("*", R0, high - low)
    p.alu(">>", R0, 32)
    p.alu("+", R0, low)
    p.to_be16(R0)
    p.store(2, R10, h, R0)
    p.store_imm(2, R10, h + 2, _raw16(encap.port))
    _store_length(p, h + 4, encap.length - ETH_LEN - encap.outer.header)
    p.store_imm(2, R10, h + 6, 0)
    p.store_imm(4, R10, h + 8, VXLAN_FLAG_VNI)
    p.store_imm(4, R10, h + 12, encap.vni_word)


def _inner_ethernet(p: Program, encap: Encap, inner: Family) -> None:
    """The inner Ethernet header, last of the headers at HDR: to the peer's VTEP MAC (r9; its
    device takes it, should it decapsulate), from this node's."""
    h = HDR + encap.length - ETH_LEN
    p.load(4, R2, R9, TUNNEL_MAC)
    p.store(4, R10, h, R2)
    p.load(2, R2, R9, TUNNEL_MAC + 4)
    p.store(2, R10, h + 4, R2)
    mac = codec.mac(encap.mac)
    p.store_imm(2, R10, h + 6, _le(mac[:2]))
    p.store_imm(4, R10, h + 8, _le(mac[2:]))
    p.store_imm(2, R10, h + 12, inner.ethertype)


def _push_and_send(p: Program, encap: Encap, inner: Family, underlay: int) -> None:
    """Grow the packet after its Ethernet header by the headers at HDR (flagged as a UDP
    tunnel, so that checksum offload finds the inner headers), write them, take the inner
    TTL (hop limit) down, complete an IPv6 UDP checksum, and send the packet out of the
    underlay, whose neighbour the kernel resolves. Ends the program's run; jumps to `pass` (no
    room) or `drop` (grown but not written)."""
    length = encap.length
    p.mov(R1, R6)
    p.mov_imm(R2, length)
    p.mov_imm(R3, ADJ_ROOM_MAC)
    p.mov_imm(R4, ETH_LEN)
    p.alu("<<", R4, 56)
    p.alu("|", R4, ENCAP_L3[encap.outer.version] | ENCAP_FLAGS)
    p.call(SKB_ADJUST_ROOM)
    p.jump_if(R0, "!=", 0, "pass")  # refused (too long for the room): the device's to do
    p.mov(R1, R6)
    p.mov_imm(R2, ETH_LEN)
    p.mov(R3, R10)
    p.alu("+", R3, HDR)
    p.mov_imm(R4, length)
    p.mov_imm(R5, 0)
    p.call(SKB_STORE_BYTES)
    p.jump_if(R0, "!=", 0, "drop")  # grown but not written: no packet to pass on
    _reload(p, ETH_LEN + length + inner.header, "drop")
    if inner is V4:
        _decrement_ttl(p, "encap", length)
    else:
        _decrement_hops6(p, length)
    if encap.outer is V6:
        _udp6_checksum(p, encap, inner)
    # The outer Ethernet header: the kernel routes the outer destination out of the underlay.
    p.mov_imm(R1, underlay)
    p.mov_imm(R2, 0)
    p.mov_imm(R3, 0)
    p.mov_imm(R4, 0)
    p.call(REDIRECT_NEIGH)
    p.exit()


def _udp6_checksum(p: Program, encap: Encap, inner: Family) -> None:
    """The outer UDP checksum of a packet encapsulated over IPv6, from its headers alone, as
    the kernel's local checksum offload does: the outer pseudo-header, UDP, VXLAN, the inner
    Ethernet and IP headers, and the inner transport segment, whose own checksum makes it sum
    to the complement of the inner pseudo-header (nothing for ICMP, which has none). That
    holds whether the inner checksum is complete or still to be filled in by offload
    (`_checksummed` let only such packets here)."""
    udp = ETH_LEN + V6.header
    at = ETH_LEN + encap.length  # the inner IP header
    p.mov_imm(R0, 0)
    _sum(p, R7, IP6_SRC, IP6_SRC + 32)  # pseudo-header: addresses,
    p.load(2, R2, R7, udp + 4)  # the UDP length,
    p.alu_reg("+", R0, R2)
    p.alu("+", R0, _le(bytes([0, socket.IPPROTO_UDP])))  # the next header
    _sum(p, R7, udp, at + inner.header)  # UDP (checksum 0), VXLAN, inner headers
    # The inner pseudo-header (addresses, transport length, protocol), taken off.
    summed = "udp6_summed" + inner.tag
    p.load(1, R2, R7, at + (9 if inner is V4 else 6))
    if inner is V4:
        p.jump_if(R2, "==", socket.IPPROTO_ICMP, summed)
    p.alu("<<", R2, 8)  # [0, protocol] as loaded
    p.mov(R4, R0)
    p.mov(R0, R2)
    _sum(p, R7, at + inner.src - ETH_LEN, at + inner.src - ETH_LEN + 2 * inner.addr_len)
    if inner is V4:  # the total length less the header's 20 bytes
        p.load(2, R2, R7, at + 2)
        p.to_be16(R2)
        p.alu("-", R2, V4.header)
        p.to_be16(R2)
    else:  # the payload length (no extension headers)
        p.load(2, R2, R7, at + 4)
    p.alu_reg("+", R0, R2)
    _fold(p)
    p.alu("^", R0, 0xFFFF)
    p.alu_reg("+", R0, R4)
    p.label(summed)
    _fold(p)
    p.alu("^", R0, 0xFFFF)
    p.jump_if(R0, "!=", 0, "udp6_csum" + inner.tag)
    p.mov_imm(R0, 0xFFFF)  # a computed zero is sent as all ones (RFC 768)
    p.label("udp6_csum" + inner.tag)
    p.store(2, R7, udp + 6, R0)


def _sum(p: Program, base: int, start: int, end: int) -> None:
    """r0 += the bytes at base + [start, end) as 32-bit words (16-bit for an even tail), as
    loaded: `_fold` turns it into their one's complement sum."""
    off = start
    while off < end:
        size = 4 if end - off >= 4 else 2
        p.load(size, R2, base, off)
        p.alu_reg("+", R0, R2)
        off += size


def _fold(p: Program) -> None:
    """r0 folded to 16 bits, end-around carries added (three folds cover the at most 2^40
    the sums here reach)."""
    for _ in range(3):
        p.mov(R2, R0)
        p.alu(">>", R2, 16)
        p.alu("&", R0, 0xFFFF)
        p.alu_reg("+", R0, R2)


def _decap_in(p: Program, overlay: Overlay, pod_maps: dict[int, int], underlay: int,
              ct: Conntrack | None) -> None:
    """VXLAN from a peer, to this node, for one of its pods: take the outer headers off and
    deliver the inner packet as `_route_in` does. Defines `decap<outer tag>` (reached from
    `inbound`/`inbound6` when the outer destination is no pod) and `inner<outer tag>_<v>`;
    r9 holds the arrival device, then the pod's entry; jumps to `pass`, `drop` and
    `deliver`/`deliver6`."""
    encap = overlay.encap
    outer, length = encap.outer, encap.length
    udp = ETH_LEN + outer.header
    p.label("decap" + outer.tag)
    p.jump_if(R9, "!=", underlay, "pass")
    p.mov(R2, R7)
    p.alu("+", R2, ETH_LEN + length)
    p.jump_if_reg(R2, ">", R8, "pass")
    checks = [(1, outer.proto, socket.IPPROTO_UDP), (2, udp + 2, _raw16(encap.port)),
              (4, udp + 8, VXLAN_FLAG_VNI), (4, udp + 12, encap.vni_word)]
    checks += [(4, outer.dst + off, _le(encap.local.packed[off:off + 4]))
               for off in range(0, outer.addr_len, 4)]
    if outer is V4:
        checks.append((1, ETH_LEN, 0x45))
    for size, off, want in checks:
        p.load(size, R2, R7, off)
        p.jump32_if(R2, "!=", want, "pass")
    if outer is V4:
        p.load(2, R2, R7, IP_FRAG)
        p.alu("&", R2, _le(b"\x3f\xff"))  # a fragment is the kernel's to reassemble
        p.jump_if(R2, "!=", 0, "pass")
    p.load(4, R2, R6, SKB_PKT_TYPE)
    p.jump_if(R2, "!=", PACKET_HOST, "pass")
    families = [FAMILY[f] for f in sorted(pod_maps) if f in overlay.tunnels]
    p.load(2, R2, R7, ETH_LEN + length - 2)  # the inner EtherType
    for inner in families:
        p.jump_if(R2, "==", inner.ethertype, f"inner{outer.tag}_{inner.version}")
    p.jump("pass")
    for inner in families:
        p.label(f"inner{outer.tag}_{inner.version}")
        p.mov(R2, R7)
        p.alu("+", R2, ETH_LEN + length + inner.header)
        p.jump_if_reg(R2, ">", R8, "pass")
        p.load(1, R2, R7, inner.hops + length)
        p.jump_if(R2, "<=", 1, "pass")
        # The inner source must be a pod of the node that sent it (the outer source), as
        # the normal path accepts VXLAN from known nodes only.
        _lookup(p, overlay.tunnels[inner.version], inner, inner.src + length,
                encap.mask(inner.version))
        p.jump_if(R0, "==", 0, "pass")
        for off in range(0, outer.addr_len, 4):
            p.load(4, R2, R0, TUNNEL_IP + off)
            p.load(4, R3, R7, outer.src + off)
            p.jump_if_reg(R2, "!=", R3, "pass")
        _lookup(p, pod_maps[inner.version], inner, inner.dst + length)
        p.jump_if(R0, "==", 0, "pass")
        # before the headers come off: the device's way keeps its checks
        _judged(p, ct, inner, length, f"decap{outer.tag}_{inner.version}")
        p.mov(R9, R0)
        p.mov(R1, R6)
        p.mov_imm(R2, -length)
        p.mov_imm(R3, ADJ_ROOM_MAC)
        p.mov_imm(R4, DECAP_L3[inner.version] | FIXED_GSO)
        p.call(SKB_ADJUST_ROOM)
        p.jump_if(R0, "!=", 0, "pass")  # refused (a super-packet not of TCP): the device's
        _reload(p, ETH_LEN + inner.header, "drop")
        p.store_imm(2, R7, ETH_PROTO, inner.ethertype)  # the outer family's until now
        p.mov(R0, R9)
        p.jump("deliver" + inner.tag)


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
    Jumps to `pass` where the normal path must act (no route, the bridge's, TTL 1). Defines
    `route_out`, where an encapsulation leaves what it does not take."""
    p.label("route_out")
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


def _route_in(p: Program, ct: Conntrack | None) -> None:
    """From another node, for a pod of this one (r0: its pod map entry): rewrite the MACs to
    the pod's and the host veth's, TTL - 1, and hand it to the pod's side of the veth.
    Defines `deliver`, also the decapsulated packets' way in; jumps to `pass`."""
    _judged(p, ct, V4, 0, "in")
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
    _veth(p)
    p.mov(R1, R9)
    p.mov_imm(R2, 0)
    p.call(REDIRECT_PEER)
    p.exit()


def _veth(p: Program) -> None:
    """r9 = the host veth of the pod of entry r0 (without the POLICED bit)."""
    p.load(4, R9, R0, 0)
    p.alu32("&", R9, POLICED - 1)


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


def _switch_in(p: Program, ct: Conntrack | None, family: Family) -> None:
    """l2: a frame from the uplink addressed to a pod of this node (r0: its entry) goes
    straight to the pod; jumps to `pass` for any other."""
    _judged(p, ct, family, 0, "switched" + family.tag)
    p.load(4, R2, R7, 0)  # only a frame addressed to that pod's MAC
    p.load(4, R3, R0, 4)
    p.jump_if_reg(R2, "!=", R3, "pass")
    p.load(2, R2, R7, 4)
    p.load(2, R3, R0, 8)
    p.jump_if_reg(R2, "!=", R3, "pass")
    _veth(p)
    # The uplink is a promiscuous bridge port: the frame was "another host's" to it.
    p.mov(R1, R6)
    p.mov_imm(R2, PACKET_HOST)
    p.call(SKB_CHANGE_TYPE)
    p.mov(R1, R9)
    p.mov_imm(R2, 0)
    p.call(REDIRECT_PEER)
    p.exit()


def _lookup(p: Program, map_fd: int, family: Family, field: int,
            mask: bytes | None = None) -> None:
    """r0 = the map's value for the family's address at `field` (masked to a subnet's
    network address by `mask`), or 0. The key is built at KEY (IPv4) or KEY6 (IPv6)."""
    key = KEY if family is V4 else KEY6
    for off in range(0, family.addr_len, 4):
        word = b"\xff" * 4 if mask is None else mask[off:off + 4]
        if word == bytes(4):
            p.store_imm(4, R10, key + off, 0)
            continue
        p.load(4, R2, R7, field + off)
        if word != b"\xff" * 4:
            p.alu32("&", R2, _le(word))
        p.store(4, R10, key + off, R2)
    p.load_map_fd(R1, map_fd)
    p.mov(R2, R10)
    p.alu("+", R2, key)
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
