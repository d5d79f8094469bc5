"""One summary row per run folder: what the Runs page lists and compares."""

from __future__ import annotations

from .errors import UserError
from .runs import Run
from .timeline import timeline_of


def run_row(run: Run, job_state: str | None = None) -> dict:
    """Status, model, budget, results and times of a run (``job_state`` from the job queue, if any)."""
    status = run.status().get("status", "unknown")
    if job_state == "queued":
        status = "queued"
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
        "ppl wikitext2": metrics.get("ppl_wikitext2", {}).get("ppl"),
        "ppl ptb": metrics.get("ppl_ptb", {}).get("ppl"),
        "device": config.device,
        "phase": None if status == "completed" else tl.phase,
        "started": tl.started,
        "seconds": None if tl.started is None or tl.last_time is None else round(tl.last_time - tl.started, 1),
    }


def config_differences(a: Run, b: Run) -> list[tuple[str, object, object]]:
    """Settings that differ between two runs."""
    left, right = a.config().to_dict(), b.config().to_dict()
    return [(key, left[key], right[key]) for key in left if left[key] != right.get(key)]
