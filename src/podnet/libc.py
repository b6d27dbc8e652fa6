"""The C library, for the system calls Python's os module lacks here (setns, bpf, inotify,
fsopen and fsmount): one handle that keeps errno, and its failures raised as OSError."""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)


def checked(ret: int, what: str) -> int:
    """A libc call's result, or its failure (a negative result) as OSError with errno."""
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret
