"""Ctrl-C and SIGTERM during training: stop after the current step (checkpointed), a second one aborts."""

from __future__ import annotations

import signal
import sys
import threading


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM/SIGINT ask training to stop after the current step (checkpointed, resumable)."""

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        print("\nstopping after this step (again to abort)...", file=sys.stderr)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
