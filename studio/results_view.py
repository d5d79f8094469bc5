"""The measured studies as plotly figures and table rows (no Streamlit here): the Results page draws them.

They come from the benchmarks' own files under ``bench/results`` (or ``$GRASPRUNE_RESULTS``): each
study's ``summary.json`` (``python -m bench.study ...``: mean and min-max over seeds per point) and each
``heal-*/heal.json`` (``python -m bench.heal``). Nothing is measured here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .charts import BELOW, PALETTE, colour_of, log_ticks

REPO = Path(__file__).resolve().parent.parent
STUDIES = ("keep", "calibration", "kvcache")
FOLDERS = {"keep": "study-keep", "calibration": "study-calibration", "kvcache": "study-kvcache"}
KV_PANELS = (("kv_cache_mib", "KV cache after prefill (MiB)"), ("decode_tokens_per_s", "decode tokens/s"))
OURS_WIDTH = 3  # GRASPrune's curves: drawn thicker, each in its own colour


def results_folder() -> Path:
    configured = os.environ.get("GRASPRUNE_RESULTS")
    return Path(configured).expanduser().resolve() if configured else REPO / "bench" / "results"


def read_json(path: Path) -> dict | None:
    """A results file, or None when it is missing or unreadable (a study not measured yet)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summaries(folder: Path) -> dict[str, dict]:
    """The studies measured so far, by name."""
    found = {name: read_json(folder / FOLDERS[name] / "summary.json") for name in STUDIES}
    return {name: summary for name, summary in found.items() if summary and summary.get("points")}


def heal_rows(folder: Path) -> list[dict]:
    """Every healed checkpoint's curve from the heal benchmark's files, the newest folder first."""
    rows = []
    for path in sorted(folder.glob("heal-*/heal*.json"), reverse=True):
        data = read_json(path)
        for row in (data or {}).get("rows", []):
            rows.append({**row, "source": f"{path.parent.name}/{path.name}"})
    return rows


def _trace(points: list[dict], x_of, metric: str, name: str, ours: bool, colour: str) -> go.Scatter:
    points = sorted((p for p in points if metric in p["metrics"]), key=x_of)
    stats = [p["metrics"][metric] for p in points]
    return go.Scatter(
        x=[x_of(p) for p in points], y=[s["mean"] for s in stats], name=name, mode="lines+markers",
        line={"width": OURS_WIDTH if ours else 1.5, "color": colour},
        error_y={"type": "data", "symmetric": False, "array": [s["max"] - s["mean"] for s in stats],
                 "arrayminus": [s["mean"] - s["min"] for s in stats]},
        text=[_hover(p, s) for p, s in zip(points, stats, strict=True)], hoverinfo="text+name",
    )


def _hover(point: dict, stats: dict) -> str:
    seeds = f"{stats['n']} seeds, {stats['min']:.4g}-{stats['max']:.4g}" if stats["n"] > 1 else "1 run"
    return f"x {point['x']:g}: {stats['mean']:.4g} ({seeds})"


def _metrics(summary: dict) -> list[str]:
    """WikiText-2 first (the paper's headline set), then the others by name."""
    return sorted({m for p in summary["points"] for m in p["metrics"]}, key=lambda m: (m != "wikitext2", m))


def study_figure(summary: dict) -> go.Figure:
    """Keep: perplexity against parameters, a line per method. Calibration: perplexity against blocks, a
    panel per evaluation set. KV cache: cache size and decode speed against context. Bars: min-max over seeds."""
    study, points = summary["study"], summary["points"]
    panels = [(m, f"{m} perplexity") for m in _metrics(summary)] if study != "kvcache" else list(KV_PANELS)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[title for _, title in panels])
    for col, (metric, _) in enumerate(panels, start=1):
        for index, group in enumerate(dict.fromkeys(p["group"] for p in points)):
            mine = [p for p in points if p["group"] == group]
            if study == "keep":
                x_of = lambda p: p["params_after"]["mean"] / 1e6
            else:
                x_of = lambda p: p["x"]
            name = group if study != "calibration" else f"calibrated on {group}"
            trace = _trace(mine, x_of, metric, name, ours=group.startswith("grasprune"), colour=colour_of(group, index))
            trace.update(legendgroup=group, showlegend=col == 1)
            fig.add_trace(trace, row=1, col=col)
        if study != "kvcache":
            means = [p["metrics"][metric]["mean"] for p in points if metric in p["metrics"]]
            fig.update_yaxes(type="log", row=1, col=col, **log_ticks(means))
        if study != "keep":
            fig.update_xaxes(type="log", row=1, col=col, **log_ticks([p["x"] for p in points]))
    x_title = {"keep": "parameters after pruning (millions)", "calibration": "gate-training blocks",
               "kvcache": "context (tokens)"}[study]
    fig.update_xaxes(title_text=x_title)
    fig.update_layout(height=460, margin={"l": 10, "r": 10, "t": 40, "b": 10}, uirevision=study,
                      legend={**BELOW, "y": -0.28})  # under the x-axis titles
    return fig


def study_rows(summary: dict) -> list[dict]:
    """The table under a study's figure: one row per point, each metric as mean and min-max."""
    rows = []
    for p in summary["points"]:
        row = {"group": p["group"], "x": p["x"], "seeds": len(p["seeds"])}
        if "params_after" in p:
            row["parameters (M)"] = round(p["params_after"]["mean"] / 1e6, 1)
        for metric, stats in sorted(p["metrics"].items()):
            row[metric] = round(stats["mean"], 2)
            if stats["n"] > 1:
                row[f"{metric} min-max"] = f"{stats['min']:.2f}-{stats['max']:.2f}"
        rows.append(row)
    return rows


def heal_figure(rows: list[dict]) -> go.Figure:
    """WikiText-2 perplexity against minutes of healing, a line per healed checkpoint."""
    fig = go.Figure()
    values = []
    for index, row in enumerate(rows):
        points = [p for p in row["points"] if "wikitext2" in p]
        values += [p["wikitext2"] for p in points]
        name = f"{row['method']} keep {row['keep_ratio']:g}" + (f" ({row['variant']})" if row.get("variant") else "")
        fig.add_trace(go.Scatter(x=[p["minutes"] for p in points], y=[p["wikitext2"] for p in points],
                                 name=f"{name} · {row['source']}", mode="lines+markers",
                                 line={"width": OURS_WIDTH if row["method"] == "grasprune" else 1.5,
                                       "color": PALETTE[index % len(PALETTE)]}))
    fig.update_xaxes(title_text="minutes of healing (CPU)")
    fig.update_yaxes(title_text="WikiText-2 perplexity", type="log", **log_ticks(values))
    fig.update_layout(height=420, margin={"l": 10, "r": 10, "t": 30, "b": 10}, uirevision="heal",
                      legend={**BELOW, "y": -0.25})
    return fig


ROBUSTNESS_COMMAND = "python -m bench.robustness grid     # then: python -m bench.report"


def robustness_rows(folder: Path) -> list[dict]:
    """The default prune's spread per keep ratio over seeds and thread counts (``bench.robustness``)."""
    rows = read_json(folder / "robustness" / "summary.json") or []
    return [{"model": r["model"], "keep ratio": r["keep_ratio"], "runs": r["n"], "mean": round(r["mean"], 2), "min": round(r["min"], 2),
             "max": round(r["max"], 2), "max/min": round(r["ratio"], 3),
             "seeds": ", ".join(map(str, sorted({p["seed"] for p in r["points"]}))),
             "threads": ", ".join(map(str, sorted({p["threads"] for p in r["points"]}))),
             "seconds per run": round(r["mean_s"])} for r in rows if r["tag"] == "default"]


def measured_spread(config, folder: Path | None = None) -> str | None:
    """One line for a run's page: what the default prune measured at the run's keep ratio over seeds and
    thread counts, so a single figure is read as one draw of a known spread. None for a model or keep ratio
    not measured."""
    keep_ratio = config.keep_ratio
    for row in robustness_rows(folder or results_folder()):
        if row["model"] == config.model and abs(row["keep ratio"] - keep_ratio) < 1e-9:
            return (f"One run is one draw: the default prune of {config.model} at keep {keep_ratio:g} "
                    f"measured WikiText-2 {row['mean']:.2f} on average, {row['min']:.2f}–{row['max']:.2f} over "
                    f"{row['runs']} runs (seeds {row['seeds']} × threads {row['threads']}; 64 windows of 512, "
                    "`python -m bench.robustness grid`).")
    return None
