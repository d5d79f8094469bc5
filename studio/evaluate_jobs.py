"""Evaluation jobs: ``grasprune evaluate`` commands the Evaluate page starts, each a CLI job
(``grasprune.runs.cli_jobs``) in ``<runs>/evaluate-jobs/<id>/`` naming its run. The results land in the run's
evaluations.json as each is computed, so the page reads them from there; the job's events say what it is
computing now. No Streamlit here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grasprune.events import read_new_events
from grasprune.runs.cli_jobs import CliJob, JobProgress, create_job, list_jobs
from grasprune.runs.run_evaluation import Compared, Request
from grasprune.runs.store import Run

FOLDER = "evaluate-jobs"
KIND = "evaluate"


def evaluate_args(run: Run, models: list[Compared], request: Request) -> list[str]:
    """``evaluate RUN ...``: the command of this request over these models (healed ones by key)."""
    args = ["evaluate", str(run.folder)]
    for model in models:
        if model.label == "healed":
            args += ["--healed", f"{model.key}={model.spec}"]
    if request.datasets:
        args += ["--ppl", ",".join(request.datasets), "--seqlen", str(request.seqlen), "--windows", str(request.windows)]
    if request.tasks:
        args += ["--zeroshot", ",".join(request.tasks), "--limit", str(request.limit)]
    if request.prompt:
        s = request.sampling
        args += ["--generate", request.prompt, "--new-tokens", str(request.new_tokens), "--temperature",
                 f"{s.temperature:g}", "--top-p", f"{s.top_p:g}", "--repetition-penalty", f"{s.repetition_penalty:g}",
                 "--no-repeat-ngram", str(s.no_repeat_ngram), "--seed", str(s.seed)]
    return args


def create_evaluate_job(root: Path, run: Run, models: list[Compared], request: Request, what: str) -> CliJob:
    settings = {"datasets": list(request.datasets), "seqlen": request.seqlen, "windows": request.windows,
                "tasks": list(request.tasks), "limit": request.limit}
    return create_job(root, FOLDER, {"kind": KIND, "args": evaluate_args(run, models, request), "run": run.id,
                                     "what": what, "settings": settings})


def latest_evaluate_job(root: Path, run_id: str) -> CliJob | None:
    """The run's newest evaluation job (the page shows it: running, or how it ended)."""
    return next((job for job in list_jobs(root, FOLDER) if job.spec().get("run") == run_id), None)


@dataclass
class EvaluationProgress(JobProgress):
    """An evaluation's events folded: the item it computes (model, measurement, name), results stored of the
    total, and the window within a perplexity."""

    item: dict | None = None
    stored: int = 0
    total: int = 0
    window: tuple[int, int] | None = None
    message: str | None = None

    def apply(self, event: dict) -> None:
        super().apply(event)
        kind = event.get("type")
        if kind == "phase":
            self.total = event.get("total", self.total) or 0
            if event.get("phase") == "evaluation":
                self.item, self.window = event, None
        elif kind == "progress":
            self.window = (event["done"], event["total"])
        elif kind == "result":
            self.stored, self.window = event["done"], None
        elif kind in ("stopped", "error"):
            self.message = event.get("message")


def read_evaluation_progress(path: Path) -> EvaluationProgress:
    progress = EvaluationProgress()
    events, progress.offset = read_new_events(path, 0)
    progress.extend(events)
    return progress
