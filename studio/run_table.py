"""One summary row per run folder: what the Runs page lists and compares."""

from __future__ import annotations

from collections.abc import Callable

from grasprune.errors import UserError
from grasprune.evaluation.perplexity import EVAL_DATASETS
from grasprune.formatting import BLANK, integer, is_blank, number, percent
from grasprune.runs.jobs import shown_state
from grasprune.runs.store import Run
from grasprune.runs.timeline import timeline_of

# How each numeric column reads (the others are shown as they are; an empty cell is always "–")
FORMATS: dict[str, Callable] = {
    "keep ratio": lambda value: f"{value:.2f}",
    "removed % of all": percent,
    "params after": integer,
    **{f"{role} {dataset}": number for dataset in EVAL_DATASETS for role in ("ppl", "dense")},
}


def run_row(run: Run, job_state: str | None = None) -> dict:
    """Status, model, budget, results and times of a run (``job_state`` from the job queue, if any)."""
    status = shown_state(run.status().get("status", "unknown"), job_state)
    try:
        config = run.config()
    except UserError:
        return {"run": run.id, "status": "unreadable"}
    report = run.report() or {}
    params = report.get("params", {})
    metrics = report.get("metrics", {})
    tl = timeline_of(run.events())
    return {
        "run": run.id,
        "status": status,
        "model": config.model,
        "method": config.method,
        "keep ratio": config.keep_ratio,
        "removed % of all": params.get("removed_pct_of_total"),
        "params after": params.get("total_after"),
        **_perplexities(metrics),
        "device": config.device,
        "phase": None if status == "completed" else tl.phase,
        "started": tl.started,
        "seconds": None if tl.started is None or tl.last_time is None else round(tl.last_time - tl.started, 1),
    }


def _perplexities(metrics: dict) -> dict:
    """Each dataset's pruned perplexity and, beside it, the dense model's at the same settings."""
    columns = {}
    for dataset in EVAL_DATASETS:
        metric = metrics.get(f"ppl_{dataset}", {})
        columns[f"ppl {dataset}"] = metric.get("ppl")
        columns[f"dense {dataset}"] = metric.get("dense_ppl")
    return columns


def cell_text(column: str, value: object) -> str:
    """A run table cell as the Runs page shows it: numbers formatted by column, nothing as "–"."""
    if is_blank(value):
        return BLANK
    format_value = FORMATS.get(column)
    return format_value(value) if format_value is not None else str(value)


def config_differences(a: Run, b: Run) -> list[tuple[str, object, object]]:
    """Settings that differ between two runs."""
    left, right = a.config().to_dict(), b.config().to_dict()
    return [(key, left[key], right[key]) for key in left if left[key] != right.get(key)]
