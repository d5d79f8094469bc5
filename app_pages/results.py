"""Results: the studies measured on this project's machines, each with the command that makes it.

Read-only: the numbers come from the benchmarks' files (``bench/results``); nothing is run from here.
"""

from __future__ import annotations

import streamlit as st

from studio.results_view import (
    FOLDERS,
    ROBUSTNESS_COMMAND,
    heal_figure,
    heal_rows,
    results_folder,
    robustness_rows,
    study_figure,
    study_rows,
    summaries,
)

INTRO = {
    "keep": "How much quality each parameter count keeps: GRASPrune against the two best baselines of the "
            "quality table (Taylor and Wanda-SP, both with our scale calibration), keep ratio 0.9 down to 0.2. "
            "GRASPrune's points are the mean over seeds; the bars span the lowest and highest seed.",
    "calibration": "How much calibration text GRASPrune needs, and whether its domain matters: gate training on "
                   "16, 64 or 256 blocks of WikiText-2 or of C4, every checkpoint evaluated on both.",
    "kvcache": "What pruning KV-head groups does at long context: the KV cache's size after the prompt and the "
               "speed of decoding one token at a time, dense against pruned (keep 0.5).",
}
COMMANDS = {
    "keep": "python -m bench.study keep            # then: python -m bench.study report",
    "calibration": "python -m bench.study calibration   # C4 at 256 blocks needs GRASPRUNE_DATA: docs/studies.md",
    "kvcache": "python -m bench.study kvcache        # after the keep sweep: its keep-0.5 checkpoints",
}
CAPTIONS = {  # one sentence per chart: what it shows
    "keep": "Perplexity (log scale) against the parameters left, a line per method; bars span the seeds.",
    "calibration": "Keep-0.5 perplexity against the gate-training blocks, by calibration domain; bars span the seeds.",
    "kvcache": "The KV cache and the decode speed against the context length, dense and pruned.",
}
HEAL_COMMAND = "python -m bench.heal --checkpoints DIR ... --marks 5,15,30"


def study(name: str, summary: dict | None) -> None:
    title = summary["title"] if summary else FOLDERS[name]
    if not introduced(title, INTRO[name], COMMANDS[name], summary is not None, f"{FOLDERS[name]}/summary.json"):
        return
    st.plotly_chart(study_figure(summary), key=f"results_{name}")
    st.caption(CAPTIONS[name] + " " + summary.get("setting", ""))
    st.dataframe(study_rows(summary), hide_index=True)


def introduced(title: str, caption: str, command: str, measured: bool, writes: str) -> bool:
    """A section's title, what it shows and the command that measures it; whether there is anything to draw."""
    st.subheader(title)
    st.caption(caption)
    st.code(command, language="bash")
    if not measured:
        st.info(f"Not measured yet: the command above writes `bench/results/{writes}`.")
    return measured


def healing(rows: list[dict]) -> None:
    if introduced("Healing: perplexity against minutes of LoRA",
                  "`grasprune heal` on pruned checkpoints, WikiText-2 perplexity before and after each mark of "
                  "training time (the Heal page runs the same).", HEAL_COMMAND, bool(rows), "heal-DATE/heal.json"):
        st.plotly_chart(heal_figure(rows), key="results_heal")
        st.caption("WikiText-2 perplexity of each healed checkpoint after each mark of CPU time (lower is better).")


def robustness(rows: list[dict]) -> None:
    if introduced("One command, one quality: the default prune over seeds and thread counts",
                  "`grasprune prune`'s defaults run once per seed and thread count, WikiText-2 perplexity (64 "
                  "windows of 512): the spread a user should expect from a single run.", ROBUSTNESS_COMMAND,
                  bool(rows), "robustness/summary.json"):
        st.dataframe(rows, hide_index=True)


def main() -> None:
    st.title("Results")
    folder = results_folder()
    st.caption(f"Measured on CPU with the embedded SmolLM2-135M; read from `{folder}`. "
               "Every table of the benchmarks is also in docs/results.md.")
    found = summaries(folder)
    for name in FOLDERS:
        study(name, found.get(name))
    robustness(robustness_rows(folder))
    healing(heal_rows(folder))


main()
