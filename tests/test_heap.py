"""The studio server's heap trimmer (studio/heap.py): started by the server's import of app.py, and
``malloc_trim`` really returns what a finished thread freed."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from grasprune.jobs import process_rss
from studio.heap import malloc_trim

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(malloc_trim() is None, reason="no glibc malloc_trim here")


def test_the_servers_import_of_the_app_starts_the_trimmer_once():
    code = ("import runpy, threading\n"
            "runpy.run_path('app.py', run_name='app'); runpy.run_path('app.py', run_name='app')\n"
            "print(sum(t.name == 'heap-trimmer' for t in threading.enumerate()))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "1"


def test_malloc_trim_returns_the_pages_a_finished_thread_freed():
    """A thread allocates 2 KiB strings (beyond Python's small-object allocator, so from a glibc arena
    of its own), keeps every 16th and exits: the arena keeps the freed pages until it is trimmed."""
    kept: list[bytes] = []

    def churn() -> None:
        blocks = [bytes(2048) + i.to_bytes(4, "little") for i in range(60_000)]
        kept.extend(blocks[::16])

    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    before = process_rss(os.getpid())
    malloc_trim()(0)
    after = process_rss(os.getpid())
    assert len(kept) == 3750
    assert before - after > 40 * 2**20, (before, after)  # most of the ~120 MB freed went back to the OS
