"""A fixed heap policy for every process that times code (glibc only).

glibc's malloc serves a block above its mmap threshold with a fresh mmap and returns it on
free, and it moves that threshold as the process frees large blocks. Whether an attention's
score matrix (8 MiB for 6 heads at n = 576 in float32) is recycled from the heap or faulted
in page by page on every call therefore depends on the process's history.
``python scripts/allocator_modes.py --processes 16`` on the 2-core development VM (AMD EPYC,
torch 2.13.0+cpu, 2026-12-02): with the default heap 12 fresh processes timed plain attention
at n = 576 at 12.7-17.1 ms per call and 4 at 30.7-42.9 ms; with the policy below all 16 took
12.5-20.6 ms. A ratio of two processes' timings, which is what the speed gate compares, could
be off by 3x on an unchanged tree.

The policy: blocks up to ``MMAP_THRESHOLD`` come from the heap, and the heap is trimmed only
above ``TRIM_THRESHOLD``. Setting either turns glibc's moving threshold off. It is applied at
run time with ``mallopt`` (``steady_allocator``) and, for a process started from here,
through the environment glibc reads at start-up (``steady_env``), which also covers a
process running another revision's code.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

MMAP_THRESHOLD = 32 << 20        # glibc's largest allowed value on 64-bit (HEAP_MAX / 2)
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3    # mallopt parameters (malloc.h)
POLICY = f"glibc mmap_threshold={MMAP_THRESHOLD >> 20}MiB trim_threshold={TRIM_THRESHOLD >> 20}MiB"


@functools.lru_cache(maxsize=None)
def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version          # glibc only: musl and others have no such policy knob
        return libc
    except (OSError, AttributeError):
        return None


def policy() -> str | None:
    """The policy's description where it applies (glibc), without applying it."""
    return POLICY if _libc() is not None else None


def steady_allocator() -> str | None:
    """Apply the policy to this process; its description, or None where it does not apply."""
    libc = _libc()
    if libc is None:
        return None
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return None
    return POLICY


def steady_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) plus the policy for a new process."""
    env = dict(os.environ if base is None else base)
    env.update(MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD), MALLOC_TRIM_THRESHOLD_=str(TRIM_THRESHOLD))
    return env
