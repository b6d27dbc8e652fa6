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

Everything else (ARP, pods of this node, the node itself, the world, a TTL about to expire,
a route the program cannot use) passes to the normal path unchanged: the fast path only ever
skips hops the normal path would take to the same place.
"""

from __future__ import annotations

import ipaddress
import socket

from podnet.fastpath.asm import R0, R1, R2, R3, R4, R6, R7, R8, R9, R10, Program
from podnet.netlink import rtmsg

# struct __sk_buff offsets (linux/bpf.h)
SKB_PKT_TYPE, SKB_IFINDEX, SKB_DATA, SKB_DATA_END = 4, 40, 76, 80
# Ethernet and IPv4 header offsets in the frame
ETH_SRC, ETH_PROTO, IP_TOS, IP_TTL, IP_PROTO, IP_CHECK, IP_SRC, IP_DST = 6, 12, 15, 22, 23, 24, \
    26, 30
FRAME_MIN = 34  # Ethernet + the fixed IPv4 header
ETH_P_IP_RAW = 0x0008  # 0x0800 as a little-endian load of network-order bytes reads it
PACKET_HOST = 0
# helpers (linux/bpf.h's __BPF_FUNC_MAPPER order)
MAP_LOOKUP_ELEM, REDIRECT, SKB_CHANGE_TYPE, FIB_LOOKUP, REDIRECT_NEIGH, REDIRECT_PEER = \
    1, 23, 32, 69, 152, 155
FIB_LOOKUP_SKIP_NEIGH = 4  # the neighbour is bpf_redirect_neigh's to resolve, with its states
TC_ACT_OK = 0
# the pod map's value: host veth ifindex (u32), pod MAC, host veth MAC
VALUE_SIZE = 16
# stack: fib lookup parameters (64 bytes) at -64; redirect_neigh's next hop (20) at -88
FIB, NH, KEY = -64, -88, -4
FIB_FAMILY, FIB_PROTO, FIB_IFINDEX, FIB_TOS, FIB_SRC, FIB_DST = 0, 1, 8, 12, 16, 32


def _raw32(ip: ipaddress.IPv4Address) -> int:
    """An address as the program reads it from a packet: network-order bytes, loaded native."""
    return int.from_bytes(ip.packed, "little")


def build(map_fd: int, uplinks: list[int], bridge: int, cluster: ipaddress.IPv4Network,
          switched_by: str | None = None) -> bytes:
    p = Program()
    p.mov(R6, R1)
    p.load(4, R7, R6, SKB_DATA)
    p.load(4, R8, R6, SKB_DATA_END)
    p.mov(R2, R7)
    p.alu("+", R2, FRAME_MIN)
    p.jump_if_reg(R2, ">", R8, "pass")
    p.load(2, R2, R7, ETH_PROTO)
    p.jump_if(R2, "!=", ETH_P_IP_RAW, "pass")
    p.load(4, R9, R6, SKB_IFINDEX)
    for index in uplinks:
        p.jump_if(R9, "==", index, "inbound")

    # -- from a pod on this node's veth (r9 = that veth) --------------------------------------
    _lookup(p, map_fd, IP_SRC)
    p.jump_if(R0, "==", 0, "pass")
    p.load(4, R2, R0, 0)
    p.jump_if_reg(R2, "!=", R9, "pass")  # that address belongs to another pod's port
    p.load(4, R2, R7, ETH_SRC)
    p.load(4, R3, R0, 4)
    p.jump_if_reg(R2, "!=", R3, "pass")
    p.load(2, R2, R7, ETH_SRC + 4)
    p.load(2, R3, R0, 8)
    p.jump_if_reg(R2, "!=", R3, "pass")
    p.load(4, R2, R7, IP_DST)
    p.alu32("&", R2, _raw32(cluster.netmask))
    p.jump32_if(R2, "!=", _raw32(cluster.network_address), "pass")
    _lookup(p, map_fd, IP_DST)
    p.jump_if(R0, "!=", 0, "pass")  # a pod of this node: the bridge's to switch
    if switched_by is not None:
        _switch_out(p, uplinks[0], switched_by)
    else:
        _route_out(p, bridge)

    # -- from another node, for a pod of this one ------------------------------------------------
    p.label("inbound")
    _lookup(p, map_fd, IP_DST)
    p.jump_if(R0, "==", 0, "pass")
    if switched_by is not None:
        _switch_in(p)
    else:
        _route_in(p)

    p.label("pass")
    p.mov_imm(R0, TC_ACT_OK)
    p.exit()
    return p.assemble()


def _route_out(p: Program, bridge: int) -> None:
    p.load(1, R2, R7, IP_TTL)
    p.jump_if(R2, "<=", 1, "pass")  # the normal path sends the time-exceeded error
    p.mov_imm(R1, 0)
    for off in range(FIB, 0, 8):
        p.store(8, R10, off, R1)
    p.store_imm(1, R10, FIB + FIB_FAMILY, socket.AF_INET)
    for src, dst, size in ((IP_PROTO, FIB_PROTO, 1), (IP_TOS, FIB_TOS, 1),
                           (IP_SRC, FIB_SRC, 4), (IP_DST, FIB_DST, 4)):
        p.load(size, R2, R7, src)
        p.store(size, R10, FIB + dst, R2)
    # As if the packet arrived on the bridge, where the normal path routes it.
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
    _decrement_ttl(p, "out")
    p.mov_imm(R1, 0)
    for off in range(NH, FIB, 8):
        p.store(8, R10, off, R1)
    p.store_imm(4, R10, NH, socket.AF_INET)
    p.load(4, R2, R10, FIB + FIB_DST)  # the lookup left the next hop there
    p.store(4, R10, NH + 4, R2)
    p.mov(R1, R9)
    p.mov(R2, R10)
    p.alu("+", R2, NH)
    p.mov_imm(R3, 20)
    p.mov_imm(R4, 0)
    p.call(REDIRECT_NEIGH)
    p.exit()


def _route_in(p: Program) -> None:
    p.load(4, R2, R6, SKB_PKT_TYPE)
    p.jump_if(R2, "!=", PACKET_HOST, "pass")  # another host's: not ours to route
    p.load(1, R2, R7, IP_TTL)
    p.jump_if(R2, "<=", 1, "pass")
    for src, dst, size in ((4, 0, 4), (8, 4, 2), (10, 6, 2), (12, 8, 4)):  # MACs
        p.load(size, R2, R0, src)
        p.store(size, R7, dst, R2)
    p.load(4, R9, R0, 0)
    _decrement_ttl(p, "in")
    p.mov(R1, R9)
    p.mov_imm(R2, 0)
    p.call(REDIRECT_PEER)
    p.exit()


def _switch_out(p: Program, uplink: int, bridge_mac: str) -> None:
    raw = rtmsg._mac(bridge_mac)
    p.load(1, R2, R7, 0)
    p.alu("&", R2, 1)
    p.jump_if(R2, "!=", 0, "pass")  # broadcast, multicast: every port's
    p.load(4, R2, R7, 0)
    p.jump32_if(R2, "!=", int.from_bytes(raw[:4], "little"), "to_uplink")
    p.load(2, R2, R7, 4)
    p.jump_if(R2, "==", int.from_bytes(raw[4:], "little"), "pass")  # to the bridge (gateway)
    p.label("to_uplink")
    p.mov_imm(R1, uplink)
    p.mov_imm(R2, 0)
    p.call(REDIRECT)
    p.exit()


def _switch_in(p: Program) -> None:
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
    p.store(4, R10, KEY, R2)
    p.load_map_fd(R1, map_fd)
    p.mov(R2, R10)
    p.alu("+", R2, KEY)
    p.call(MAP_LOOKUP_ELEM)


def _decrement_ttl(p: Program, tag: str) -> None:
    """TTL - 1 with the header checksum updated incrementally, as the kernel's
    ip_decrease_ttl does (the TTL is the high byte of its 16-bit word, so the sum grows by
    0x0100 in network order: 1 in this little-endian load)."""
    p.load(1, R2, R7, IP_TTL)
    p.alu("-", R2, 1)
    p.store(1, R7, IP_TTL, R2)
    p.load(2, R2, R7, IP_CHECK)
    p.alu("+", R2, 1)
    p.jump_if(R2, "<", 0xFFFF, f"csum_{tag}")
    p.alu("+", R2, 1)
    p.label(f"csum_{tag}")
    p.store(2, R7, IP_CHECK, R2)
