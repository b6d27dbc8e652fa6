"""nftables in-process, through libnftables (Debian's libnftables1, which `nft` itself uses):
no process to exec on the CNI plugin's path. A context is made per call (or kept, a Session),
inside the namespace the caller is in, so its netlink socket lives there."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from typing import Any, Protocol

NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(RuntimeError):
    pass


class Runner(Protocol):
    """`run` below, or an open Session's."""

    def __call__(self, script: str, as_json: bool = False) -> str: ...


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


class Session:
    """A libnftables context kept open across scripts, its netlink socket made in the namespace
    of the thread that opens it. Closing an nftables socket after a transaction that deleted
    anything waits for the kernel to free what was deleted (a grace period: 12-15 ms on these
    machines), so a caller that deletes often, on a path someone waits for, keeps one open.
    Not thread-safe: one caller at a time."""

    def __init__(self) -> None:
        global _lib
        if _lib is None:
            _lib = _load()
        self._lib = _lib
        self._ctx: int | None = _lib.nft_ctx_new(0)
        if not self._ctx:
            raise NftError("libnftables could not make a context (out of memory?)")
        _lib.nft_ctx_buffer_output(self._ctx)
        _lib.nft_ctx_buffer_error(self._ctx)

    def run(self, script: str, as_json: bool = False) -> str:
        """Run an nft script; its output; NftError on failure."""
        lib, ctx = self._lib, self._ctx
        if ctx is None:
            raise NftError("nftables session closed")
        lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE
                                     if as_json else 0)
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        if rc != 0:
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode().strip()
            raise NftError(err or f"nft failed ({rc})")
        return out

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def run(script: str, as_json: bool = False) -> str:
    """Run an nft script in the calling thread's namespace, in a context of its own; its
    output; NftError on failure."""
    with Session() as session:
        return session.run(script, as_json)


def list_json(*what: str, run: Runner = run) -> list[dict[str, Any]]:
    """`nft -j -a list WHAT`; empty when it does not exist."""
    try:
        out = run("list " + " ".join(what), as_json=True)
    except NftError:
        return []
    items: list[dict[str, Any]] = json.loads(out or "{}").get("nftables", [])
    return items
