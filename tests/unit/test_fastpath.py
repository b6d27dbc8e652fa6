"""The fast path's pure parts: instruction encoding, the program's constants, the pod map's
layout, and tc messages as pyroute2's parser reads them."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from podnet.fastpath import asm, program
from podnet.fastpath.podmap import PodEntry
from podnet.netlink import codec, tc


def test_instructions_encode_as_the_kernel_defines_them() -> None:
    p = asm.Program()
    p.mov(asm.R6, asm.R1)
    p.load(4, asm.R7, asm.R6, 76)
    p.store_imm(1, asm.R10, -64, 2)
    p.mov_imm(asm.R0, 0)
    p.exit()
    code = p.assemble()
    assert code == bytes.fromhex(
        "bf16000000000000"  # r6 = r1
        "61674c0000000000"  # r7 = *(u32 *)(r6 + 76)
        "720ac0ff02000000"  # *(u8 *)(r10 - 64) = 2
        "b700000000000000"  # r0 = 0
        "9500000000000000")  # exit


def test_jumps_resolve_labels_both_ways() -> None:
    p = asm.Program()
    p.label("top")
    p.jump_if(asm.R2, "!=", 8, "end")
    p.mov_imm(asm.R0, 1)
    p.jump("top")
    p.label("end")
    p.exit()
    code = p.assemble()
    insns = [asm.INSN.unpack_from(code, i) for i in range(0, len(code), 8)]
    assert insns[0] == (0x55, 0x02, 2, 8)  # skip the two that follow
    assert insns[2][2] == -3  # back to the first


def test_map_fd_load_takes_two_slots() -> None:
    p = asm.Program()
    p.load_map_fd(asm.R1, 7)
    code = p.assemble()
    assert len(code) == 16
    assert code[:8] == bytes.fromhex("1811000007000000")


def test_immediates_are_signed_32_bits() -> None:
    p = asm.Program()
    p.alu32("&", asm.R2, 0xFFFFFFFF)
    assert asm.INSN.unpack(p.assemble())[3] == -1
    with pytest.raises(ValueError):
        p.alu("+", asm.R2, 1 << 32)


def test_undefined_and_duplicate_labels_are_refused() -> None:
    p = asm.Program()
    p.jump("nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        p.assemble()
    p.label("x")
    with pytest.raises(ValueError, match="twice"):
        p.label("x")


def test_program_holds_the_nodes_constants() -> None:
    cluster = ipaddress.IPv4Network("10.244.0.0/16")
    code = program.build(map_fd=9, uplinks=[2, 31], bridge=4, cluster=cluster)
    insns = [asm.INSN.unpack_from(code, i) for i in range(0, len(code), 8)]
    imms = {(op, imm) for op, _regs, _off, imm in insns}
    assert (0x15, 2) in imms and (0x15, 31) in imms  # if ifindex == uplink: inbound
    raw = int.from_bytes(cluster.netmask.packed, "little")
    assert (0x54, raw) in imms  # w2 &= netmask (network order)
    assert (0x56, int.from_bytes(cluster.network_address.packed, "little")) in imms
    assert (0x62, 4) in imms  # fib lookup as if arriving on the bridge
    calls = [imm for op, _r, _o, imm in insns if op == 0x85]
    assert program.REDIRECT_PEER in calls and program.REDIRECT_NEIGH in calls
    assert program.FIB_LOOKUP in calls
    assert any(op == 0x73 and off == program.IP_TTL for op, _r, off, _i in insns)  # TTL - 1
    assert insns[-1][0] == 0x95 and insns[-2] == (0xB7, 0, 0, program.TC_ACT_OK)
    for pos, (op, _r, off, _i) in enumerate(insns):  # every jump lands inside
        if op & 0x07 in (asm.JMP, asm.JMP32) and op not in (0x85, 0x95):
            assert 0 <= pos + 1 + off < len(insns)


def test_switched_program_forwards_frames_as_they_are() -> None:
    cluster = ipaddress.IPv4Network("10.244.0.0/16")
    code = program.build(map_fd=9, uplinks=[2], bridge=4, cluster=cluster,
                         switched_by="02:11:22:33:44:55")
    insns = [asm.INSN.unpack_from(code, i) for i in range(0, len(code), 8)]
    calls = [imm for op, _r, _o, imm in insns if op == 0x85]
    assert program.REDIRECT in calls and program.SKB_CHANGE_TYPE in calls
    assert program.FIB_LOOKUP not in calls and program.REDIRECT_NEIGH not in calls
    imms = {(op, imm) for op, _regs, _off, imm in insns}
    assert (0x56, int.from_bytes(bytes.fromhex("02112233"), "little")) in imms  # bridge MAC
    assert (0x15, int.from_bytes(bytes.fromhex("4455"), "little")) in imms
    assert (0xB7, 2) in imms  # out of uplink 2
    assert not any(op == 0x72 or (op == 0x73 and off == program.IP_TTL)
                   for op, _r, off, _i in insns)  # no TTL write: a switch makes none


def test_pod_entry_layout() -> None:
    entry = PodEntry(17, "02:00:00:00:00:01", "aa:bb:cc:dd:ee:ff")
    raw = entry.pack()
    assert len(raw) == program.VALUE_SIZE
    assert raw[:4] == struct.pack("=I", 17) and raw[4:10] == bytes.fromhex("020000000001")
    assert PodEntry.unpack(raw) == entry


def test_tc_filter_message_reads_as_pyroute2_reads_it() -> None:
    msg = tcmsg(codec.message(tc.RTM_NEWTFILTER, 0, 1, tc.filter_message(5, 42)))
    msg.decode()
    assert msg["index"] == 5 and msg["parent"] == tc.TC_H_INGRESS and msg["handle"] == 1
    assert msg["info"] == (1 << 16) | socket.htons(0x0800)
    assert msg.get_attr("TCA_KIND") == "bpf"
    opts = msg.get_attr("TCA_OPTIONS")
    assert opts.get_attr("TCA_BPF_FD") == 42
    assert opts.get_attr("TCA_BPF_NAME") == tc.FILTER_NAME
    assert opts.get_attr("TCA_BPF_FLAGS") == tc.TCA_BPF_FLAG_ACT_DIRECT
    # IPv6 pods: a second filter, for the other EtherType at the next priority.
    v6 = tcmsg(codec.message(tc.RTM_NEWTFILTER, 0, 1, tc.filter_message(5, 42, 6)))
    v6.decode()
    assert v6["info"] == (2 << 16) | socket.htons(0x86DD) and v6["handle"] == 1
    qdisc = tcmsg(codec.message(tc.RTM_NEWQDISC, 0, 1, tc.qdisc_message(5)))
    qdisc.decode()
    assert qdisc.get_attr("TCA_KIND") == "clsact" and qdisc["parent"] == tc.TC_H_CLSACT
