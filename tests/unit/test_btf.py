"""Reading the kernel's BTF for the conntrack kfuncs the fast path calls: a made-up BTF blob of
the kinds vmlinux holds, types found by name and kind, and what is missing."""

from __future__ import annotations

import struct
from pathlib import Path

from podnet.fastpath import btf


def blob(types: list[tuple[str, int, int, int, bytes]]) -> bytes:
    """BTF of (name, kind, vlen, size or type, what follows), with a struct's members named
    by the strings they point at."""
    strings = b"\0"
    offsets: dict[str, int] = {}

    def name(text: str) -> int:
        nonlocal strings
        if text not in offsets:
            offsets[text] = len(strings)
            strings += text.encode() + b"\0"
        return offsets[text]

    out = b""
    for text, kind, vlen, size, extra in types:
        out += struct.pack("<III", name(text), kind << 24 | vlen, size)
        if kind == btf.KIND_STRUCT:  # extra: member names, 4 bytes each, offsets in bits
            names = [extra[i:i + 4].decode().strip() for i in range(0, len(extra), 4)]
            out += b"".join(struct.pack("<III", name(m), 1, 64 * i * 16)
                            for i, m in enumerate(names))
        else:
            out += extra
    header = struct.pack("<HBBIIIII", btf.MAGIC, 1, 0, 24, 0, len(out), len(out), len(strings))
    return header + out + strings


INT = ("int", 1, 0, 4, struct.pack("<I", 32))
PROTO = ("", 13, 2, 0, bytes(16))  # a function prototype of two parameters


def test_finds_the_conntrack_functions_and_the_status_offset(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(blob([INT, PROTO, ("nf_conn", btf.KIND_STRUCT, 3, 248, b"lockzonestat"),
                           ("bpf_ct_opts", btf.KIND_STRUCT, 0, 16, b""),
                           ("bpf_ct_release", btf.KIND_FUNC, 0, 2, b""),
                           ("bpf_skb_ct_lookup", btf.KIND_FUNC, 0, 2, b"")]))
    # ids count from 1 in order; `stat` is the third member: 2 * 16 * 64 bits in
    found = btf._find(path.read_bytes(), {"bpf_skb_ct_lookup": btf.KIND_FUNC,
                                          "bpf_ct_release": btf.KIND_FUNC,
                                          "bpf_ct_opts": btf.KIND_STRUCT,
                                          "nf_conn": btf.KIND_STRUCT}, "stat")
    assert found == [(6, 2), (5, 2), (4, 16), (3, 256)]


def test_a_kernel_without_them_has_none(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    # a struct named like the function is not the function
    path.write_bytes(blob([INT, ("bpf_skb_ct_lookup", btf.KIND_STRUCT, 0, 8, b"")]))
    assert btf.conntrack(str(path)) is None
    path.write_bytes(b"not btf at all, long enough to hold a header")
    assert btf.conntrack(str(path)) is None
    assert btf.conntrack(str(tmp_path / "absent")) is None


def test_this_kernel_has_them() -> None:
    """The machines podnet runs on (conntrack built in): the fast path relies on it."""
    ct = btf.conntrack()
    assert ct is not None and ct.opts_size in (12, 16) and ct.lookup != ct.release
