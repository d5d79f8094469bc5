"""Background CLI processes, the one mechanism under every studio job (prune runs, heals, evaluations).

A job is a ``python -m grasprune ...`` subprocess in its own process group (so a stop reaches whatever it
started), its output appended to a log in its folder. A stop is SIGTERM to the group (the CLI finishes the
current step, saves, exits 3) and SIGKILL after a grace period. A job started by an earlier server process
is recognised by the pid its folder recorded, checked against ``/proc/<pid>/cmdline`` (a reused pid runs
another command). No Streamlit here: the pages only render what these functions report.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

STOP_GRACE_S = 15.0
LOG_NAME = "job.log"
REPO_ROOT = Path(__file__).resolve().parents[2]


def grasprune_argv(*args: str) -> list[str]:
    """``python -m grasprune ARGS`` with this interpreter."""
    return [sys.executable, "-m", "grasprune", *args]


def launch(argv: list[str], log_path: Path) -> subprocess.Popen:
    """Start ``argv`` in a new session (its own process group), stdout and stderr appended to ``log_path``
    after a ``$ command`` line. The repository is on ``PYTHONPATH`` so a clone runs without installing."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to a job's process group (its subprocesses too); a group already gone is no error."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process's group now, SIGKILL it if it is still there after ``grace_s`` (in a thread)."""
    signal_group(proc.pid, signal.SIGTERM)

    def kill_later() -> None:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)

    threading.Thread(target=kill_later, daemon=True).start()


def runs_job(pid: object, marker: str | Path) -> bool:
    """Whether ``pid`` is alive and runs a grasprune command naming ``marker`` (the job's folder or file)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"grasprune" in b" ".join(cmdline) and str(marker).encode() in cmdline


def stop_orphan(pid: object, marker: str | Path) -> bool:
    """SIGTERM a job that an earlier server process started (after checking the pid is still that job)."""
    if not runs_job(pid, marker):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def log_tail(path: Path, lines: int = 15, max_bytes: int = 16384) -> str | None:
    """The last ``lines`` lines of a job log (None if there is none), read from its last ``max_bytes``
    only: a live view polls it every second, and a long job's log grows without bound."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, 2) - max_bytes))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    return "\n".join(text.splitlines()[-lines:])


def process_rss(pid: int | None) -> int | None:
    """Resident memory of a live process in bytes (Linux /proc), or None."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_wide(factory: Callable[[], T]) -> Callable[[], T]:
    """A getter of one object per process, made by ``factory`` on first use, its ``shutdown()`` run at exit:
    a registry of background processes that every session of a server shares."""
    lock, made = threading.Lock(), []

    def get() -> T:
        with lock:
            if not made:
                made.append(factory())
                atexit.register(made[0].shutdown)
            return made[0]

    return get
