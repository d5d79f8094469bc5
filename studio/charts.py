"""Plotly figures built from a run's timeline, report and mask (no Streamlit here).

Every figure sets ``layout.uirevision`` so a live redraw keeps the user's zoom, and stays small:
per-layer bars and downsampled curves, never a per-step history of every unit.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grasprune.runs.timeline import PHASE_LABELS, Timeline

MAX_POINTS = 1500
KEPT, BEFORE, PRUNED = "#1f77b4", "#d9d9d9", "#f4a582"
# One colour per model on every page (Evaluate's bars, the Results page's lines)
MODEL_COLOURS = {"dense": "#7f7f7f", "pruned": "#1f77b4", "healed": "#2ca02c"}
# Distinct colours for curves that are not one of those models (runs compared, heal checkpoints, methods)
PALETTE = ("#d62728", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#1f77b4", "#2ca02c")
BELOW = {"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0}  # the legend under the plot: never on a title


def _compact(fig: go.Figure, revision: str, height: int = 300) -> go.Figure:
    fig.update_layout(height=height + 40, margin={"l": 10, "r": 10, "t": 50, "b": 10}, uirevision=revision,
                      legend=BELOW)
    return fig


def log_ticks(values: list[float]) -> dict:
    """Tick values of a log axis at 1-2-5 steps inside the data's range, each written in full (plotly's own
    minor labels read "2, 5, 100, 2, 5, 1000")."""
    finite = [v for v in values if v is not None and v > 0]
    if not finite:
        return {}
    low, high = min(finite), max(finite)
    ticks, decade = [], 10.0 ** np.floor(np.log10(low))
    while decade <= high * 10:
        ticks += [float(m * decade) for m in (1, 2, 5) if low / 1.5 <= m * decade <= high * 1.5]
        decade *= 10
    return {"tickvals": ticks, "ticktext": [f"{t:,.0f}" if t >= 1 else f"{t:g}" for t in ticks]} if ticks else {}


def colour_of(name: str, index: int) -> str:
    """A model's own colour (dense, pruned, healed, by the start of its name), else the palette's ``index``-th."""
    first = name.split()[0].lower() if name.strip() else ""
    return MODEL_COLOURS.get(first, PALETTE[index % len(PALETTE)])


def _thin(points: list[tuple]) -> list[tuple]:
    """At most about MAX_POINTS evenly spaced points, always ending with the latest."""
    thinned = points[:: max(1, len(points) // MAX_POINTS)]
    return thinned if not points or thinned[-1] == points[-1] else [*thinned, points[-1]]


def loss_figure(timeline: Timeline) -> go.Figure:
    fig = go.Figure()
    for phase, points in timeline.loss.items():
        if points:
            steps, losses = zip(*_thin(points), strict=True)
            fig.add_trace(go.Scatter(x=steps, y=losses, mode="lines", name=PHASE_LABELS.get(phase, phase)))
    fig.update_layout(title="Loss", xaxis_title="step", yaxis_title="next-token loss")
    return _compact(fig, "loss")


def layers_figure(layers: list[dict], ffn_kept: list[int], kv_kept: list[int], title: str = "") -> go.Figure:
    """Kept FFN channels and KV groups per layer, over what the layer had."""
    x = list(range(len(layers)))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("FFN channels kept", "KV groups kept"))
    for col, (kept, total_key) in enumerate(((ffn_kept, "ffn_channels"), (kv_kept, "kv_groups")), start=1):
        totals = [layer[total_key] for layer in layers]
        fig.add_trace(go.Bar(x=x, y=totals, marker_color=BEFORE, name="before", showlegend=col == 1,
                             hovertemplate="layer %{x}: %{y} before<extra></extra>"), row=1, col=col)
        fig.add_trace(go.Bar(x=x, y=kept, marker_color=KEPT, name="kept", showlegend=col == 1,
                             hovertemplate="layer %{x}: %{y} kept<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig = _compact(fig, "layers")
    fig.update_layout(barmode="overlay", title=title or None, legend={"orientation": "h", "y": -0.3, "x": 0},
                      margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig


def churn_figure(churn: list[tuple[int, int]]) -> go.Figure:
    fig = go.Figure()
    if churn:
        steps, values = zip(*_thin(churn), strict=True)
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name="units flipped"))
    fig.update_layout(title="Mask churn per step (units whose keep/prune decision flipped)",
                      xaxis_title="step", yaxis_title="units")
    return _compact(fig, "churn")


def kept_history_figure(history: list[tuple[int, list[int], list[int]]], layers: list[dict]) -> go.Figure:
    """Fraction of FFN channels kept, layer × step: how the mask moved while the gates trained."""
    rows = _thin(history)
    totals = np.array([layer["ffn_channels"] for layer in layers], dtype=float)
    z = np.array([ffn for _, ffn, _ in rows], dtype=float).T / totals[:, None]
    fig = go.Figure(go.Heatmap(z=z, x=[step for step, _, _ in rows], y=list(range(len(layers))),
                               colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "kept"}))
    fig.update_layout(title="FFN channels kept per layer during gate training", xaxis_title="step",
                      yaxis_title="layer")
    return _compact(fig, "kept-history", height=340)


def mask_heatmap(matrix: np.ndarray, title: str, unit: str) -> go.Figure:
    """Layer × unit mask: 1 kept, 0 pruned, blank where a layer has fewer units; a legend names the colours
    (a heatmap has none of its own: one marker-only trace with no points per colour)."""
    fig = go.Figure(go.Heatmap(z=matrix, colorscale=[[0, PRUNED], [1, KEPT]], zmin=0, zmax=1, showscale=False,
                               hovertemplate=f"layer %{{y}}, {unit} %{{x}}: %{{z}}<extra></extra>"))
    swatches = {"kept": KEPT, "pruned": PRUNED}
    if np.isnan(matrix).any():
        swatches[f"blank: the layer has fewer {unit}s"] = "rgba(0,0,0,0)"
    for name, colour in swatches.items():
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, hoverinfo="skip",
                                 marker={"symbol": "square", "size": 12, "color": colour,
                                         "line": {"color": "#999999", "width": 1}}))
    fig.update_layout(title=title, xaxis_title=unit, yaxis_title="layer")
    fig = _compact(fig, f"mask-{unit}", height=360)
    fig.update_layout(showlegend=True, legend={"orientation": "h", "y": -0.25, "x": 0},
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def score_histogram(ffn_probs: np.ndarray, kv_probs: np.ndarray) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=ffn_probs, name="FFN channels", nbinsx=50, histnorm="percent", opacity=0.7))
    fig.add_trace(go.Histogram(x=kv_probs, name="KV groups", nbinsx=50, histnorm="percent", opacity=0.7))
    fig.update_layout(barmode="overlay", title="Gate probabilities sigmoid(score / τ)", xaxis_title="probability",
                      yaxis_title="% of units")
    return _compact(fig, "scores")


def grouped_bars(groups: list[str], series: dict[str, list[float | None]], title: str, yaxis: str) -> go.Figure:
    """One bar per series in each group, with the number on the bar."""
    fig = go.Figure()
    for index, (name, values) in enumerate(series.items()):
        fig.add_trace(go.Bar(x=groups, y=values, name=name, marker_color=colour_of(name, index),
                             text=[("–" if v is None else f"{v:.3f}") for v in values], textposition="outside"))
    fig.update_layout(barmode="group", title=title, yaxis_title=yaxis)
    return _compact(fig, title)


def compare_layers_figure(named: dict[str, list[dict]]) -> go.Figure:
    """Per-layer kept fraction of two (or more) runs' reports."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("FFN channels kept (%)", "KV groups kept (%)"))
    for index, (name, layers) in enumerate(named.items()):
        x = [layer["layer"] for layer in layers]
        for col, (kept, before) in enumerate((("ffn_channels", "ffn_channels_before"),
                                              ("kv_groups", "kv_groups_before")), start=1):
            y = [100 * layer[kept] / layer[before] for layer in layers]
            fig.add_trace(go.Bar(x=x, y=y, name=name, showlegend=col == 1, legendgroup=name,
                                 marker_color=PALETTE[index % len(PALETTE)]), row=1, col=col)
    fig.update_layout(barmode="group")
    return _compact(fig, "compare-layers")


def loss_compare_figure(curves: dict[str, list[tuple[int, float]]]) -> go.Figure:
    fig = go.Figure()
    for index, (name, points) in enumerate(curves.items()):
        if points:
            steps, losses = zip(*_thin(points), strict=True)
            fig.add_trace(go.Scatter(x=steps, y=losses, mode="lines", name=name,
                                     line={"color": PALETTE[index % len(PALETTE)]}))
    fig.update_layout(title="Gate-training loss", xaxis_title="step", yaxis_title="next-token loss")
    return _compact(fig, "compare-loss")


def heal_loss_figure(points: list[tuple[int, float]], distill: float = 0.0,
                     holdout: list[tuple[int, float]] | None = None) -> go.Figure:
    """A heal's training loss per step (LoRA on the pruned checkpoint), and its held-out loss where measured."""
    fig = go.Figure()
    if points:
        steps, losses = zip(*_thin(points), strict=True)
        fig.add_trace(go.Scatter(x=steps, y=losses, mode="lines", name="training loss"))
    if holdout:
        steps, losses = zip(*holdout, strict=True)
        fig.add_trace(go.Scatter(x=steps, y=losses, mode="lines+markers", name="held-out next-token loss"))
    label = "next-token loss" if distill == 0 else f"{1 - distill:g} × next-token + {distill:g} × KL to the dense"
    fig.update_layout(title="Healing loss", xaxis_title="step", yaxis_title=label, showlegend=bool(holdout))
    return _compact(fig, "heal-loss")
