"""Heal jobs: ``grasprune heal`` subprocesses the studio starts, each with a folder in the runs folder.

``<runs>/heals/<id>/`` holds ``job.json`` (the checkpoint, the output folder, the settings), the events the
heal appends (``events.jsonl``, its ``--events`` file), the process's output (``job.log``) and
``process.json`` (the pid of the latest attempt, and its exit code once it ended). Resuming a stopped heal
is another attempt in the same folder: its events follow the earlier ones, and the heal itself resumes
from the state it saved beside its output folder.

The registry is process-wide (this module, not a browser session), as the prune jobs' is: a page reload
or a second tab sees the same job, and the Streamlit script never waits for one. A job started by an
earlier server process is known through its folder (its pid, its events). No Streamlit here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from grasprune.atomic import write_json_atomic
from grasprune.cli.command import heal_args, heal_command
from grasprune.errors import UserError
from grasprune.events import read_new_events
from grasprune.method.heal import HealConfig
from grasprune.runs.jobs import LOG_NAME, REPO_ROOT, STOP_GRACE_S, process_wide, signal_group
from grasprune.runs.store import RUN_ID, new_run_id
from grasprune.runs.timeline import Timeline

FOLDER = "heals"
STOPPED = 3  # the CLI's exit code after a stop (the state is saved)


@dataclass
class HealProgress(Timeline):
    """A heal's events folded: its ``healing`` loss curve and steps, ``done``, ``stopped`` and ``error`` (the
    run timeline's rules: a resumed attempt's replayed steps replace the earlier ones), plus the training time
    at the latest step, which ``--minutes`` limits over every attempt, and how the latest attempt ended."""

    training_s: float | None = None
    ending: str | None = None  # done, stopped or error: the latest attempt's last word (None while it runs)
    holdout: dict[int, float] = field(default_factory=dict)  # step: held-out loss (a replayed step replaces)
    best: tuple[int, float] | None = None  # the step with the lowest held-out loss so far, and that loss

    def apply(self, event: dict) -> None:
        super().apply(event)
        kind = event.get("type")
        if kind == "step":
            self.training_s = event.get("elapsed_s")
        elif kind == "holdout":
            self.holdout[event["step"]] = event["loss"]
            self.best = (event["best_step"], event["best_loss"])
        elif kind in ("done", "stopped", "error"):
            self.ending = kind
        elif kind == "phase" and event.get("phase") == "loading":
            self.ending = None


def read_progress(path: Path, previous: HealProgress | None = None) -> HealProgress:
    """``previous`` brought up to date with the complete lines appended to ``path`` since its last read (a line
    still being written waits for the next read); a fresh fold when there is none or the file is new."""
    size = path.stat().st_size if path.is_file() else 0
    progress = previous if previous is not None and size >= previous.offset else HealProgress()
    events, progress.offset = read_new_events(path, progress.offset)
    progress.extend(events)
    return progress


@dataclass(frozen=True)
class HealJob:
    folder: Path

    id = property(lambda self: self.folder.name)
    spec_path = property(lambda self: self.folder / "job.json")
    events_path = property(lambda self: self.folder / "events.jsonl")
    log_path = property(lambda self: self.folder / LOG_NAME)
    process_path = property(lambda self: self.folder / "process.json")

    def spec(self) -> dict:
        return json.loads(self.spec_path.read_text())

    def config(self) -> HealConfig:
        return HealConfig(**self.spec()["settings"])

    @property
    def source(self) -> Path:
        return Path(self.spec()["source"])

    @property
    def out(self) -> Path:
        return Path(self.spec()["out"])

    def command(self) -> str:
        """The ``grasprune heal`` command of this job (without the events file the studio adds)."""
        return heal_command(self.source, self.out, self.config(), self.spec().get("overwrite", False))

    def argv(self, restart: bool) -> list[str]:
        args = heal_args(self.source, self.out, self.config(), self.spec().get("overwrite", False), restart)
        return [sys.executable, "-m", "grasprune", *args, "--events", str(self.events_path)]

    def process(self) -> dict:
        try:
            return json.loads(self.process_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def report(self) -> dict | None:
        """The healed folder's ``heal`` section (steps, time, last losses), once it is written."""
        return heal_section(self.out)


def heal_section(folder: Path) -> dict | None:
    """The ``heal`` section of a healed checkpoint's grasprune.json; None for any other folder."""
    try:
        report = json.loads((folder / "grasprune.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report.get("heal") if isinstance(report, dict) else None


def latest_healed(root: Path, source: Path) -> HealJob | None:
    """The newest heal of ``source`` (a run's checkpoint) that finished, its healed folder inside the runs
    folder: the Evaluate page compares it with the dense and the pruned model."""
    inside = Path(root).resolve()
    for job in list_heal_jobs(root):
        try:
            same = job.source.resolve() == Path(source).resolve()
        except (OSError, KeyError, json.JSONDecodeError):
            continue
        if same and job.out.resolve().is_relative_to(inside) and job.report() is not None:
            return job
    return None


def jobs_folder(root: Path) -> Path:
    return Path(root).resolve() / FOLDER


def create_heal_job(root: Path, source: Path, out: Path, cfg: HealConfig, overwrite: bool = False,
                    run_id: str | None = None) -> HealJob:
    job = HealJob(jobs_folder(root) / new_run_id())
    try:
        job.folder.mkdir(parents=True, exist_ok=False)
    except OSError as err:
        raise UserError(f"cannot create a heal job in {job.folder.parent}: {err.strerror}") from err
    write_json_atomic(job.spec_path, {"source": str(source), "out": str(out), "settings": dataclasses.asdict(cfg),
                                      "overwrite": overwrite, "run": run_id, "created": time.time()})
    return job


def heal_job_in_root(job_id: str, root: Path) -> HealJob:
    """A job by id alone (from a link): validated, a real folder directly inside ``<root>/heals``."""
    folder_root = jobs_folder(root)
    if not isinstance(job_id, str) or not RUN_ID.match(job_id):
        raise UserError(f"invalid heal job id {job_id!r}: ids look like 20261128-120000-a1b2c3")
    folder = folder_root / job_id
    if folder.resolve().parent != folder_root or not (folder / "job.json").is_file():
        raise UserError(f"no heal job {job_id} in {folder_root}")
    return HealJob(folder)


def list_heal_jobs(root: Path) -> list[HealJob]:
    """The heal jobs in the runs folder, newest first (a symlink to a folder elsewhere is not one)."""
    folder_root = jobs_folder(root)
    if not folder_root.is_dir():
        return []
    found = [HealJob(p) for p in folder_root.iterdir() if RUN_ID.match(p.name) and p.is_dir()
             and p.resolve().parent == folder_root and (p / "job.json").is_file()]
    return sorted(found, key=lambda job: job.id, reverse=True)


def same_heal(root: Path, source: Path, out: Path, cfg: HealConfig, overwrite: bool) -> HealJob | None:
    """The newest job of exactly these settings."""
    spec = {"source": str(source), "out": str(out), "settings": dataclasses.asdict(cfg), "overwrite": overwrite}
    for job in list_heal_jobs(root):
        found = job.spec()
        if {key: found.get(key) for key in spec} == spec:
            return job
    return None


def orphan_alive(job: HealJob) -> bool:
    """Whether the pid the job's folder recorded still runs this job's heal (a job of an earlier server)."""
    pid = job.process().get("pid")
    if not isinstance(pid, int) or job.process().get("returncode") is not None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"grasprune" in cmdline and str(job.events_path).encode() in cmdline  # not a reused pid


class HealJobs:
    """The heal processes of this server: one at a time (``grasprune heal`` runs on the CPU)."""

    def __init__(self, stop_grace_s: float = STOP_GRACE_S):
        self.stop_grace_s = stop_grace_s
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen] = {}

    def start(self, root: Path, source: Path, out: Path, cfg: HealConfig, overwrite: bool = False,
              restart: bool = False, run_id: str | None = None) -> HealJob:
        """Launch a heal of these settings. A job that ended unfinished with the same checkpoint, output and
        settings takes it as its next attempt (one loss curve); otherwise a new job."""
        with self._lock:
            self._refuse_second()
            earlier = None if restart else same_heal(root, source, out, cfg, overwrite)
            if earlier is not None and (orphan_alive(earlier) or earlier.process().get("returncode") == 0):
                earlier = None  # running elsewhere, or finished: this one is new
            job = earlier or create_heal_job(root, source, out, cfg, overwrite, run_id)
            self._launch(job, restart)
        return job

    def resume(self, job: HealJob) -> None:
        with self._lock:
            self._refuse_second()
            if orphan_alive(job):
                raise UserError(f"heal job {job.id} is already running")
            self._launch(job, restart=False)

    def stop(self, job: HealJob) -> bool:
        """Ask the job's process to stop after its current step (SIGTERM; SIGKILL after the grace period).
        False when no process of this job runs."""
        with self._lock:
            proc = self._procs.get(job.id)
            if proc is not None and proc.poll() is None:
                self._mark_stop(job)
                signal_group(proc.pid, signal.SIGTERM)
                threading.Thread(target=self._kill_later, args=(proc,), daemon=True).start()
                return True
            if orphan_alive(job):
                self._mark_stop(job)
                os.kill(job.process()["pid"], signal.SIGTERM)
                return True
        return False

    @staticmethod
    def _mark_stop(job: HealJob) -> None:
        """Recorded in the job's folder: every tab says "stopping", and a process that a stop ends before it
        could handle the signal (still importing PyTorch) counts as stopped, not failed."""
        write_json_atomic(job.process_path, {**job.process(), "stop_requested": True})

    def alive(self, job: HealJob) -> bool:
        with self._lock:
            proc = self._procs.get(job.id)
            if proc is not None:
                return proc.poll() is None
        return orphan_alive(job)

    def returncode(self, job: HealJob) -> int | None:
        """The latest attempt's exit code: from its process where this server started it (its folder may not
        say so yet), else from the folder."""
        with self._lock:
            proc = self._procs.get(job.id)
            if proc is not None:
                return proc.poll()
        return job.process().get("returncode")

    def stopping(self, job: HealJob) -> bool:
        return bool(job.process().get("stop_requested"))

    def running(self) -> str | None:
        """The id of this server's running heal, if any."""
        with self._lock:
            return self._running()

    def state(self, job: HealJob, progress: HealProgress) -> str:
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
        """Stop every running heal and wait for it (at exit and in tests)."""
        with self._lock:
            procs = [proc for proc in self._procs.values() if proc.poll() is None]
        for proc in procs:
            signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)

    def _running(self) -> str | None:
        return next((job_id for job_id, proc in self._procs.items() if proc.poll() is None), None)

    def _refuse_second(self) -> None:
        running = self._running()
        if running is not None:
            raise UserError(f"a heal is already running (job {running}): stop it or wait until it ends")

    def _launch(self, job: HealJob, restart: bool) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        argv = job.argv(restart)
        try:
            with open(job.log_path, "ab") as log:
                log.write(f"\n$ {' '.join(argv)}\n".encode())
                log.flush()
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True)
        except OSError as err:
            raise UserError(f"cannot start the heal: {err.strerror}") from err
        write_json_atomic(job.process_path, {"pid": proc.pid, "started": time.time(), "returncode": None})
        self._procs[job.id] = proc
        threading.Thread(target=self._reap, args=(job, proc), name=f"grasprune-heal-{job.id}", daemon=True).start()

    def _reap(self, job: HealJob, proc: subprocess.Popen) -> None:
        """Wait for the process and record its exit code in the job's folder."""
        code = proc.wait()
        with self._lock:
            if job.process().get("pid") == proc.pid:  # not already a later attempt's
                write_json_atomic(job.process_path, {**job.process(), "returncode": code, "ended": time.time()})

    def _kill_later(self, proc: subprocess.Popen) -> None:
        try:
            proc.wait(timeout=self.stop_grace_s)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)


registry: Callable[[], HealJobs] = process_wide(HealJobs)
