"""nftables in-process, through libnftables (Debian's libnftables1, which `nft` itself uses):
no process to exec on the CNI plugin's path. A context is made per call, inside the namespace
the caller is in, so its netlink socket lives there."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from typing import Any

NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(RuntimeError):
    pass


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    lib = ctypes.CDLL(name)
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


_lib: ctypes.CDLL | None = None


def run(script: str, as_json: bool = False) -> str:
    """Run an nft script in the calling thread's namespace; its output; NftError on failure."""
    global _lib
    if _lib is None:
        _lib = _load()
    lib = _lib
    ctx = lib.nft_ctx_new(0)
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if as_json:
            lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE)
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        if rc != 0:
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode().strip()
            raise NftError(err or f"nft failed ({rc})")
        return out
    finally:
        lib.nft_ctx_free(ctx)


def list_json(*what: str) -> list[dict[str, Any]]:
    """`nft -j -a list WHAT`; empty when it does not exist."""
    try:
        out = run("list " + " ".join(what), as_json=True)
    except NftError:
        return []
    items: list[dict[str, Any]] = json.loads(out or "{}").get("nftables", [])
    return items
