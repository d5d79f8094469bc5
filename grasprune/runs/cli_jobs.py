"""Jobs that are one ``grasprune`` command with an events file: heals and evaluations (prune runs keep their
own run folders and queue, ``runs.jobs``; both launch and stop through ``runs.processes``).

``<runs>/<kind folder>/<id>/`` holds ``job.json`` (the command's arguments and what the pages need to know),
the events the command appends (``events.jsonl``, its ``--events`` file), its output (``job.log``) and
``process.json`` (the pid of the latest attempt, and its exit code once it ended). Resuming a stopped job is
another attempt in the same folder: its events follow the earlier ones.

The registry is process-wide: a page reload or a second tab sees the same job, and the Streamlit script
never waits for one. A job started by an earlier server process is known through its folder (its pid, its
events).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from grasprune.atomic import write_json_atomic
from grasprune.errors import UserError
from grasprune.runs.processes import (
    LOG_NAME,
    STOP_GRACE_S,
    grasprune_argv,
    launch,
    process_wide,
    runs_job,
    signal_group,
    stop_orphan,
    stop_process,
)
from grasprune.runs.store import RUN_ID, new_run_id
from grasprune.runs.timeline import Timeline

STOPPED = 3  # the CLI's exit code after a stop (the state is saved)
NOUNS = {"heal": "a heal", "evaluate": "an evaluation"}


@dataclass
class JobProgress(Timeline):
    """A job's events folded (the run timeline's rules), plus how its latest attempt ended."""

    ending: str | None = None  # done, stopped or error: the latest attempt's last word (None while it runs)

    def apply(self, event: dict) -> None:
        super().apply(event)
        kind = event.get("type")
        if kind in ("done", "stopped", "error"):
            self.ending = kind
        elif kind == "phase" and event.get("phase") == "loading":
            self.ending = None


@dataclass(frozen=True)
class CliJob:
    folder: Path

    id = property(lambda self: self.folder.name)
    spec_path = property(lambda self: self.folder / "job.json")
    events_path = property(lambda self: self.folder / "events.jsonl")
    log_path = property(lambda self: self.folder / LOG_NAME)
    process_path = property(lambda self: self.folder / "process.json")

    def spec(self) -> dict:
        return json.loads(self.spec_path.read_text())

    @property
    def kind(self) -> str:
        return self.spec().get("kind", "heal")  # heal folders before evaluations had no kind

    def args(self, restart: bool) -> list[str]:
        """The command's arguments after ``grasprune`` (``--restart`` discards a stopped job's state)."""
        return [*self.spec()["args"], *(["--restart"] if restart else [])]

    def argv(self, restart: bool) -> list[str]:
        return grasprune_argv(*self.args(restart), "--events", str(self.events_path))

    def process(self) -> dict:
        try:
            return json.loads(self.process_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}


def create_job(root: Path, folder: str, fields: dict, job_type: type[CliJob] = CliJob) -> CliJob:
    """A new job folder in ``<root>/<folder>/`` whose job.json holds ``fields``: its ``kind``, and its ``args``
    unless the job's type derives them (``HealJob`` from its settings)."""
    job = job_type(Path(root).resolve() / folder / new_run_id())
    try:
        job.folder.mkdir(parents=True, exist_ok=False)
    except OSError as err:
        raise UserError(f"cannot create a job in {job.folder.parent}: {err.strerror}") from err
    write_json_atomic(job.spec_path, {**fields, "created": time.time()})
    return job


def job_in_root(root: Path, folder: str, job_id: str, job_type: type[CliJob] = CliJob, noun: str = "job") -> CliJob:
    """A job by id alone (from a link): validated, a real folder directly inside ``<root>/<folder>``."""
    folder_root = Path(root).resolve() / folder
    if not isinstance(job_id, str) or not RUN_ID.match(job_id):
        raise UserError(f"invalid {noun} id {job_id!r}: ids look like 20261128-120000-a1b2c3")
    path = folder_root / job_id
    if path.resolve().parent != folder_root or not (path / "job.json").is_file():
        raise UserError(f"no {noun} {job_id} in {folder_root}")
    return job_type(path)


def list_jobs(root: Path, folder: str, job_type: type[CliJob] = CliJob) -> list[CliJob]:
    """The jobs in ``<root>/<folder>``, newest first (a symlink to a folder elsewhere is not one)."""
    folder_root = Path(root).resolve() / folder
    if not folder_root.is_dir():
        return []
    found = [job_type(p) for p in folder_root.iterdir() if RUN_ID.match(p.name) and p.is_dir()
             and p.resolve().parent == folder_root and (p / "job.json").is_file()]
    return sorted(found, key=lambda job: job.id, reverse=True)


def orphan_alive(job: CliJob) -> bool:
    """Whether the pid the job's folder recorded still runs this job (a job of an earlier server)."""
    process = job.process()
    return process.get("returncode") is None and runs_job(process.get("pid"), job.events_path)


class CliJobs:
    """The CLI jobs of this server: one of each kind at a time (they run on the CPU)."""

    def __init__(self, stop_grace_s: float = STOP_GRACE_S):
        self.stop_grace_s = stop_grace_s
        self._lock = threading.Lock()
        self._procs: dict[str, tuple[str, subprocess.Popen]] = {}  # job id: (kind, process)

    def launch(self, job: CliJob, restart: bool = False) -> CliJob:
        """Start the job's command (a new attempt of an unfinished job resumes it)."""
        with self._lock:
            self._refuse_second(job.kind)
            if orphan_alive(job):
                raise UserError(f"{NOUNS.get(job.kind, 'a job')} {job.id} is already running")
            self._start(job, restart)
        return job

    def resume(self, job: CliJob) -> None:
        self.launch(job)

    def stop(self, job: CliJob) -> bool:
        """Ask the job's process to stop after its current step (SIGTERM; SIGKILL after the grace period).
        False when no process of this job runs."""
        with self._lock:
            _, proc = self._procs.get(job.id, (None, None))
            if proc is not None and proc.poll() is None:
                self._mark_stop(job)
                stop_process(proc, self.stop_grace_s)
                return True
            if orphan_alive(job):
                self._mark_stop(job)
                return stop_orphan(job.process()["pid"], job.events_path)
        return False

    @staticmethod
    def _mark_stop(job: CliJob) -> None:
        """Recorded in the job's folder: every tab says "stopping", and a process that a stop ends before it
        could handle the signal (still importing PyTorch) counts as stopped, not failed."""
        write_json_atomic(job.process_path, {**job.process(), "stop_requested": True})

    def alive(self, job: CliJob) -> bool:
        with self._lock:
            _, proc = self._procs.get(job.id, (None, None))
            if proc is not None:
                return proc.poll() is None
        return orphan_alive(job)

    def returncode(self, job: CliJob) -> int | None:
        """The latest attempt's exit code: from its process where this server started it (its folder may not
        say so yet), else from the folder."""
        with self._lock:
            _, proc = self._procs.get(job.id, (None, None))
            if proc is not None:
                return proc.poll()
        return job.process().get("returncode")

    def stopping(self, job: CliJob) -> bool:
        return bool(job.process().get("stop_requested"))

    def check_free(self, kind: str) -> None:
        """Refuse a second job of ``kind`` while one runs (before its caller creates a folder for it)."""
        with self._lock:
            self._refuse_second(kind)

    def running(self, kind: str = "heal") -> str | None:
        """The id of this server's running job of ``kind``, if any."""
        with self._lock:
            return self._running(kind)

    def state(self, job: CliJob, progress: JobProgress) -> str:
        """``starting`` (its process loads PyTorch), ``running``, ``completed``, ``stopped``, ``failed``,
        ``interrupted`` (its process is gone without saying why) or ``created`` (never started)."""
        process = job.process()
        if self.alive(job):
            started = process.get("started") or 0
            return "running" if progress.last_time is not None and progress.last_time >= started else "starting"
        code = self.returncode(job)
        if code is not None:  # the latest attempt's own word
            if code == 0:
                return "completed"
            return "stopped" if code == STOPPED or process.get("stop_requested") else "failed"
        if progress.ending is not None:  # a job of an earlier server: its events tell
            return {"done": "completed", "stopped": "stopped"}.get(progress.ending, "failed")
        return "interrupted" if process else "created"

    def shutdown(self, wait_s: float = 30.0) -> None:
        """Stop every running job and wait for it (at exit and in tests)."""
        with self._lock:
            procs = [proc for _, proc in self._procs.values() if proc.poll() is None]
        for proc in procs:
            signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)

    def _running(self, kind: str) -> str | None:
        return next((job_id for job_id, (k, proc) in self._procs.items() if k == kind and proc.poll() is None), None)

    def _refuse_second(self, kind: str) -> None:
        running = self._running(kind)
        if running is not None:
            raise UserError(f"{NOUNS.get(kind, 'a job')} is already running (job {running}): stop it or wait until "
                            "it ends")

    def _start(self, job: CliJob, restart: bool) -> None:
        try:
            proc = launch(job.argv(restart), job.log_path)
        except OSError as err:
            raise UserError(f"cannot start {NOUNS.get(job.kind, 'the job')}: {err.strerror}") from err
        write_json_atomic(job.process_path, {"pid": proc.pid, "started": time.time(), "returncode": None})
        self._procs[job.id] = (job.kind, proc)
        threading.Thread(target=self._reap, args=(job, proc), name=f"grasprune-{job.kind}-{job.id}",
                         daemon=True).start()

    def _reap(self, job: CliJob, proc: subprocess.Popen) -> None:
        """Wait for the process and record its exit code in the job's folder."""
        code = proc.wait()
        with self._lock:
            if job.process().get("pid") == proc.pid:  # not already a later attempt's
                write_json_atomic(job.process_path, {**job.process(), "returncode": code, "ended": time.time()})


registry = process_wide(CliJobs)
