"""What the fast path needs to know of the running kernel's types (its BTF, in
/sys/kernel/btf/vmlinux): the ids of the conntrack functions a tc program may call (kfuncs are
named by BTF id, not by a stable number as helpers are) and where `struct nf_conn` keeps its
status. Read once per process; None where the kernel has no BTF or no conntrack built in."""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

VMLINUX = "/sys/kernel/btf/vmlinux"
HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type/str off and len
TYPE = struct.Struct("<III")  # name_off, info (vlen, kind, kind_flag), size or type
MAGIC = 0xEB9F
KIND_STRUCT, KIND_FUNC = 4, 12
# Bytes that follow struct btf_type, per kind (linux/btf.h), as a multiple of vlen or fixed.
_PER_MEMBER = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # struct, union, enum, proto,
# datasec, enum64
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}  # int, array, var, decl_tag


@dataclass(frozen=True)
class Conntrack:
    """The kernel's connection tracking as a tc program asks it: `bpf_skb_ct_lookup` and
    `bpf_ct_release` by BTF id, the size of `struct bpf_ct_opts`, and the byte offset of
    `nf_conn.status`."""
    lookup: int
    release: int
    opts_size: int
    status: int


@functools.cache
def conntrack(path: str = VMLINUX) -> Conntrack | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    found = _find(data, {"bpf_skb_ct_lookup": KIND_FUNC, "bpf_ct_release": KIND_FUNC,
                         "bpf_ct_opts": KIND_STRUCT, "nf_conn": KIND_STRUCT}, "status")
    if found is None:
        return None
    (lookup, _), (release, _), (_, opts_size), (_, status) = found
    return Conntrack(lookup, release, opts_size, status)


def _find(data: bytes, wanted: dict[str, int],
          member: str) -> list[tuple[int, int]] | None:
    """(id, size) of each wanted type, in order; for the last (a struct), (id, the byte
    offset of `member`) instead. None where one is missing or the data is not BTF."""
    if len(data) < HEADER.size:
        return None
    magic, _, _, hdr_len, type_off, type_len, str_off, str_len = HEADER.unpack_from(data)
    if magic != MAGIC:
        return None
    types = data[hdr_len + type_off:hdr_len + type_off + type_len]
    strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
    names = {name.encode(): (name, kind) for name, kind in wanted.items()}
    last = list(wanted)[-1]
    out: dict[str, tuple[int, int]] = {}
    off, type_id = 0, 1
    while off + TYPE.size <= len(types) and len(out) < len(wanted):
        name_off, info, size = TYPE.unpack_from(types, off)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        name = strings[name_off:strings.index(b"\0", name_off)]
        if name in names and names[name][1] == kind:
            key = names[name][0]
            out[key] = (type_id, size)
            if key == last:
                at = _member_offset(types, strings, off + TYPE.size, vlen, info >> 31,
                                    member.encode())
                if at is None:
                    return None
                out[key] = (type_id, at)
        off += TYPE.size + _PER_MEMBER.get(kind, 0) * vlen + _FIXED.get(kind, 0)
        type_id += 1
    if len(out) < len(wanted):
        return None
    return [out[name] for name in wanted]


def _member_offset(types: bytes, strings: bytes, at: int, vlen: int, bitfields: int,
                   member: bytes) -> int | None:
    for i in range(vlen):
        name_off, _, offset = (int(v) for v in TYPE.unpack_from(types, at + TYPE.size * i))
        if strings[name_off:strings.index(b"\0", name_off)] == member:
            # with bitfields the offset's low 24 bits are the bit offset
            bits = offset & 0xFFFFFF if bitfields else offset
            return bits // 8
    return None
