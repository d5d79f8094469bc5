"""Typed events appended to a run's log (JSON lines): the engine writes, the CLI and the app read.

Each event is one ``os.write`` of one line on a file opened with ``O_APPEND``, under a lock, so
lines from several threads never interleave; a reader ignores a torn last line after a crash.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

Emit = Callable[..., None]


class EventLog:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def emit(self, type: str, **fields) -> None:
        line = json.dumps({"type": type, "time": round(time.time(), 3), **fields}, separators=(",", ":")) + "\n"
        data = line.encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)


def no_events(type: str, **fields) -> None:
    """The emit function for library calls that want no log."""


def read_events(path: str | os.PathLike, since: int = 0) -> list[dict]:
    """Events from line ``since`` on; a torn or corrupt line (crash mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, "rb") as handle:
        return _parse(raw for number, raw in enumerate(handle) if number >= since)


def read_new_events(path: str | os.PathLike, offset: int = 0) -> tuple[list[dict], int]:
    """The events of the complete lines after byte ``offset``, and the offset after the last of them.

    For a reader that polls a growing log (the live view, every second): it reads only what is new, a
    line still being written is left for the next read, and a complete but corrupt line is skipped once
    (a line-number cursor would re-read everything after it on every poll).
    """
    path = Path(path)
    if not path.is_file():
        return [], offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    return _parse(data[:end].splitlines()), offset + end


def _parse(lines: Iterable[bytes]) -> list[dict]:
    """The events of ``lines``; a torn or corrupt line is skipped."""
    events = []
    for raw in lines:
        try:
            events.append(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return events
