"""The Explain page's four views and the state behind them (one ``Lab`` per browser session).

Buttons act through ``on_click`` callbacks, so the step they take is already visible in the views
drawn above them in the same run. All views live in one fragment: the keep-ratio slider and the step
buttons redraw only the fragment, and while *Play* is on the fragment reruns itself, one step per tick.
"""

from __future__ import annotations

import logging
import math

import pandas as pd
import streamlit as st
import torch

from grasprune.errors import UserError
from grasprune.method.units import FFN
from studio import explain

from . import explain_charts
from .charts import layers_figure
from .common import shown_errors

LOG = logging.getLogger("grasprune.studio")
LAB, PLAYING, ERROR, SCALES = "explain:lab", "explain:playing", "explain:error", "explain:scales"
KEEP = "explain_keep"
DEFAULT_KEEP = 0.5
PLAY_EVERY = 0.7  # seconds between steps while playing
MAX_LISTED = 300  # names of units that moved in one step (every unit of the tiny models)


def lab_for(spec: str) -> explain.Lab:
    """The session's lab for ``spec``: reused while the spec stays, built afresh when it changes."""
    lab = st.session_state.get(LAB)
    if isinstance(lab, explain.Lab) and lab.spec == spec.strip():
        return lab
    st.session_state.pop(LAB, None)
    st.session_state.pop(SCALES, None)
    st.session_state[PLAYING] = False
    with st.spinner(f"Loading {spec} and its calibration text…"):
        lab = explain.open_lab(spec)
    st.session_state[LAB] = lab
    return lab


def views(played: bool) -> None:
    """All four views; ``played`` says whether this fragment was registered to rerun by itself."""
    if st.session_state.get(PLAYING, False) != played:
        st.rerun(scope="app")  # Play or Pause was pressed: re-register the fragment with(out) its timer
    lab = st.session_state[LAB]
    if played:
        _guarded(lambda: lab.stepper.step(_budget(lab)))
    if st.session_state.get(ERROR):
        st.error(st.session_state.pop(ERROR))
    for view in (_ranking_view, _stepping_view, _kv_view, _scales_view):
        with shown_errors():
            view(lab)


def _guarded(action) -> None:
    """Run a callback's work; its error becomes the one line the next run shows (never a traceback)."""
    try:
        action()
    except UserError as err:
        st.session_state[ERROR] = str(err)
        st.session_state[PLAYING] = False
    except Exception as err:
        LOG.exception("explain page error")
        st.session_state[ERROR] = (
            f"Something went wrong ({type(err).__name__}); the details are in the server log."
        )
        st.session_state[PLAYING] = False


def _minimum_keep(lab: explain.Lab) -> float:
    return math.ceil(100 * lab.layout.minimum_params() / lab.layout.prunable_params) / 100


def _keep(lab: explain.Lab) -> float:
    return max(float(st.session_state.get(KEEP, DEFAULT_KEEP)), _minimum_keep(lab))


def _budget(lab: explain.Lab) -> int:
    return lab.layout.budget(_keep(lab))


def _take_steps(count: int) -> None:
    lab = st.session_state[LAB]

    def work():
        for _ in range(count):
            lab.stepper.step(_budget(lab))

    _guarded(work)


def _toggle_play() -> None:
    st.session_state[PLAYING] = not st.session_state.get(PLAYING, False)


def _reset() -> None:
    st.session_state[PLAYING] = False
    st.session_state.pop(SCALES, None)
    st.session_state[LAB].stepper.reset()


def _calibrate() -> None:
    lab = st.session_state[LAB]

    def work():
        mask = explain.ranking(lab.stepper.probs(), lab.layout, _budget(lab)).mask
        st.session_state[SCALES] = explain.calibrate_and_fold(lab, mask)

    _guarded(work)


def _explanation(column, text: str) -> None:
    with column:
        st.markdown(text)


def _names(layout, units: list[int]) -> str:
    shown = ", ".join(explain.unit_name(layout, u) for u in units[:MAX_LISTED])
    more = f", … and {len(units) - MAX_LISTED} more" if len(units) > MAX_LISTED else ""
    return (shown + more) or "none"


def _ranking_view(lab: explain.Lab) -> None:
    layout = lab.layout
    with st.container(border=True, key="explain_ranking"):
        st.subheader("1 · The ranking and the budget")
        left, right = st.columns([3, 1])
        with left:
            minimum = _minimum_keep(lab)
            st.session_state[KEEP] = _keep(lab)  # a model with a larger minimum moves the slider up
            keep = st.slider(
                "Keep ratio",
                minimum,
                1.0,
                step=0.01,
                key=KEEP,
                help="Fraction of the prunable parameters kept: B = floor(keep ratio × P)",
            )
            r = explain.ranking(lab.stepper.probs(), layout, layout.budget(keep))
            kept_params = layout.kept_params(r.mask)
            cols = st.columns(3)
            cols[0].metric("Budget B (parameters)", f"{r.budget:,}")
            cols[1].metric("Kept (parameters)", f"{kept_params:,}")
            cols[2].metric("Units kept", f"{r.cut:,} of {layout.num_units:,}")
            st.plotly_chart(explain_charts.ranking_figure(r, layout), width="stretch")
            ffn, kv = layout.kept_counts(r.mask)
            shapes = [s.__dict__ for s in layout.shapes]
            st.plotly_chart(layers_figure(shapes, ffn, kv, "Kept per layer at this budget"), width="stretch")
            st.table(
                pd.DataFrame(
                    {
                        "layer": range(layout.num_layers),
                        "FFN channels kept": ffn,
                        "FFN channels": [s.ffn_channels for s in layout.shapes],
                        "KV groups kept": kv,
                        "KV groups": [s.kv_groups for s in layout.shapes],
                    }
                ),
                hide_index=True,
            )
        _explanation(
            right,
            f"""
**What you see.** Every prunable unit of every layer ({layout.num_units:,}: FFN channels and KV groups),
one bar each, as the projection spends the budget: first each layer's best FFN channel and best KV
group (reserved, so no layer is emptied), then all the others by gate probability. A bar is as wide
as the parameters the unit carries, so a KV group is {layout.kv_costs[0] // layout.ffn_costs[0]}×
wider than an FFN channel here. Units left of the dashed budget line are kept: the mask is the longest
prefix that fits.

**Try.** Move the slider: the line moves and the units and per-layer counts recolour. Press *Step*
below a few times and come back: the order changes as the scores learn. Before any step every
probability is 0.5 and the tie-break alone (units spread evenly across layers) orders them.
""",
        )


def _stepping_view(lab: explain.Lab) -> None:
    stepper = lab.stepper
    playing = st.session_state.get(PLAYING, False)
    with st.container(border=True, key="explain_stepping"):
        st.subheader("2 · One step, slowed down")
        left, right = st.columns([3, 1])
        with left:
            buttons = st.columns(4)
            buttons[0].button("Step", key="explain_step", on_click=_take_steps, args=(1,), disabled=playing)
            buttons[1].button(
                "10 steps", key="explain_step10", on_click=_take_steps, args=(10,), disabled=playing
            )
            buttons[2].button(
                "Pause" if playing else "Play",
                key="explain_play",
                on_click=_toggle_play,
                icon=":material/pause:" if playing else ":material/play_arrow:",
            )
            buttons[3].button("Reset", key="explain_reset", on_click=_reset)
            record = stepper.last
            if record is None:
                st.info(
                    "No step yet: press Step. Each step draws one calibration block, computes the hard "
                    "mask from the scores, runs the model with it and updates the scores once (AdamW)."
                )
            else:
                _step_details(lab, record)
        _explanation(
            right,
            f"""
**What you see.** One gate-training step at the current budget: block {stepper.blocks.shape[1]}
tokens long, loss = next-token cross-entropy of the model with the hard mask, then one AdamW update
of the scores (lr {stepper.cfg.lr:g}, τ = {stepper.cfg.tau:g}). The gradient is the one autograd
delivered to each score. *Entered / left* compare this step's mask with the mask the updated scores
give.

**The straight-through trick.** The forward pass uses `z = m + p − p.detach()`: its value is the hard
gate `m` (0 or 1), but its gradient is that of `p`. So a pruned unit (`m = 0`, contributing nothing)
still learns how much the loss would change if it came back (`dL/dz`), and its score moves by
`dL/dz · p(1 − p)/τ`: pruned units can return.

**Try.** Step once and read the table below the chart; press *Play* and watch the loss and the churn
settle.
""",
        )


def _step_details(lab: explain.Lab, record: explain.StepRecord) -> None:
    layout = lab.layout
    cols = st.columns(4)
    cols[0].metric("Step", f"{record.step}")
    cols[1].metric("Loss", f"{record.loss:.4f}")
    cols[2].metric("Entered the mask", f"{len(record.entered)}")
    cols[3].metric("Left the mask", f"{len(record.left)}")
    with st.container(key="explain_moves"):
        st.markdown(f"**Entered at step {record.step}:** {_names(layout, record.entered)}")
        st.markdown(f"**Left at step {record.step}:** {_names(layout, record.left)}")
    st.caption(f"Block {record.block} of the calibration text, budget {record.budget:,} parameters.")
    st.plotly_chart(explain_charts.gradient_figure(record, layout), width="stretch")
    if len(lab.stepper.losses) > 1:
        st.plotly_chart(explain_charts.loss_figure(lab.stepper.losses), width="stretch")
    pruned = torch.nonzero(record.mask == 0).flatten()
    if pruned.numel() == 0:
        st.caption("Nothing is pruned at this budget: lower the keep ratio to see the STE at work.")
        return
    strongest = pruned[record.score_grad[pruned].abs().argsort(descending=True)][:20].tolist()
    unit = st.selectbox(
        "A pruned unit (hard gate 0): the 20 with the largest gradient",
        strongest,
        key="explain_ste_unit",
        format_func=lambda u: explain.unit_name(layout, u),
    )
    chain = explain.ste_chain(record, unit if unit in strongest else strongest[0])
    direction = "up (towards coming back)" if chain.autograd < 0 else "down (further out)"
    st.table(
        pd.DataFrame(
            {
                "quantity": [
                    "hard gate m (forward)",
                    "z = m + p − p.detach() (forward value)",
                    "p = sigmoid(s/τ)",
                    "dL/dz (loss sensitivity to the gate)",
                    "dp/ds = p(1 − p)/τ",
                    "dL/ds = dL/dz · dp/ds",
                    "dL/ds from autograd",
                ],
                "value": [
                    f"{chain.hard_gate:g}",
                    f"{chain.hard_gate:g}",
                    f"{chain.prob:.6f}",
                    f"{chain.gate_grad:.6e}",
                    f"{chain.sigmoid_slope:.6f}",
                    f"{chain.chained:.6e}",
                    f"{chain.autograd:.6e}",
                ],
            }
        ),
        hide_index=True,
    )
    st.caption(
        f"{explain.unit_name(layout, chain.unit)} contributed nothing to this step's output, yet its "
        f"score received a gradient; on its own it pushes the score {direction} (AdamW's update also carries "
        "momentum from earlier steps)."
    )


def _kv_view(lab: explain.Lab) -> None:
    adapter, layout = lab.adapter, lab.layout
    with st.container(border=True, key="explain_kv"):
        st.subheader("3 · What a KV group is")
        left, right = st.columns([3, 1])
        with left:
            layer = st.selectbox("Layer", list(range(layout.num_layers)), key="explain_kv_layer")
            shape = layout.shapes[layer]
            mask = explain.ranking(lab.stepper.probs(), layout, _budget(lab)).mask
            groups = explain.kv_groups(adapter, layout, layer, mask)
            st.markdown(
                f"Layer {layer}: **{shape.q_heads} query heads, {shape.kv_groups} K/V heads**, head size "
                f"{adapter.head_dim}, hidden size {adapter.hidden}: "
                f"{explain.attention_kind(shape.q_heads, shape.kv_groups)}."
            )
            st.plotly_chart(explain_charts.kv_figure(groups, layer), width="stretch")
            table = pd.DataFrame(
                [
                    {
                        "group": g.index,
                        "query heads": ", ".join(map(str, g.query_heads)),
                        **g.params,
                        "parameters": g.total,
                        "kept": "yes" if g.kept else "no",
                    }
                    for g in groups
                ]
            )
            st.table(table, hide_index=True)
        ffn_cost = layout.ffn_costs[layer]
        _explanation(
            right,
            f"""
**What you see.** In grouped-query attention several query heads read the same key and value head.
Removing that K/V head only makes sense together with the query heads that read it, so they form
one unit: K head, V head, its {adapter.group_size} query head(s) and their `o_proj` columns. Its gate
multiplies both keys and values: a gated-off group has all-zero values, so its heads output exactly
zero and the masked model equals the sliced one.

One group here carries {layout.kv_costs[layer]:,} parameters; one FFN channel {ffn_cost:,} (a row of
`gate_proj` and `up_proj`, a column of `down_proj`): a group is worth
{layout.kv_costs[layer] / ffn_cost:.1f} channels in the budget.

**Try.** Compare `tiny-gqa` with `tiny-mha` (every query head its own K/V head), and pick another layer.
""",
        )


def _scales_view(lab: explain.Lab) -> None:
    layout = lab.layout
    with st.container(border=True, key="explain_scales"):
        st.subheader("4 · Scale calibration and folding")
        left, right = st.columns([3, 1])
        with left:
            st.button("Calibrate scales for the current mask", key="explain_calibrate", on_click=_calibrate)
            report = st.session_state.get(SCALES)
            if report is None:
                st.info(
                    "Press the button: the current mask is fixed, every kept unit gets a scale γ (starting at "
                    "1), one epoch of training on the other half of the text fits them, then they are folded "
                    "into the weights and the sliced model is compared with the gated one."
                )
            else:
                current = explain.ranking(lab.stepper.probs(), layout, _budget(lab)).mask
                cols = st.columns(3)
                cols[0].metric("Loss with γ = 1", f"{report.loss_before:.4f}")
                cols[1].metric("Loss with calibrated γ", f"{report.loss_after:.4f}")
                cols[2].metric("Max |folded − gated| logit", f"{report.max_diff:.2e}")
                kept = report.mask > 0
                ffn = kept & (layout.kind == FFN)
                st.markdown(
                    f"Mask of step {report.step}: {int(ffn.sum())} FFN channels and "
                    f"{int((kept & ~ffn).sum())} KV groups kept. γ after calibration: "
                    f"min {float(report.gamma[kept].min()):.4f}, max {float(report.gamma[kept].max()):.4f}. "
                    f"Losses: mean over the {lab.rescale.shape[0]} scale-calibration blocks."
                )
                st.plotly_chart(explain_charts.scales_figure(report, layout), width="stretch")
                if not torch.equal(current, report.mask):
                    st.caption("The mask has changed since this calibration: press the button again.")
        _explanation(
            right,
            """
**What you see.** Pruning removes some of what every layer adds up; a scale per kept unit,
`γ = 1 + 0.5·tanh(r)` (between 0.5 and 1.5, starting at 1), lets the rest compensate. With the
mask fixed the scales are trained with the same loss and optimiser.

**Folding.** An FFN scale multiplies one column of `down_proj`; a KV scale the rows of its group in
`k_proj` and `v_proj` (exact, because RoPE is linear; Qwen3 folds it into `v_proj` only, as its
`k_norm` would divide a key scale away). The exported model is then the original with
the pruned rows and columns cut out: no gates, no scales, same outputs. The max difference printed is
between the logits of that sliced model, built here in memory, and the gated, scaled one (fp32).
""",
        )
