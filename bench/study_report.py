"""The studies' reports: per point the mean and spread over seeds, as summary.json, study.md and a plot.

``summary.json`` is what the studio's Results page and ``bench.report`` read: a list of points, each
with its group (method or calibration domain), x (keep ratio or sample count), the seeds measured and,
per metric, ``mean`` / ``min`` / ``max`` / ``std`` (population) / ``n``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from grasprune.atomic import write_json_atomic, write_text_atomic

from .common import describe
from .quality import label
from .quality_report import save_figure
from .study_tables import markdown, metric_order

COMMANDS = {
    "keep": "python -m bench.study keep",
    "calibration": "python -m bench.study calibration",
    "kvcache": "python -m bench.study kvcache",
}
TITLES = {
    "keep": "Keep ratio 0.9 → 0.2: perplexity against parameters (Pareto)",
    "calibration": "Calibration size and domain (keep 0.5)",
    "kvcache": "KV cache and decode speed by context length (keep 0.5)",
}
FOLDER = {"keep": "study-keep", "calibration": "study-calibration", "kvcache": "study-kvcache"}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.pstdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def _method(settings: dict) -> str:
    """An entry's curve: its bench.quality row name without the seed."""
    return label({**settings, "seed": 0})


def _domain(settings: dict) -> str:
    data = settings.get("calib_data", "")
    return "c4" if data.startswith("c4") else "wikitext2" if "wikitext" in data else data


def _grouped(entries: list[dict], key: Callable[[dict], tuple]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for entry in entries:
        groups.setdefault(key(entry["settings"]), []).append(entry)
    return groups


def _point(group: str, x: float, members: list[dict]) -> dict:
    metrics = sorted({m for e in members for m in e["metrics"]})
    return {
        "group": group, "x": x, "seeds": sorted(e["settings"].get("seed", 0) for e in members),
        "metrics": {m: spread([e["metrics"][m] for e in members if m in e["metrics"]]) for m in metrics},
        "params_after": spread([e["params"]["total_after"] for e in members]),
        "removed_pct_of_total": spread([e["params"]["removed_pct_of_total"] for e in members]),
        "removed_pct_of_prunable": spread([e["params"]["removed_pct_of_prunable"] for e in members]),
    }


def summarise(study: str, entries: list[dict]) -> dict:
    """The points of a keep or calibration study (dense as the keep sweep's point at x = 1.0)."""
    if study == "keep":
        groups = _grouped(entries, lambda s: (_method(s), s.get("keep_ratio", 1.0)))
    else:
        groups = _grouped([e for e in entries if e["settings"]["method"] != "dense"],
                          lambda s: (_domain(s), s["calib_samples"]))
    points = [_point(group, x, members) for (group, x), members in sorted(groups.items())]
    dense = next((e for e in entries if e["settings"]["method"] == "dense"), None)
    return {"study": study, "title": TITLES[study], "command": COMMANDS[study], "points": points,
            "dense": dense["metrics"] if dense else None, "setting": _setting(entries)}


def _setting(entries: list[dict]) -> str:
    pruned = next((e for e in entries if e["settings"]["method"] != "dense"), None)
    if pruned is None:
        return ""
    s, cond = pruned["settings"], pruned["setting"]
    return describe({
        "model": s["model"], "eval": f"seqlen {s['seqlen']}, first {s['windows']} windows",
        "gate training": f"{s['calib_samples']}×{s['block_len']} tokens, {s['epochs']} epochs"
        if len({e["settings"].get("calib_samples") for e in entries} - {None}) == 1 else f"{s['block_len']}-token blocks, {s['epochs']} epochs",
        "scale calibration": f"{s['rescale_samples']} blocks", "training dtype": pruned.get("train_dtype"),
        "cpu": cond["cpu"], "threads": cond["threads"], "torch": cond["torch"],
    })


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _errorbar(ax, points: list[dict], x_of: Callable[[dict], float], metric: str, **style) -> None:
    points = sorted((p for p in points if metric in p["metrics"]), key=x_of)
    if not points:
        return
    x = [x_of(p) for p in points]
    mean = [p["metrics"][metric]["mean"] for p in points]
    low = [m - p["metrics"][metric]["min"] for m, p in zip(mean, points, strict=True)]
    high = [p["metrics"][metric]["max"] - m for m, p in zip(mean, points, strict=True)]
    ax.errorbar(x, mean, yerr=[low, high], marker="o", capsize=3, **style)


def plot(summary: dict, path: Path) -> Path | None:
    """Keep: perplexity against parameters, a line per method, bars the min-max over seeds.
    Calibration: perplexity against gate-training blocks, a panel per evaluation set."""
    plt = _pyplot()
    points = summary["points"]
    if plt is None or not points:
        return None
    metrics = metric_order(summary)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.8), squeeze=False)
    groups = list(dict.fromkeys(p["group"] for p in points))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for group in groups:
            mine = [p for p in points if p["group"] == group]
            style = {"linewidth": 2.5, "color": "black"} if group.startswith("grasprune") else {}
            if summary["study"] == "keep":
                _errorbar(ax, mine, lambda p: p["params_after"]["mean"] / 1e6, metric, label=group, **style)
            else:
                _errorbar(ax, mine, lambda p: p["x"], metric, label=f"calibrated on {group}", **style)
        if summary["study"] == "keep":
            ax.set_xlabel("parameters after pruning (millions)")
            for p in (p for p in points if p["group"].startswith("grasprune") and metric in p["metrics"]):
                ax.annotate(f"{p['x']:g}", (p["params_after"]["mean"] / 1e6, p["metrics"][metric]["mean"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
        else:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("gate-training blocks (log 2)")
            if summary.get("dense") and metric in summary["dense"]:
                ax.axhline(summary["dense"][metric], linestyle="--", color="grey", label="dense")
        ax.set_yscale("log")
        ax.set_ylabel(f"{metric} perplexity (log)")
        ax.set_title(f"evaluated on {metric}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{summary['title']}\n{summary['setting']}", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return save_figure(fig, plt, path)


def write_study(study: str, entries: list[dict], folder: Path) -> dict:
    summary = summarise(study, entries)
    write_json_atomic(folder / "summary.json", summary)
    write_text_atomic(folder / "study.md", markdown(summary))
    plot(summary, folder / f"{study}.png")
    return summary


def writer(study: str) -> Callable[[list[dict], Path], None]:
    """bench.quality's report hook for a study's folder."""
    return lambda entries, folder: write_study(study, entries, folder) and None

