"""Evaluate: dense vs pruned (vs healed) perplexity (WikiText-2, PTB), zero-shot accuracy and generation side by side."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from grasprune.config import resolve_device
from grasprune.errors import UserError
from grasprune.evaluation.generation import generate_text
from grasprune.evaluation.perplexity import EVAL_DATASETS, perplexity
from grasprune.evaluation.zeroshot_tasks import TASKS
from grasprune.runs import evaluations
from grasprune.runs.store import Run
from studio import charts
from studio.common import completed_runs, pick_completed_run, remembered, root, shown_errors
from studio.heal_jobs import latest_healed


@dataclass(frozen=True)
class Compared:
    """A model on the page: its name, its key in the run's stored evaluations, how it loads, where it is."""

    label: str
    key: str
    kind: str  # dense: load_model; pruned: load_pruned (a healed checkpoint is one)
    spec: str


def compared(run: Run) -> list[Compared]:
    """The dense model and the run's checkpoint, and its newest finished heal where there is one (stored
    under the heal job's id, so a later heal is measured afresh)."""
    models = [Compared("dense", "dense", "dense", run.config().model),
              Compared("pruned", "pruned", "pruned", str(run.output_dir()))]
    healed = latest_healed(root(), run.output_dir())
    if healed is not None:
        models.append(Compared("healed", f"healed-{healed.id}", "pruned", str(healed.out)))
    return models


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def load(role: str, spec: str, device: str, trust_remote_code: bool, allow_pickle: bool):
    if role == "pruned":
        from grasprune.method.export import load_pruned

        return load_pruned(spec, device=device)
    from grasprune.method.models import load_model

    return load_model(spec, device=device, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


def model_of(run: Run, model: Compared):
    config = run.config()
    try:
        device = resolve_device(config.device)
    except UserError:
        device = "cpu"
    return load(model.kind, model.spec, device, config.trust_remote_code, config.allow_pickle)


def baseline_series(run: Run, datasets: list[str], seqlen: int, windows: int) -> dict[str, list[float | None]]:
    """Perplexities that baseline runs (other methods) of the same base model recorded after their
    export, at these evaluation settings."""
    base = run.report()["base_model"]
    series = {}
    for other in completed_runs():
        report = other.report()
        if other.id == run.id or report.get("method", "grasprune") == "grasprune" or report["base_model"] != base:
            continue
        metrics = [report["metrics"].get(f"ppl_{d}") for d in datasets]
        values = [m["ppl"] if m and (m["seqlen"], m["windows"]) == (seqlen, windows) else None for m in metrics]
        if any(v is not None for v in values):
            series[f"{report['method']} · keep {report['keep_ratio']:g} · {other.id}"] = values
    return series


def perplexity_section(run: Run) -> None:
    st.subheader("Perplexity")
    c1, c2, c3 = st.columns(3)
    datasets = c1.multiselect("Datasets", list(EVAL_DATASETS), key=remembered("eval_datasets", list(EVAL_DATASETS)))
    seqlen = int(c2.number_input("Sequence length", 16, 32_768, key=remembered("eval_seqlen", 512)))
    windows = int(c3.number_input("Windows", 1, 100_000, key=remembered("eval_windows", 8),
                                  help="windows of the test split scored (all: a large number)"))
    models = compared(run)
    if st.button("Compute perplexity", key="eval_ppl", type="primary"):
        bar = st.progress(0.0, text="starting…")
        for m in models:
            for dataset in datasets:
                if evaluations.ppl_key(m.key, dataset, seqlen, windows) in evaluations.load(run):
                    continue
                model, tokenizer = model_of(run, m)

                def progress(done: int, total: int, label=m.label, dataset=dataset) -> None:
                    bar.progress(done / total, text=f"{label} · {dataset} · window {done}/{total}")

                result = perplexity(model, tokenizer, dataset, seqlen, windows, progress)
                evaluations.record(run, evaluations.ppl_key(m.key, dataset, seqlen, windows), result.to_json())
        bar.empty()
    stored = evaluations.load(run)
    results = {m.label: [stored.get(evaluations.ppl_key(m.key, d, seqlen, windows)) for d in datasets] for m in models}
    if not datasets or not any(r for values in results.values() for r in values):
        st.caption("No perplexity at these settings yet: press Compute.")
        return
    series = {role: [None if r is None else r["ppl"] for r in values] for role, values in results.items()}
    series.update(baseline_series(run, datasets, seqlen, windows))
    st.plotly_chart(charts.grouped_bars(datasets, series, f"Perplexity (seqlen {seqlen}, {windows} windows)",
                                        "perplexity (lower is better)"), width="stretch")
    rows = [{"model": role, "dataset": r["dataset"], "perplexity": round(r["ppl"], 3), "seqlen": r["seqlen"],
             "windows": r["windows"], "tokens scored": r["tokens"]}
            for role, values in results.items() for r in values if r is not None]
    st.dataframe(rows, hide_index=True)


def zeroshot_section(run: Run) -> None:
    from grasprune.evaluation.zeroshot import evaluate_zeroshot

    st.subheader("Zero-shot accuracy")
    c1, c2 = st.columns([3, 1])
    tasks = c1.multiselect("Tasks", list(TASKS), key=remembered("eval_zs_tasks", ["arc_easy", "piqa"]))
    limit = int(c2.number_input("Items per task", 1, 100_000, key=remembered("eval_zs_limit", 20)))
    models = compared(run)
    if st.button("Compute zero-shot accuracy", key="eval_zs"):
        with st.spinner("Scoring…"):
            for m in models:
                todo = [t for t in tasks if evaluations.zeroshot_key(m.key, t, limit) not in evaluations.load(run)]
                if todo:
                    model, tokenizer = model_of(run, m)
                    result = evaluate_zeroshot(model, tokenizer, todo, limit=limit, batch_size=8, progress=False)
                    for task, metrics in result["tasks"].items():
                        evaluations.record(run, evaluations.zeroshot_key(m.key, task, limit), metrics)
    stored = evaluations.load(run)
    series = {m.label: [_accuracy(stored.get(evaluations.zeroshot_key(m.key, t, limit))) for t in tasks]
              for m in models}
    if not tasks or all(v is None for values in series.values() for v in values):
        st.caption("No zero-shot results at these settings yet.")
        return
    st.plotly_chart(charts.grouped_bars(tasks, series, f"Zero-shot accuracy ({limit} items per task)",
                                        "accuracy (acc_norm where defined)"), width="stretch")


def _accuracy(metrics: dict | None) -> float | None:
    if metrics is None:
        return None
    return metrics.get("acc_norm", metrics.get("acc"))


def generation_section(run: Run) -> None:
    st.subheader("Generation")
    prompt = st.text_area("Prompt", key=remembered("eval_prompt", "The capital of France is"))
    tokens = st.slider("New tokens", 8, 256, key=remembered("eval_new_tokens", 48))
    models = compared(run)
    if st.button("Generate with each", key="eval_generate") and prompt.strip():
        with st.spinner(f"Generating with the {', '.join(m.label for m in models)} model…"):
            for m in models:
                key = evaluations.generation_key(m.key, prompt, tokens)
                if key not in evaluations.load(run):
                    model, tokenizer = model_of(run, m)
                    evaluations.record(run, key, {"text": generate_text(model, tokenizer, prompt, tokens)})
    stored = evaluations.load(run)
    generated = {m.label: stored.get(evaluations.generation_key(m.key, prompt, tokens)) for m in models}
    if not any(generated.values()):
        st.caption("No generation for this prompt and length yet.")
        return
    for column, (label, text) in zip(st.columns(len(generated)), generated.items(), strict=True):
        column.markdown(f"**{label}**")
        column.text(prompt + text["text"] if text else "–")


def main() -> None:
    st.title("Evaluate")
    run = pick_completed_run("evaluate_run", "evaluation compares a run's pruned checkpoint with its dense model "
                                             "(and its healed one, once healed)")
    if run is None:
        return
    report = run.report()
    st.caption(f"Base model {report['base_model']} · keep ratio {report['keep_ratio']:g} · "
               f"{report['params']['total_before']:,} → {report['params']['total_after']:,} parameters")
    with shown_errors():
        perplexity_section(run)
    with shown_errors():
        zeroshot_section(run)
    with shown_errors():
        generation_section(run)


main()
