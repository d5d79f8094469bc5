"""Run folders: ``<runs_root>/<id>/`` holds the config, the event log, gate and scale checkpoints,
the mask and scores, the status, the report and the exported checkpoint.

Every file is written atomically; the event log is append-only. A run whose status says
``running`` but whose process is gone was interrupted, and can be resumed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from grasprune.atomic import write_json_atomic
from grasprune.config import PruneConfig
from grasprune.errors import UserError
from grasprune.events import EventLog, read_events

RUN_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}\Z")  # \Z: "$" would accept a trailing newline
FINAL = ("completed", "failed", "stopped")


def runs_root() -> Path:
    """``$GRASPRUNE_RUNS``, else ``runs/`` in the working folder."""
    return Path(os.environ.get("GRASPRUNE_RUNS", "runs")).expanduser().resolve()


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def validate_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise UserError(f"invalid run id {run_id!r}: run ids look like 20261128-120000-a1b2c3")
    return run_id


@dataclass(frozen=True)
class Run:
    folder: Path

    @property
    def id(self) -> str:
        return self.folder.name

    config_path = property(lambda self: self.folder / "config.json")
    events_path = property(lambda self: self.folder / "events.jsonl")
    status_path = property(lambda self: self.folder / "status.json")
    gates_checkpoint = property(lambda self: self.folder / "gates.safetensors")
    scales_checkpoint = property(lambda self: self.folder / "scales.safetensors")
    scores_path = property(lambda self: self.folder / "scores.safetensors")
    gamma_path = property(lambda self: self.folder / "gamma.safetensors")
    mask_path = property(lambda self: self.folder / "mask.json")
    report_path = property(lambda self: self.folder / "report.json")
    default_checkpoint = property(lambda self: self.folder / "checkpoint")
    archive_stem = property(lambda self: f"grasprune-{self.id}")  # the folder name inside its export archives

    def events(self, since: int = 0) -> list[dict]:
        return read_events(self.events_path, since)

    def event_log(self) -> EventLog:
        return EventLog(self.events_path)

    def config(self) -> PruneConfig:
        return PruneConfig.load(self.config_path)

    def extra(self) -> dict:
        """Run settings beyond the prune config (the output folder)."""
        path = self.folder / "run.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def output_dir(self) -> Path:
        out = self.extra().get("out")
        return Path(out) if out else self.default_checkpoint

    def status(self) -> dict:
        try:
            status = json.loads(self.status_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {"status": "unknown"}
        if status.get("status") == "running" and not _alive(status.get("pid")):
            status = {**status, "status": "interrupted"}
        return status

    def set_status(self, status: str, **fields) -> None:
        write_json_atomic(self.status_path, {"status": status, "pid": os.getpid(), "time": time.time(), **fields})

    def report(self) -> dict | None:
        try:
            return json.loads(self.report_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create_run(config: PruneConfig, root: Path | None = None, out: Path | None = None) -> Run:
    root = root or runs_root()
    run = Run(root / new_run_id())
    try:
        run.folder.mkdir(parents=True, exist_ok=False)
    except OSError as err:
        raise UserError(f"cannot create a run in {root}: {err.strerror} (choose a writable runs folder)") from err
    write_json_atomic(run.config_path, config.to_dict())
    write_json_atomic(run.folder / "run.json", {"out": str(out) if out else None})
    run.set_status("queued")
    return run


def open_run(ref: str | Path, root: Path | None = None) -> Run:
    """A run by id (inside the runs root) or by folder path."""
    root = (root or runs_root()).resolve()
    path = Path(ref)
    if path.is_dir() and (path / "config.json").is_file():
        return Run(path.resolve())
    folder = root / validate_run_id(str(ref))
    if not (folder / "config.json").is_file():
        raise UserError(f"no run {ref} in {root}")
    return Run(folder)


def run_in_root(run_id: str, root: Path | None = None) -> Run:
    """A run by id alone, for ids that come from a page, a link or a route: the id is validated and
    the folder must be a real child of the runs folder (no path, no symlink out of it)."""
    root = (root or runs_root()).resolve()
    validate_run_id(run_id)
    folder = root / run_id
    if folder.resolve().parent != root:
        raise UserError(f"run {run_id} is not inside the runs folder {root}")
    if not (folder / "config.json").is_file():
        raise UserError(f"no run {run_id} in {root}")
    return Run(folder)


def list_runs(root: Path | None = None) -> list[Run]:
    """The run folders directly inside ``root`` (a symlink to a folder elsewhere is not one)."""
    root = (root or runs_root()).resolve()
    if not root.is_dir():
        return []
    runs = [Run(p) for p in root.iterdir()
            if RUN_ID.match(p.name) and p.is_dir() and p.resolve().parent == root and (p / "config.json").is_file()]
    return sorted(runs, key=lambda r: r.id, reverse=True)


def delete_run(run: Run, root: Path | None = None) -> None:
    root = (root or runs_root()).resolve()
    folder = run.folder.resolve()
    if folder.parent != root or not RUN_ID.match(folder.name):
        raise UserError(f"refusing to delete {folder}: not a run folder inside {root}")
    shutil.rmtree(folder)
