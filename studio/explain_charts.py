"""Plotly figures of the Explain page, drawn from ``studio.explain`` results (no Streamlit here).

Big models have tens of thousands of units: the ranking then merges runs of neighbouring bars of
the same colour (widths add up, so the budget line stays exact) and the per-unit scatters use WebGL.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import torch

from grasprune.method.units import FFN, UnitLayout
from studio.explain import KVGroup, Ranking, ScaleReport, StepRecord, unit_name

MAX_BARS = 1500
MAX_SVG_POINTS = 3000
COLOURS = {
    "reserved (best FFN channel / KV group of its layer)": "#08306b",
    "kept FFN channel": "#1f77b4",
    "kept KV group": "#9467bd",
    "pruned FFN channel": "#f4a582",
    "pruned KV group": "#d6604d",
}
KEPT_COLOUR, PRUNED_COLOUR = "#1f77b4", "#f4a582"


def _compact(fig: go.Figure, revision: str, height: int = 320) -> go.Figure:
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 80, "b": 10},
        uirevision=revision,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
        title={"y": 0.98, "yanchor": "top"},
    )
    return fig


def _category(r: Ranking, layout: UnitLayout) -> list[str]:
    names = list(COLOURS)
    kinds = layout.kind[r.units]
    return [
        names[0] if reserved else names[1 + 2 * (not kept) + int(kind != FFN)]
        for reserved, kept, kind in zip(r.reserved.tolist(), r.kept.tolist(), kinds.tolist(), strict=True)
    ]


def _merged_bars(r: Ranking, layout: UnitLayout) -> dict[str, dict[str, list]]:
    """Per category: bar centres, widths, heights and hover labels; consecutive bars of one category
    merge into chunks of at most ``ceil(units / MAX_BARS)`` (height: their mean probability)."""
    categories = _category(r, layout)
    chunk = max(1, math.ceil(len(categories) / MAX_BARS))
    bars: dict[str, dict[str, list]] = {name: {"x": [], "width": [], "y": [], "text": []} for name in COLOURS}
    start = 0
    while start < len(categories):
        end = start + 1
        while end < len(categories) and end - start < chunk and categories[end] == categories[start]:
            end += 1
        left, width = int(r.start[start]), int(r.cost[start:end].sum())
        entry = bars[categories[start]]
        entry["x"].append(left + width / 2)
        entry["width"].append(width)
        entry["y"].append(float(r.probs[start:end].mean()))
        if end - start == 1:
            unit = int(r.units[start])
            entry["text"].append(
                f"#{start + 1} {unit_name(layout, unit)}: p = {float(r.probs[start]):.4f}, "
                f"{width:,} params, from {left:,}"
            )
        else:
            entry["text"].append(
                f"#{start + 1}–#{end} ({end - start} units): {width:,} params, from {left:,}"
            )
        start = end
    return bars


def _probability_range(probs: torch.Tensor) -> list[float]:
    """The y range: the probabilities' own span (they start tied at 0.5 and move slowly), within [0, 1]."""
    low, high = float(probs.min()), float(probs.max())
    pad = max(0.01, 0.1 * (high - low))
    return [max(0.0, low - pad), min(1.0, high + pad)]


def ranking_figure(r: Ranking, layout: UnitLayout) -> go.Figure:
    fig = go.Figure()
    for name, bars in _merged_bars(r, layout).items():
        if bars["x"]:
            fig.add_trace(
                go.Bar(
                    x=bars["x"],
                    width=bars["width"],
                    y=bars["y"],
                    name=name,
                    hovertext=bars["text"],
                    hoverinfo="text",
                    marker_color=COLOURS[name],
                    marker_line_width=0,
                )
            )
    fig.add_vline(
        x=r.budget,
        line_dash="dash",
        line_color="black",
        line_width=2,
        annotation_text=f"budget B = {r.budget:,}",
        annotation_position="top left",
    )
    fig.update_layout(
        title="Ranking: bar width = parameters, height = gate probability",
        bargap=0,
        xaxis_title="parameters spent (cumulative, in ranking order)",
        yaxis_title="p = sigmoid(s / τ) (zoomed)",
        yaxis_range=_probability_range(r.probs),
    )
    fig = _compact(fig, "explain-ranking", height=380)
    fig.update_layout(margin={"t": 110})  # room for a three-row legend under the title
    return fig


def _layer_edges(layout: UnitLayout) -> list[int]:
    sizes = torch.tensor(layout.sizes).view(-1, 2).sum(1)
    return torch.cumsum(sizes, 0)[:-1].tolist()


def gradient_figure(record: StepRecord, layout: UnitLayout) -> go.Figure:
    """dL/ds per unit (layout order), coloured by the hard gate of the forward pass; on big models only
    the ``MAX_SVG_POINTS`` largest gradients (the title says so)."""
    n = layout.num_units
    shown = torch.ones(n, dtype=torch.bool)
    if n > MAX_SVG_POINTS:
        shown = torch.zeros(n, dtype=torch.bool)
        shown[record.score_grad.abs().topk(MAX_SVG_POINTS).indices] = True
    moved = torch.zeros(n, dtype=torch.bool)
    grad = record.score_grad.tolist()
    fig = go.Figure()
    groups = (
        ("kept (m = 1)", record.mask > 0, KEPT_COLOUR, "circle"),
        ("pruned (m = 0)", record.mask == 0, PRUNED_COLOUR, "circle"),
        (
            "entered the mask",
            moved.index_fill(0, torch.tensor(record.entered, dtype=torch.long), True),
            "#2ca02c",
            "triangle-up",
        ),
        (
            "left the mask",
            moved.index_fill(0, torch.tensor(record.left, dtype=torch.long), True),
            "#d62728",
            "triangle-down",
        ),
    )
    for name, members, colour, symbol in groups:
        units = torch.nonzero(members & shown).flatten().tolist()
        fig.add_trace(
            go.Scatter(
                x=units,
                y=[grad[u] for u in units],
                mode="markers",
                name=name,
                marker={"color": colour, "symbol": symbol, "size": 6 if symbol == "circle" else 10},
                hovertext=[unit_name(layout, u) for u in units],
                hoverinfo="text+y",
            )
        )
    for edge in _layer_edges(layout):
        fig.add_vline(x=edge - 0.5, line_dash="dot", line_color="#999999", line_width=1)
    fig.add_hline(y=0, line_color="#666666", line_width=1)
    which = (
        "each score"
        if n <= MAX_SVG_POINTS
        else f"the {MAX_SVG_POINTS:,} scores with the largest |dL/ds| (of {n:,})"
    )
    fig.update_layout(
        title=f"Gradient reaching {which} at step {record.step} (dL/ds; layers split by dots)",
        xaxis_title="unit (per layer: FFN channels, then KV groups)",
        yaxis_title="dL/ds",
    )
    return _compact(fig, "explain-gradient")


def loss_figure(losses: list[float]) -> go.Figure:
    fig = go.Figure(
        go.Scatter(x=list(range(1, len(losses) + 1)), y=losses, mode="lines+markers", name="loss")
    )
    fig.update_layout(
        title="Loss per step", xaxis_title="step", yaxis_title="next-token loss", showlegend=False
    )
    return _compact(fig, "explain-loss", height=240)


def _box(fig: go.Figure, x0: float, x1: float, y0: float, y1: float, fill: str, line: dict) -> None:
    fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, fillcolor=fill, line=line, layer="below")


def kv_figure(groups: list[KVGroup], layer: int) -> go.Figure:
    """Query heads above the K and V head they read; one box per group, coloured kept or pruned."""
    fig = go.Figure()
    labels: list[tuple[float, float, str]] = []
    x = 0.0
    for group in groups:
        width = len(group.query_heads)
        middle = x + (width - 0.1) / 2
        outline = {"color": KEPT_COLOUR if group.kept else PRUNED_COLOUR, "width": 3}
        _box(fig, x - 0.15, x + width + 0.05, -0.2, 3.1, "rgba(0,0,0,0)", outline)
        for j, head in enumerate(group.query_heads):
            _box(fig, x + j, x + j + 0.9, 2, 2.9, "#c6dbef", {"width": 1})
            labels.append((x + j + 0.45, 2.45, f"Q{head}"))
        for row, name in ((1, "K"), (0, "V")):
            _box(fig, x, x + width - 0.1, row, row + 0.9, "#dadaeb", {"width": 1})
            labels.append((middle, row + 0.45, f"{name}{group.index}"))
        state = "kept" if group.kept else "pruned"
        labels.append((middle, 3.4, f"<b>group {group.index}</b> ({state})<br>{group.total:,} params"))
        x += width + 0.6
    xs, ys, texts = zip(*labels, strict=True)
    fig.add_trace(go.Scatter(x=xs, y=ys, text=texts, mode="text", hoverinfo="skip", showlegend=False))
    fig.update_xaxes(visible=False, range=[-0.4, x - 0.3])
    fig.update_yaxes(visible=False, range=[-0.4, 3.9])
    fig.update_layout(
        title=f"Layer {layer}: query heads grouped by the K/V head they share", plot_bgcolor="white"
    )
    return _compact(fig, f"explain-kv-{layer}", height=300)


def scales_figure(report: ScaleReport, layout: UnitLayout) -> go.Figure:
    """gamma of every kept unit after calibration; before calibration every gamma is 1."""
    kept = torch.nonzero(report.mask > 0).flatten()
    scatter = go.Scattergl if kept.numel() > MAX_SVG_POINTS else go.Scatter
    fig = go.Figure()
    for name, kind, colour in (("FFN channels", FFN, KEPT_COLOUR), ("KV groups", 1 - FFN, "#9467bd")):
        units = kept[layout.kind[kept] == kind].tolist()
        fig.add_trace(
            scatter(
                x=units,
                y=report.gamma[units].tolist(),
                mode="markers",
                name=f"{name}: γ after",
                marker={"color": colour, "size": 7 if kind == FFN else 11},
                hovertext=[unit_name(layout, u) for u in units],
                hoverinfo="text+y",
            )
        )
    fig.add_hline(
        y=1.0,
        line_dash="dash",
        line_color="black",
        annotation_text="before: γ = 1 for every unit",
        annotation_position="top left",
    )
    for edge in _layer_edges(layout):
        fig.add_vline(x=edge - 0.5, line_dash="dot", line_color="#999999", line_width=1)
    fig.update_layout(
        title="Scales of the kept units, before and after calibration",
        xaxis_title="unit (per layer: FFN channels, then KV groups)",
        yaxis_title="γ = 1 + 0.5·tanh(r)",
    )
    return _compact(fig, "explain-scales")
