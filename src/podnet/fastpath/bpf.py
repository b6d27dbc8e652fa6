"""The bpf(2) system call, for the little the fast path needs: a hash map, loading a program,
finding a program's maps, and the map's entries. Through ctypes, as no maintained Python library
wraps bpf(2) without bringing a compiler toolchain (bcc) along."""

from __future__ import annotations

import ctypes
import os
import struct

from podnet.libc import libc

SYS_BPF = {"x86_64": 321, "aarch64": 280}
MAP_CREATE, MAP_LOOKUP, MAP_UPDATE, MAP_DELETE = 0, 1, 2, 3
PROG_LOAD = 5
PROG_TEST_RUN = 10
PROG_GET_FD_BY_ID, MAP_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD = 13, 14, 15
MAP_LOOKUP_BATCH = 24
MAP_TYPE_HASH = 1
NO_PREALLOC = 1
PROG_TYPE_SCHED_CLS = 3
ATTR_SIZE = 128  # larger than every attr used; the kernel wants the tail zero
LOG_SIZE = 1 << 16


class BpfError(OSError):
    """bpf(2) refused; for a program load, the verifier's log is in the message."""


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    nr = SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise BpfError(0, f"bpf(2) number unknown on {os.uname().machine}")
    ret = int(libc.syscall(nr, cmd, attr, ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return ret


def _attr(fmt: str, *values: int | bytes) -> ctypes.Array[ctypes.c_char]:
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into(fmt, attr, 0, *values)
    return attr


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def test_run(prog_fd: int, frame: bytes) -> tuple[int, bytes]:
    """Run a program once on a frame (BPF_PROG_TEST_RUN: in this namespace, sending nothing
    anywhere): its verdict, and the frame as it left the program."""
    din = ctypes.create_string_buffer(frame, len(frame))
    dout = ctypes.create_string_buffer(len(frame) + 128)
    attr = _attr("=IIIIQQI", prog_fd, 0, len(frame), len(dout), _addr(din), _addr(dout), 1)
    _bpf(PROG_TEST_RUN, attr)
    retval, _size_in, size_out = struct.unpack_from("=III", attr, 4)
    return retval, dout.raw[:size_out]


def create_hash_map(name: str, key_size: int, value_size: int, max_entries: int,
                    prealloc: bool = True) -> int:
    """A new hash map; its fd. Without `prealloc`, entries take memory only once added (for a
    map sized for a cluster's largest possible node count)."""
    return _bpf(MAP_CREATE, _attr("=IIIIIII16s", MAP_TYPE_HASH, key_size, value_size,
                                  max_entries, 0 if prealloc else NO_PREALLOC, 0, 0,
                                  name.encode()[:15]))


def load_program(name: str, code: bytes, license_: str = "GPL") -> int:
    """Load a tc classifier (direct action); its fd. A refusal is loaded again with the
    verifier's log on, so the error says why."""
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license_.encode())

    def attempt(log: ctypes.Array[ctypes.c_char] | None) -> int:
        return _bpf(PROG_LOAD, _attr("=IIQQIIQII16s", PROG_TYPE_SCHED_CLS, len(code) // 8,
                                     _addr(insns), _addr(lic), 1 if log else 0,
                                     len(log) if log else 0, _addr(log) if log else 0, 0, 0,
                                     name.encode()[:15]))

    try:
        return attempt(None)
    except BpfError:
        log = ctypes.create_string_buffer(LOG_SIZE)
        try:
            return attempt(log)
        except BpfError as exc:
            detail = log.value.decode(errors="replace").strip()
            raise BpfError(exc.errno, f"{exc.strerror}: {detail[-2000:]}" if detail
                           else str(exc.strerror)) from None


def program_fd(prog_id: int) -> int:
    return _bpf(PROG_GET_FD_BY_ID, _attr("=I", prog_id))


def map_fd(map_id: int) -> int:
    return _bpf(MAP_GET_FD_BY_ID, _attr("=I", map_id))


def program_map_ids(fd: int) -> list[int]:
    """The ids of the maps a loaded program uses (struct bpf_prog_info's map_ids)."""
    ids = ctypes.create_string_buffer(4 * 8)
    info = ctypes.create_string_buffer(64 + 16)
    struct.pack_into("=IQ", info, 52, 8, _addr(ids))  # nr_map_ids, map_ids
    _bpf(OBJ_GET_INFO_BY_FD, _attr("=IIQ", fd, len(info), _addr(info)))
    count = struct.unpack_from("=I", info, 52)[0]
    return list(struct.unpack_from(f"={min(count, 8)}I", ids))


def _info(fd: int, size: int) -> ctypes.Array[ctypes.c_char]:
    info = ctypes.create_string_buffer(size)
    _bpf(OBJ_GET_INFO_BY_FD, _attr("=IIQ", fd, len(info), _addr(info)))
    return info


def object_id(fd: int, kind: str) -> int:
    """A program's or map's id (the second field of both info structs)."""
    return int(struct.unpack_from("=I", _info(fd, 128 if kind == "prog" else 64), 4)[0])


def map_name(fd: int) -> str:
    """The name a map was created with (struct bpf_map_info's name)."""
    raw = struct.unpack_from("=16s", _info(fd, 64), 24)[0]
    return str(raw.rstrip(b"\0").decode())


def map_sizes(fd: int) -> tuple[int, int]:
    """A map's key and value sizes (struct bpf_map_info's)."""
    key_size, value_size = struct.unpack_from("=II", _info(fd, 64), 8)
    return int(key_size), int(value_size)


def map_update(fd: int, key: bytes, value: bytes) -> None:
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value,
                                                                                   len(value))
    _bpf(MAP_UPDATE, _attr("=IxxxxQQQ", fd, _addr(k), _addr(v), 0))


def map_delete(fd: int, key: bytes) -> bool:
    """False when the key was not there."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        _bpf(MAP_DELETE, _attr("=IxxxxQ", fd, _addr(k)))
    except BpfError as exc:
        if exc.errno == 2:  # ENOENT
            return False
        raise
    return True


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value_size)
    try:
        _bpf(MAP_LOOKUP, _attr("=IxxxxQQ", fd, _addr(k), _addr(v)))
    except BpfError as exc:
        if exc.errno == 2:
            return None
        raise
    return v.raw


def map_items(fd: int, key_size: int, value_size: int,
              max_entries: int) -> list[tuple[bytes, bytes]]:
    """Every entry, in one call (BPF_MAP_LOOKUP_BATCH) rather than two per key."""
    keys = ctypes.create_string_buffer(key_size * max_entries)
    values = ctypes.create_string_buffer(value_size * max_entries)
    token = ctypes.create_string_buffer(key_size)  # where the map's walk stopped (opaque)
    attr = _attr("=QQQQIIQQ", 0, _addr(token), _addr(keys), _addr(values), max_entries, fd,
                 0, 0)
    try:
        _bpf(MAP_LOOKUP_BATCH, attr)
    except BpfError as exc:
        if exc.errno != 2:  # ENOENT: the walk reached the end, as it does when all fit
            raise
    count = struct.unpack_from("=I", attr, 32)[0]
    k, v = keys.raw, values.raw
    return [(k[i * key_size:(i + 1) * key_size], v[i * value_size:(i + 1) * value_size])
            for i in range(count)]
