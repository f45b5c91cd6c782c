"""Giving memory back: two glibc allocator settings that decide a CPU run's peak memory.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a large request
(above its *mmap threshold*) with a mapping of its own, unmapped when the tensor is freed, and
every smaller one from a heap that it keeps: a freed heap block is reused for later requests
but stays part of the process. The threshold starts at 128 KiB, and whenever a mapped block
larger than it is freed it rises to that block's size (up to 32 MiB), so after a few frees most
tensors of a model land in the heap.

Measured with the released 1024px architecture in bf16 on a 2-core CPU (``hart-edu run-real``,
the text encoder freed after encoding; docs/cpu):

* nothing set: the freed text encoder (2.9 GiB) stayed in the heap and the last scales'
  temporaries grew it further: peak 6.99 GiB.
* :func:`return_free_memory` after the release: RSS fell to 2.3 GiB (the 2x2 scale's mark in
  docs/cpu/run-real-1024px-bf16.txt), but the 48x48 and 64x64
  scales grew the heap again: peak 6.75 GiB; with the KV cache written into one buffer
  (:class:`hart_edu.kv_cache.KVCache`) instead of concatenated at every scale, 5.98 GiB
  (25 MB activations of varying lifetimes still fragment the heap).
* and :func:`map_large_blocks` with 16 MiB: those activations get mappings of their own and
  go back when freed: peak 5.29 GiB, 52.5 s on 2 idle cores (95.5 s CPU, 27.4 s of it system
  time for the whole process). A 1 MiB threshold (every tensor mapped) also keeps the peak low
  (4.92 GiB) but page-faults every activation in again and again: 63.9 s (116.2 s CPU, 37.5 s
  system time).

Both work on glibc only (Linux); elsewhere they return False and change nothing.
"""

from __future__ import annotations

import os

import ctypes
import functools

__all__ = ["return_free_memory", "map_large_blocks", "available_bytes", "DEFAULT_MMAP_THRESHOLD"]

DEFAULT_MMAP_THRESHOLD = 16 << 20  # 16 MiB: the 64x64 scale's activations (25 MB and up) get mappings
M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, the C library's among them
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):  # not glibc: no malloc_trim / mallopt
        return None
    return libc


def return_free_memory() -> bool:
    """``malloc_trim(0)``: hand every free page of every heap back to the operating system now
    (the address range stays reserved; a later allocation there page-faults it back in).
    True if it ran."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def map_large_blocks(threshold_bytes: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, threshold_bytes)``: from now on every allocation of at least
    ``threshold_bytes`` gets its own mapping, returned to the system when freed, and the
    threshold stops rising by itself. Process-wide and for the rest of the process (what
    ``MALLOC_MMAP_THRESHOLD_`` does when set before Python starts): call it from a program's
    entry point, not from library code. True if glibc accepted it."""
    if not isinstance(threshold_bytes, int) or isinstance(threshold_bytes, bool) or not 0 < threshold_bytes <= 32 << 20:
        raise ValueError(f"threshold_bytes={threshold_bytes!r} must be an int in (0, 32 MiB] (glibc's maximum)")
    libc = _glibc()
    return libc is not None and libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes) == 1


def map_large_blocks_unless_set() -> bool:
    """:func:`map_large_blocks` at its default threshold, unless ``MALLOC_MMAP_THRESHOLD_`` is set
    (the environment's setting wins). For the entry points of ``generate`` and ``run-real``."""
    return "MALLOC_MMAP_THRESHOLD_" not in os.environ and map_large_blocks()


def available_bytes() -> int | None:
    """The memory the OS could give this process now without swapping (``MemAvailable`` of
    /proc/meminfo), or None where there is no such file (not Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None
