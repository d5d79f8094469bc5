"""Keep freed memory in the process heap, so that large tensors do not fault in fresh pages each step.

glibc serves every allocation above its mmap threshold (dynamic, at most 32 MiB by default) with a
fresh ``mmap`` and unmaps it on ``free``. A gate-training step makes several tensors above it (a
block's float32 logits are 255 × 49,152 × 4 bytes = 50 MB for SmolLM2), and the kernel zero-fills each
of them page by page: about 12 ms per tensor here, where the arithmetic on it takes 1-3 ms. On the
engine protocol (SmolLM2, keep 0.7) that was 58 s of system time in a 137 s run. With the thresholds
raised the same run took 103 s and wrote the same checkpoint, byte for byte: only where the memory
comes from changes, not a value computed.

The price is that the process keeps its peak heap until it exits. That suits a command that trains or
evaluates and then ends (the CLI, the app's job subprocesses, the benchmarks), not a long-lived server,
so nothing calls this at import time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>: free memory at the heap's top kept before returning it
M_MMAP_THRESHOLD = -3  # glibc <malloc.h>: allocations at least this large get their own mmap
MMAP_THRESHOLD = 1 << 30  # tensors under 1 GiB come from the heap (mallopt takes a C int)
TRIM_THRESHOLD = (1 << 31) - 1

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); False where the C library has
    no ``mallopt`` (macOS, Windows, musl) or refuses the values, which changes nothing else."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def freed_memory_kept() -> bool:
    """Whether ``keep_freed_memory`` took effect in this process (the benchmarks record it)."""
    return _applied is True


def _set_thresholds() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the trim threshold first: a refused mmap threshold then still leaves the heap as it was
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
