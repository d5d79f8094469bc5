"""The process-wide job queue: prune runs as CLI subprocesses, one at a time per device.

A job is a run folder created with :func:`grasprune.runs.store.create_run`. ``submit`` queues it; a worker
thread per device starts ``python -m grasprune prune --resume <folder>`` in its own process group,
with stdout/stderr going to ``job.log`` in the run folder, and waits for it. ``stop`` sends SIGTERM
(the CLI stops after the current step, checkpointed, exit code 3) and SIGKILL after a grace period.
Resuming a stopped or interrupted run is submitting it again.

The registry lives in this module, not in a browser session: a page refresh, a second tab or a
Streamlit script rerun sees the same jobs. A job started by an earlier server process (still
running, or dead) is known only through its run folder's status; ``stop`` reaches it by its pid.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from grasprune.errors import UserError
from grasprune.runs.processes import (
    LOG_NAME,
    STOP_GRACE_S,
    grasprune_argv,
    launch,
    process_wide,
    stop_orphan,
    stop_process,
)
from grasprune.runs.store import Run


@dataclass
class Job:
    run_id: str
    folder: Path
    root: Path
    device: str
    state: str = "queued"  # queued, running, finished, cancelled
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    returncode: int | None = None
    stopping: bool = False

    def snapshot(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


class JobRegistry:
    """Queued and running prune jobs of this process, one worker thread per device."""

    def __init__(self, stop_grace_s: float = STOP_GRACE_S):
        self.stop_grace_s = stop_grace_s
        self._lock = threading.Condition()
        self._queues: dict[str, deque[Job]] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._jobs: dict[str, Job] = {}
        self._closed = False

    def submit(self, run: Run, root: Path) -> Job:
        """Queue ``run`` (new, stopped, interrupted or failed); refuse one already queued or running."""
        check_writes_inside(run, root)
        status = run.status().get("status")
        with self._lock:
            if self._closed:
                raise UserError("the job queue is shut down")
            current = self._jobs.get(run.id)
            if current is not None and current.state in ("queued", "running"):
                raise UserError(f"run {run.id} is already {current.state}")
            if status == "running":
                raise UserError(f"run {run.id} is already running in another process")
            if status == "completed":
                raise UserError(f"run {run.id} is already completed")
            job = Job(run.id, run.folder.resolve(), Path(root).resolve(), device_key(run))
            self._jobs[run.id] = job
            self._queues.setdefault(job.device, deque()).append(job)
            if job.device not in self._workers or not self._workers[job.device].is_alive():
                worker = threading.Thread(target=self._work, args=(job.device,), name=f"grasprune-jobs-{job.device}",
                                          daemon=True)
                self._workers[job.device] = worker
                worker.start()
            self._lock.notify_all()
        if status != "queued":
            run.set_status("queued", message="waiting for the device")
        return job

    def stop(self, run_id: str) -> bool:
        """Cancel a queued job or ask a running one to stop (SIGKILL after the grace period).

        Returns False when this process knows no live job for ``run_id`` and none is running under
        that run folder's recorded pid."""
        with self._lock:
            job = self._jobs.get(run_id)
            if job is not None and job.state == "queued":
                self._queues[job.device].remove(job)
                job.state, job.ended = "cancelled", time.time()
                Run(job.folder).set_status("stopped", message="cancelled before it started")
                return True
            proc = self._procs.get(run_id)
            if job is not None and proc is not None and job.state == "running":
                job.stopping = True
                stop_process(proc, self.stop_grace_s)
                return True
            folder = job.folder if job is not None else None
        return folder is not None and stop_run_orphan(Run(folder))

    def job(self, run_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(run_id)
            return None if job is None else Job(**job.__dict__)

    def state(self) -> dict:
        """A consistent snapshot: every job this process knows, and the queue order per device."""
        with self._lock:
            return {
                "jobs": {run_id: job.snapshot() for run_id, job in self._jobs.items()},
                "queues": {device: [job.run_id for job in queue] for device, queue in self._queues.items()},
                "running": [job.run_id for job in self._jobs.values() if job.state == "running"],
            }

    def queue_position(self, run_id: str) -> int | None:
        """1 for the next job to start on its device; None when not queued."""
        with self._lock:
            job = self._jobs.get(run_id)
            if job is None or job.state != "queued":
                return None
            return list(self._queues[job.device]).index(job) + 1

    def wait(self, run_id: str, timeout: float | None = None) -> bool:
        """Block until the job is no longer queued or running; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while (job := self._jobs.get(run_id)) is not None and job.state in ("queued", "running"):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(timeout=left if left is not None else 1.0)
        return True

    def shutdown(self, wait_s: float = 30.0) -> None:
        """Cancel queued jobs, stop running ones and wait for them (used at exit and by tests)."""
        with self._lock:
            self._closed = True
            queued = [job.run_id for queue in self._queues.values() for job in queue]
            running = list(self._procs)
        for run_id in queued + running:
            self.stop(run_id)
        deadline = time.monotonic() + wait_s
        for run_id in running:
            self.wait(run_id, timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._closed = False
            self._lock.notify_all()

    def _work(self, device: str) -> None:
        while True:
            with self._lock:
                while not self._queues[device]:
                    if not self._lock.wait(timeout=60.0) and not self._queues[device]:
                        self._workers.pop(device, None)  # idle: a later submit starts a new worker
                        return
                job = self._queues[device].popleft()
                job.state, job.started = "running", time.time()
                try:
                    proc = launch(job_command(job.folder, job.root), job.folder / LOG_NAME)
                except OSError as err:
                    job.state, job.ended, job.returncode = "finished", time.time(), -1
                    Run(job.folder).set_status("failed", message=f"cannot start the job: {err.strerror}")
                    self._lock.notify_all()
                    continue
                job.pid = proc.pid
                self._procs[job.run_id] = proc
            returncode = proc.wait()
            with self._lock:
                self._procs.pop(job.run_id, None)
                job.state, job.ended, job.returncode = "finished", time.time(), returncode
                self._lock.notify_all()


def shown_state(status: str, job_state: str | None) -> str:
    """The state to show for a run whose status file says ``status`` and whose job of this server (if
    any) is in ``job_state``: "queued" while the job waits, "starting" between the worker taking it and
    its process writing "running" (importing PyTorch takes seconds), else the status file's."""
    if job_state == "queued":
        return "queued"
    if job_state == "running" and status == "queued":
        return "starting"
    return status


def check_writes_inside(run: Run, root: Path) -> None:
    """A job writes only inside the runs folder: its run folder and its checkpoint (a CLI run with an
    ``--out`` elsewhere resumes from the CLI)."""
    root = Path(root).resolve()
    if run.folder.resolve().parent != root:
        raise UserError(f"run {run.id} is not inside the runs folder {root}")
    out = run.output_dir().resolve()
    if not out.is_relative_to(root):
        raise UserError(f"run {run.id} writes its checkpoint to {out}, outside the runs folder {root}: resume it "
                        f"with `grasprune prune --resume {run.folder}`")


def device_key(run: Run) -> str:
    """The device a run trains on ('cpu' or 'cuda:N'): jobs on different devices run side by side."""
    from grasprune.config import resolve_device

    try:
        device = resolve_device(run.config().device)
    except UserError:
        return "cpu"  # the job will fail with the message; queue it somewhere
    return "cuda:0" if device == "cuda" else device


def job_command(folder: Path, root: Path) -> list[str]:
    return grasprune_argv("prune", "--resume", str(folder), "--runs-dir", str(root))


def stop_run_orphan(run: Run) -> bool:
    """SIGTERM the process a run folder says is running it (a job of an earlier server process)."""
    status = run.status()
    return status.get("status") == "running" and stop_orphan(status.get("pid"), run.folder)


registry: Callable[[], JobRegistry] = process_wide(JobRegistry)
