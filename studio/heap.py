"""Give the server's freed heap memory back to the OS, so that its resident memory stays flat.

Streamlit runs every rerun on a new thread, and the live view reruns once a second per open tab.
glibc serves each thread from one of several malloc arenas and returns an arena's free memory to the
OS only from the arena's top; the strings and messages of a rerun are freed but leave pages partly
used. Measured with two tabs polling a running job (``bench.memory_soak``): the server's RSS grew
~20-30 MB an hour while the memory Python had in use stayed flat, and ``/proc/PID/smaps`` showed the
growth in the threads' 64 MB arena heaps, not in Python's own arenas or in Arrow's pool.

``malloc_trim(0)`` returns the free pages of every arena (``madvise``); a daemon thread calls it every
``interval_s`` seconds. Elsewhere than glibc (macOS, musl) there is no ``malloc_trim`` and this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable

INTERVAL_S = 30.0
_lock = threading.Lock()
_started: list[threading.Thread] = []


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def start_heap_trimmer(interval_s: float = INTERVAL_S) -> bool:
    """Start the trimming thread once per process; ``False`` where there is nothing to trim."""
    trim = malloc_trim()
    if trim is None:
        return False

    def loop() -> None:
        while True:
            time.sleep(interval_s)
            trim(0)

    with _lock:
        if not _started:
            _started.append(threading.Thread(target=loop, name="heap-trimmer", daemon=True))
            _started[0].start()
    return True
