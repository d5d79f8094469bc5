"""Heal jobs: ``grasprune heal`` commands the studio starts, each a CLI job (``grasprune.runs.cli_jobs``) in
``<runs>/heals/<id>/``, whose job.json also names the checkpoint, the output folder and the settings. The
heal itself resumes from the state it saved beside its output folder. No Streamlit here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from grasprune.cli.command import heal_args, heal_command
from grasprune.events import read_new_events
from grasprune.method.heal import HealConfig
from grasprune.runs.cli_jobs import (
    CliJob,
    CliJobs,
    JobProgress,
    create_job,
    job_in_root,
    list_jobs,
    orphan_alive,
    registry,  # noqa: F401 - the one registry of the studio's CLI jobs
)

FOLDER = "heals"


@dataclass
class HealProgress(JobProgress):
    """A heal's events folded: its ``healing`` loss curve and steps (a resumed attempt's replayed steps replace
    the earlier ones), the training time at the latest step, which ``--minutes`` limits over every attempt,
    and the held-out losses."""

    training_s: float | None = None
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


def read_progress(path: Path, previous: HealProgress | None = None) -> HealProgress:
    """``previous`` brought up to date with the complete lines appended to ``path`` since its last read (a line
    still being written waits for the next read); a fresh fold when there is none or the file is new."""
    size = path.stat().st_size if path.is_file() else 0
    progress = previous if previous is not None and size >= previous.offset else HealProgress()
    events, progress.offset = read_new_events(path, progress.offset)
    progress.extend(events)
    return progress


@dataclass(frozen=True)
class HealJob(CliJob):
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

    def args(self, restart: bool) -> list[str]:
        """From the settings job.json keeps (the command is derived, not stored)."""
        return heal_args(self.source, self.out, self.config(), self.spec().get("overwrite", False), restart)

    def report(self) -> dict | None:
        """The healed folder's ``heal`` section (steps, time, last losses), once it is written."""
        return heal_section(self.out)

    # an export source (grasprune.runs.archive): its archives go into the job's folder
    archive_stem = property(lambda self: f"grasprune-healed-{self.id}")

    def output_dir(self) -> Path:
        return self.out

    def metrics(self) -> dict:
        """The healed checkpoint's perplexities (``grasprune heal --eval``), by ``ppl_<dataset>``."""
        try:
            return json.loads((self.out / "grasprune.json").read_text()).get("metrics") or {}
        except (OSError, json.JSONDecodeError):
            return {}


def heal_section(folder: Path) -> dict | None:
    """The ``heal`` section of a healed checkpoint's grasprune.json; None for any other folder."""
    try:
        report = json.loads((folder / "grasprune.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report.get("heal") if isinstance(report, dict) else None


def finished_heals(root: Path, source: Path) -> list[HealJob]:
    """The heals of ``source`` (a run's checkpoint) that finished, their healed folders inside the runs folder,
    newest first: results like runs (the Runs, Evaluate and Export pages list them)."""
    inside, found = Path(root).resolve(), []
    for job in list_heal_jobs(root):
        try:
            same = job.source.resolve() == Path(source).resolve()
        except (OSError, KeyError, json.JSONDecodeError):
            continue
        if same and job.out.resolve().is_relative_to(inside) and job.report() is not None:
            found.append(job)
    return found


def latest_healed(root: Path, source: Path) -> HealJob | None:
    """The newest finished heal of ``source``: the Evaluate page compares it with the dense and the pruned model."""
    return next(iter(finished_heals(root, source)), None)


def create_heal_job(root: Path, source: Path, out: Path, cfg: HealConfig, overwrite: bool = False,
                    run_id: str | None = None) -> HealJob:
    return create_job(root, FOLDER, {"kind": "heal", "source": str(source), "out": str(out),
                                     "settings": dataclasses.asdict(cfg),
                                     "overwrite": overwrite, "run": run_id}, HealJob)


def heal_job_in_root(job_id: str, root: Path) -> HealJob:
    """A job by id alone (from a link): validated, a real folder directly inside ``<root>/heals``."""
    return job_in_root(root, FOLDER, job_id, HealJob, noun="heal job")


def list_heal_jobs(root: Path) -> list[HealJob]:
    """The heal jobs in the runs folder, newest first."""
    return list_jobs(root, FOLDER, HealJob)


def same_heal(root: Path, source: Path, out: Path, cfg: HealConfig, overwrite: bool) -> HealJob | None:
    """The newest job of exactly these settings."""
    spec = {"source": str(source), "out": str(out), "settings": dataclasses.asdict(cfg), "overwrite": overwrite}
    for job in list_heal_jobs(root):
        found = job.spec()
        if {key: found.get(key) for key in spec} == spec:
            return job
    return None


def start_heal(jobs: CliJobs, root: Path, source: Path, out: Path, cfg: HealConfig, overwrite: bool = False,
               restart: bool = False, run_id: str | None = None) -> HealJob:
    """Launch a heal of these settings. A job that ended unfinished with the same checkpoint, output and
    settings takes it as its next attempt (one loss curve); otherwise a new job."""
    earlier = None if restart else same_heal(root, source, out, cfg, overwrite)
    if earlier is not None and (orphan_alive(earlier) or earlier.process().get("returncode") == 0):
        earlier = None  # running elsewhere, or finished: this one is new
    jobs.check_free("heal")  # refused before a new folder exists
    job = earlier or create_heal_job(root, source, out, cfg, overwrite, run_id)
    return jobs.launch(job, restart)
