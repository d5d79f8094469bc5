"""Home: what GRASPrune does, the way through the pages, the runs so far and the same from a terminal."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from grasprune.cli.command import prune_command
from grasprune.config import PruneConfig
from grasprune.method.models import EMBEDDED_ALIAS
from grasprune.runs.store import list_runs
from studio.common import PAGES, attached_run_id, describe, root
from studio.defaults import QUICK
from studio.shell import ICONS, TITLES

RECENT = 5
STEPS = {
    "prune": "choose a model and a keep ratio, start a run and watch the gates train.",
    "inspect": "what each layer kept: mask heatmaps, kept counts per layer, gate scores.",
    "evaluate": "dense against pruned: perplexity, zero-shot accuracy, generated text.",
    "heal": "optional: a short LoRA fine-tune that wins back part of the lost quality, merged in.",
    "export": "the checkpoint as one file, with the two lines of Python that load it.",
}
OUT = Path("pruned-0.7")


def introduction() -> None:
    st.markdown(
        "GRASPrune makes a language model smaller by removing whole units from its layers: **FFN channels** "
        "(one hidden unit of a feed-forward block) and **KV-head groups** (a key and a value head with the "
        "query heads that share them). You set **one global parameter budget**, the keep ratio: the fraction "
        "of the prunable parameters kept. **Learned gates**, trained on a little calibration text while the "
        "model stays frozen, decide which units fill that budget, so some layers keep more than others. "
        "The result is a smaller **dense checkpoint** (plain smaller matrices, no sparse kernels) that loads "
        "like any Hugging Face model: `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`, "
        "or `grasprune.load_pruned(path)` without remote code."
    )


def flow() -> None:
    st.subheader("Prune → Inspect → Evaluate → Heal → Export")
    for column, (name, what) in zip(st.columns(len(STEPS)), STEPS.items(), strict=True):
        column.page_link(PAGES[name], label=TITLES[name], icon=ICONS[name])
        column.caption(what)
    if st.button("Start pruning", type="primary", key="home_start", icon=ICONS["prune"]):
        st.switch_page(PAGES["prune"])
    st.markdown("New to structured pruning? **Explain** runs the method step by step on a model small "
                "enough to follow: the ranking and the budget line, single gate-training steps, the scales.")
    st.page_link(PAGES["explain"], label=TITLES["explain"], icon=ICONS["explain"])
    st.markdown("Choosing a budget? **Results** plots what this project measured: perplexity against "
                "parameters from keep 0.9 to 0.2 (over seeds, against the best baselines), calibration size and "
                "domain, KV-cache size and decode speed at long context, and healing over time.")
    st.page_link(PAGES["results"], label=TITLES["results"], icon=ICONS["results"])


def recent_runs() -> None:
    st.subheader("Runs so far")
    runs = list_runs(root())
    if not runs:
        st.caption("No runs yet: the first one takes a few minutes on CPU with the Prune page's settings.")
        return
    completed = sum(run.status().get("status") == "completed" for run in runs)
    st.caption(f"{len(runs)} run{'s' * (len(runs) != 1)}, {completed} completed; the newest first:")
    for run in runs[:RECENT]:
        st.page_link(PAGES["prune"], label=describe(run), query_params={"run": run.id}, icon=ICONS["prune"])
    st.page_link(PAGES["runs"], label="All runs: compare, resume, delete", icon=ICONS["runs"])


def command_line() -> None:
    st.subheader("The same from a terminal")
    commands = [
        prune_command(PruneConfig(model=EMBEDDED_ALIAS, **QUICK), OUT),
        f"grasprune inspect {OUT}",
        f"grasprune ppl --model {OUT} --dataset wikitext2 --seqlen 512 --max-windows 64",
        f"grasprune zeroshot --model {OUT} --tasks arc_easy,piqa --limit 200",
    ]
    st.code("\n".join(commands), language="bash")
    st.caption("The first line is the Prune page's starting run; the Prune page shows the command for "
               "whatever you set.")


def main() -> None:
    run_id = attached_run_id()
    if run_id is not None:  # a link to a run (`/?run=<id>`) opens the run, as it did before this page
        st.switch_page(PAGES["prune"], query_params={"run": run_id})
    st.title("GRASPrune Studio")
    introduction()
    flow()
    recent_runs()
    command_line()


main()
