"""Inspect: the mask (layer × FFN channel, layer × KV group), kept counts per layer, how the mask
changed while the gates trained, and the gate-score histogram."""

from __future__ import annotations

import streamlit as st

from grasprune.runs.store import list_runs
from studio import charts
from studio.common import PAGES, pick_run, root, timeline
from studio.mask_view import mask_view


def main() -> None:
    st.title("Inspect")
    runs = [r for r in list_runs(root()) if r.scores_path.is_file() or r.events_path.is_file()]
    newest_completed = next((r for r in runs if r.status().get("status") == "completed"), None)
    run = pick_run("Run", runs, key="inspect_run", default=newest_completed)
    if run is None:
        st.info("No runs yet: start one on the Prune page.")
        st.page_link(PAGES["prune"], label="Prune a model")
        return
    tl = timeline(run)
    if tl.model is None:
        st.info("This run has not loaded its model yet: nothing to inspect.")
        return
    layers = tl.model["layers"]
    if run.scores_path.is_file():
        view = mask_view(run, layers)
        kept_ffn = [int(v) for v in (view.ffn == 1).sum(axis=1)]
        kept_kv = [int(v) for v in (view.kv == 1).sum(axis=1)]
        st.plotly_chart(charts.layers_figure(layers, kept_ffn, kept_kv, "Final mask: kept per layer"),
                        width="stretch")
        st.caption("How many FFN channels and KV groups each layer kept (blue) of the ones it had (grey).")
        left, right = st.columns([3, 1])
        left.plotly_chart(charts.mask_heatmap(view.ffn, "Mask: layer × FFN channel", "channel"), width="stretch")
        right.plotly_chart(charts.mask_heatmap(view.kv, "Mask: layer × KV group", "group"), width="stretch")
        st.caption("Every unit of every layer, kept or pruned: which channels and KV groups the mask removed.")
        st.plotly_chart(charts.score_histogram(view.ffn_probs, view.kv_probs), width="stretch")
        st.caption("The gate probabilities at the end of training: kept units sit high, pruned ones low; units "
                   "near the budget line are the close calls.")
    else:
        st.info("The final mask appears when gate training ends; below is how it is moving so far.")
    if tl.kept_history:
        st.plotly_chart(charts.kept_history_figure(tl.kept_history, layers), width="stretch")
        st.caption("Each layer's kept share along gate training: where the budget moved between layers.")
    if tl.churn:
        st.plotly_chart(charts.churn_figure(tl.churn), width="stretch")
        st.caption("Units that changed side at each step: the mask settling (or not) as training goes on.")


main()
