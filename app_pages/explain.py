"""Explain: watch GRASPrune work on a model small enough to follow (teaching mode).

Every number comes from the engine (``studio.explain``) running on the chosen model: the ranking
and the budget line, single gate-training steps, one layer's KV groups, scale calibration and folding.
"""

from __future__ import annotations

import streamlit as st

from studio.common import shown_errors
from studio.explain import PAPER_URL, TINY_MODELS
from studio.explain_views import PLAY_EVERY, PLAYING, lab_for, views


def main() -> None:
    st.title("Explain")
    st.markdown(
        f"How GRASPrune decides what to prune, step by step, on a real model: "
        f"[the paper (arXiv 2604.19398)]({PAPER_URL}). Nothing here is canned: the views below run "
        "the same engine code as a prune."
    )
    spec = st.text_input(
        "Model",
        value=next(iter(TINY_MODELS)),
        key="explain_model",
        help="tiny-gqa / tiny-mha: 4-layer Llamas built here (random weights, bytes as tokens, "
        "GQA with 2 query heads per K/V head, or MHA); or smollm2-135m, a folder or a .gguf",
    )
    st.caption(
        f"Choices: {', '.join(TINY_MODELS)} (built in a second), smollm2-135m (the embedded model: "
        "slower, about 1 s a step), a model folder or a .gguf file. Calibration: 16 blocks of 64 tokens "
        "from WikiText-2; scale calibration: 8 more from the other half."
    )
    with shown_errors():  # also when the page runs on its own (AppTest), outside the shell's guard
        lab_for(spec)
        playing = st.session_state.get(PLAYING, False)
        st.fragment(run_every=PLAY_EVERY if playing else None)(views)(playing)


main()
