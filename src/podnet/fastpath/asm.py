"""A small eBPF assembler: the fast path's one program is written here in Python, so podnet needs
no compiler, no ELF loader and no object file on the node.

Each instruction is the kernel's `struct bpf_insn` (8 bytes: opcode, dst/src registers, a 16-bit
offset, a 32-bit immediate). Jumps name labels; `assemble` resolves them to offsets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Instruction classes, sizes, modes, operations and sources (linux/bpf_common.h, linux/bpf.h).
LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
LD_IMM64 = 0x18
SIZES = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}
MEM = 0x60
K, X = 0x00, 0x08
ALU_OPS = {"+": 0x00, "-": 0x10, "*": 0x20, "|": 0x40, "&": 0x50, "<<": 0x60, ">>": 0x70, "^": 0xA0,
           "mov": 0xB0, "end": 0xD0}
JMP_OPS = {"==": 0x10, ">": 0x20, ">=": 0x30, "!=": 0x50, "<": 0xA0, "<=": 0xB0}
JA, CALL, EXIT = 0x00, 0x80, 0x90
PSEUDO_MAP_FD = 1
PSEUDO_KFUNC_CALL = 2  # a call's immediate is a kernel function's BTF id
TO_BE = 0x08

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

INSN = struct.Struct("<BBhi")


@dataclass(frozen=True)
class Insn:
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: str | None = None  # a label to jump to; resolved into off

    def pack(self, off: int) -> bytes:
        return INSN.pack(self.code, (self.src << 4) | self.dst, off, self.imm)


class Program:
    """Instructions and labels, appended in order."""

    def __init__(self) -> None:
        self.insns: list[Insn] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        if name in self.labels:
            raise ValueError(f"label {name} defined twice")
        self.labels[name] = len(self.insns)

    def _emit(self, insn: Insn) -> None:
        self.insns.append(insn)

    # -- data movement -------------------------------------------------------------------------
    def mov(self, dst: int, src: int) -> None:
        self._emit(Insn(ALU64 | ALU_OPS["mov"] | X, dst, src))

    def mov_imm(self, dst: int, imm: int) -> None:
        self._emit(Insn(ALU64 | ALU_OPS["mov"] | K, dst, imm=_s32(imm)))

    def load(self, size: int, dst: int, src: int, off: int) -> None:
        """dst = *(size *)(src + off)"""
        self._emit(Insn(LDX | MEM | SIZES[size], dst, src, off))

    def store(self, size: int, dst: int, off: int, src: int) -> None:
        """*(size *)(dst + off) = src"""
        self._emit(Insn(STX | MEM | SIZES[size], dst, src, off))

    def store_imm(self, size: int, dst: int, off: int, imm: int) -> None:
        self._emit(Insn(ST | MEM | SIZES[size], dst, 0, off, _s32(imm)))

    def load_map_fd(self, dst: int, fd: int) -> None:
        """dst = the map behind fd (a two-slot instruction the kernel rewrites to the map)."""
        self._emit(Insn(LD_IMM64, dst, PSEUDO_MAP_FD, imm=fd))
        self._emit(Insn(0))

    # -- arithmetic ----------------------------------------------------------------------------
    def alu(self, op: str, dst: int, imm: int) -> None:
        """64-bit dst op= imm (imm sign-extended, as the instruction set defines)."""
        self._emit(Insn(ALU64 | ALU_OPS[op] | K, dst, imm=_s32(imm)))

    def alu32(self, op: str, dst: int, imm: int) -> None:
        """32-bit dst op= imm: the upper half is zeroed, no sign extension leaks in."""
        self._emit(Insn(ALU | ALU_OPS[op] | K, dst, imm=_s32(imm)))

    def alu_reg(self, op: str, dst: int, src: int) -> None:
        self._emit(Insn(ALU64 | ALU_OPS[op] | X, dst, src))

    def to_be16(self, dst: int) -> None:
        """Byte-swap the low 16 bits to network order (a no-op on big-endian hosts)."""
        self._emit(Insn(ALU | ALU_OPS["end"] | TO_BE, dst, imm=16))

    # -- control flow --------------------------------------------------------------------------
    def jump(self, target: str) -> None:
        self._emit(Insn(JMP | JA, target=target))

    def jump_if(self, dst: int, op: str, imm: int, target: str) -> None:
        """64-bit compare with a sign-extended immediate."""
        self._emit(Insn(JMP | JMP_OPS[op] | K, dst, imm=_s32(imm), target=target))

    def jump32_if(self, dst: int, op: str, imm: int, target: str) -> None:
        """Compare the low 32 bits with imm (for addresses, whose top bit is data)."""
        self._emit(Insn(JMP32 | JMP_OPS[op] | K, dst, imm=_s32(imm), target=target))

    def jump_if_reg(self, dst: int, op: str, src: int, target: str) -> None:
        self._emit(Insn(JMP | JMP_OPS[op] | X, dst, src, target=target))

    def call(self, helper: int) -> None:
        self._emit(Insn(JMP | CALL, imm=helper))

    def call_kfunc(self, btf_id: int) -> None:
        """Call a kernel function exported to programs, named by its id in vmlinux's BTF."""
        self._emit(Insn(JMP | CALL, src=PSEUDO_KFUNC_CALL, imm=btf_id))

    def exit(self) -> None:
        self._emit(Insn(JMP | EXIT))

    def assemble(self) -> bytes:
        out = bytearray()
        for pos, insn in enumerate(self.insns):
            off = insn.off
            if insn.target is not None:
                if insn.target not in self.labels:
                    raise ValueError(f"jump to undefined label {insn.target}")
                off = self.labels[insn.target] - pos - 1
            out += insn.pack(off)
        return bytes(out)


def _s32(value: int) -> int:
    """An immediate as the signed 32 bits the instruction holds (0xffffffff -> -1)."""
    if not -(1 << 31) <= value < (1 << 32):
        raise ValueError(f"immediate {value} does not fit 32 bits")
    return value - (1 << 32) if value >= (1 << 31) else value
