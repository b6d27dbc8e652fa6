"""glibc set up for a steady footprint: threads alive at once share the main arena (each takes
one of its own otherwise: malloc_stats lists them), and a large block is mapped on its own even
after a larger one was freed (otherwise the threshold rises and it comes from the heap:
mallinfo2 counts the mapped blocks)."""

from __future__ import annotations

import subprocess
import sys

import pytest

THREADS = 4
# Each script's start: the allocator as the mode asks, and glibc's own functions at hand.
START = """
import ctypes, sys, threading
from podnet import malloc
if sys.argv[1] == "steady":
    assert malloc.steady_footprint()

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = Info
"""
SCRIPT = START + f"""
together = threading.Barrier({THREADS})
def work():
    held = [bytearray(1000) for _ in range(100)]  # above pymalloc's 512 bytes: malloc's
    together.wait()
threads = [threading.Thread(target=work) for _ in range({THREADS})]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
print(libc.mallinfo2().hblks - before)
libc.free(block)
libc.malloc_stats()
"""


def allocator(mode: str) -> tuple[int, int]:
    """(arenas, whether a 1 MB block was mapped on its own after a 4 MB one was freed)."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                          check=True)
    arenas = sum(1 for line in proc.stderr.splitlines() if line.startswith("Arena "))
    return arenas, int(proc.stdout)


@pytest.mark.parametrize(("mode", "want"), [("steady", (1, 1)),
                                            ("glibc's defaults", (THREADS + 1, 0))])
def test_threads_share_one_arena_and_large_blocks_stay_mapped(mode: str,
                                                               want: tuple[int, int]) -> None:
    assert allocator(mode) == want


KEEP = START + """
blocks = [libc.malloc(100 << 10) for _ in range(20)]  # 2 MB from the heap, at its top
for block in reversed(blocks):
    libc.free(block)
print(int(libc.mallinfo2().keepcost > (1 << 20)))
"""


@pytest.mark.parametrize(("mode", "want"), [("steady", 1), ("glibc's defaults", 0)])
def test_a_few_mb_freed_at_the_heaps_top_are_kept(mode: str, want: int) -> None:
    """As a libnftables command frees them: given back, the next command faults them in."""
    proc = subprocess.run([sys.executable, "-c", KEEP, mode], capture_output=True, text=True,
                          check=True)
    assert int(proc.stdout) == want
