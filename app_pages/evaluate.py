"""Evaluate: dense vs pruned (vs healed) perplexity (WikiText-2, PTB), zero-shot accuracy and generation side by side."""

from __future__ import annotations

import streamlit as st

from grasprune.evaluation.generation import Sampling
from grasprune.evaluation.perplexity import EVAL_DATASETS
from grasprune.evaluation.zeroshot_tasks import TASKS
from grasprune.runs import evaluations
from grasprune.runs.cli_jobs import registry
from grasprune.runs.processes import log_tail
from grasprune.runs.run_evaluation import Compared, Request, compared_models
from grasprune.runs.store import Run
from studio import charts
from studio.common import completed_runs, pick_completed_run, remembered, root, shown_errors
from studio.evaluate_jobs import KIND, create_evaluate_job, latest_evaluate_job, read_evaluation_progress
from studio.heal_jobs import latest_healed


def compared(run: Run) -> list[Compared]:
    """The dense model and the run's checkpoint, and its newest finished heal where there is one (stored
    under the heal job's id, so a later heal is measured afresh)."""
    healed = latest_healed(root(), run.output_dir())
    return compared_models(run, {f"healed-{healed.id}": healed.out} if healed is not None else None)


def start(run: Run, models: list[Compared], request: Request, what: str) -> None:
    """Start ``grasprune evaluate`` for what is missing, as a background job: a refresh, another page or another
    button does not lose it (a second evaluation waits until this one ends)."""
    if all(key in evaluations.load(run) for m in models for _, key, _ in request.keys(m)):
        return  # everything asked is stored already: nothing to start
    jobs = registry()
    jobs.check_free(KIND)
    jobs.launch(create_evaluate_job(root(), run, models, request, what))
    st.rerun()


def adopt_settings(job) -> None:
    """A session that finds a job running (a refresh, a second tab) takes its settings once, so the results
    it brings are the ones the page then shows."""
    if st.session_state.get("eval_adopted_job") == job.id:
        return
    settings = job.spec().get("settings") or {}
    if job.spec().get("what") == "perplexity" and settings.get("datasets"):
        st.session_state.update(eval_datasets=settings["datasets"], eval_seqlen=settings["seqlen"],
                                eval_windows=settings["windows"])
    elif job.spec().get("what") == "zero-shot accuracy" and settings.get("tasks"):
        st.session_state.update(eval_zs_tasks=settings["tasks"], eval_zs_limit=settings["limit"])
    st.session_state.update(eval_adopted_job=job.id, eval_protocol_run=job.spec().get("run"))  # not reset to the run's


def job_panel(run: Run) -> None:
    """The run's evaluation job: live while it runs (with Stop), then how it ended when it did not finish."""
    job = latest_evaluate_job(root(), run.id)
    if job is None:
        return
    if registry().alive(job):
        adopt_settings(job)
        _live_job(run.id)
        return
    progress = read_evaluation_progress(job.events_path)
    state = registry().state(job, progress)
    if state == "stopped":
        st.info(f"The last evaluation ({job.spec().get('what')}) was stopped after {progress.stored} of "
                f"{progress.total} results; the finished ones are shown below. Press its button again for the rest.")
    elif state in ("failed", "interrupted"):
        st.error(f"The last evaluation ({job.spec().get('what')}) {state}: {progress.message or 'see its log'}")
        tail = log_tail(job.log_path, lines=8)
        if tail:
            st.code(tail, language=None)


@st.fragment(run_every=1)
def _live_job(run_id: str) -> None:
    job = latest_evaluate_job(root(), run_id)
    if job is None or not registry().alive(job):
        st.rerun(scope="app")  # ended: draw the page once with its results
    progress = read_evaluation_progress(job.events_path)
    item = progress.item or {}
    now = f"{item.get('model')} · {item.get('name')}" if item else "loading"
    window = f" · window {progress.window[0]}/{progress.window[1]}" if progress.window else ""
    fraction = progress.stored / progress.total if progress.total else 0.0
    st.progress(fraction, text=f"Evaluating ({job.spec().get('what')}): {now}{window} · "
                               f"{progress.stored} of {progress.total or '?'} results stored")
    if registry().stopping(job):
        st.caption("Stopping after the current window…")
    elif st.button("Stop the evaluation", key="eval_stop"):
        registry().stop(job)
        st.rerun(scope="fragment")


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


def own_protocol(run: Run) -> tuple[int, int]:
    """The run's perplexity setting: ``(seqlen, windows)`` (its report's numbers; 64 windows where unset)."""
    config = run.config()
    return config.eval_seqlen, config.eval_windows or 64


def set_protocol(seqlen: int, windows: int) -> None:
    """Set the perplexity settings (a protocol button's callback: before the widgets are drawn)."""
    st.session_state.update(eval_seqlen=seqlen, eval_windows=windows)


def run_protocol(run: Run) -> None:
    """Picking a run sets the perplexity settings to the run's own, so the same model shows the same number
    here as on the Prune and Runs pages until the user changes them."""
    if st.session_state.get("eval_protocol_run") != run.id:
        set_protocol(*own_protocol(run))
        st.session_state["eval_protocol_run"] = run.id


def perplexity_section(run: Run, models: list[Compared]) -> None:
    st.subheader("Perplexity")
    run_protocol(run)
    own = own_protocol(run)
    left, right = st.columns(2)
    left.button("The run's own protocol", key="eval_protocol_run_button", on_click=set_protocol, args=own,
                help=f"seqlen {own[0]}, {own[1]} windows: the numbers on the Prune and Runs pages")
    right.button("The README's protocol (512 × 64)", key="eval_protocol_readme", on_click=set_protocol, args=(512, 64),
                 help="seqlen 512, 64 windows: the numbers in the README and docs/results.md")
    c1, c2, c3 = st.columns(3)
    datasets = c1.multiselect("Datasets", list(EVAL_DATASETS), key=remembered("eval_datasets", list(EVAL_DATASETS)))
    seqlen = int(c2.number_input("Sequence length", 16, 32_768, key=remembered("eval_seqlen", 512)))
    windows = int(c3.number_input("Windows", 1, 100_000, key=remembered("eval_windows", 64),
                                  help="windows of the test split scored (the run's own setting by default; all: a "
                                       "large number)"))
    if st.button("Compute perplexity", key="eval_ppl", type="primary") and datasets:
        start(run, models, Request(datasets=tuple(datasets), seqlen=seqlen, windows=windows), "perplexity")
    stored = evaluations.load(run)
    results = {m.label: [stored.get(evaluations.ppl_key(m.key, d, seqlen, windows)) for d in datasets] for m in models}
    if not datasets or not any(r for values in results.values() for r in values):
        st.caption("No perplexity at these settings yet: press Compute.")
        return
    series = {role: [None if r is None else r["ppl"] for r in values] for role, values in results.items()}
    series.update(baseline_series(run, datasets, seqlen, windows))
    st.plotly_chart(charts.grouped_bars(datasets, series, f"Perplexity (seqlen {seqlen}, {windows} windows)",
                                        "perplexity (lower is better)"), width="stretch")
    st.caption("Each model's perplexity per dataset at these settings (the same colour per model on every page).")
    rows = [{"model": role, "dataset": r["dataset"], "perplexity": round(r["ppl"], 3), "seqlen": r["seqlen"],
             "windows": r["windows"], "tokens scored": r["tokens"]}
            for role, values in results.items() for r in values if r is not None]
    st.dataframe(rows, hide_index=True)


def zeroshot_section(run: Run, models: list[Compared]) -> None:
    st.subheader("Zero-shot accuracy")
    c1, c2 = st.columns([3, 1])
    tasks = c1.multiselect("Tasks", list(TASKS), key=remembered("eval_zs_tasks", ["arc_easy", "piqa"]))
    limit = int(c2.number_input("Items per task", 1, 100_000, key=remembered("eval_zs_limit", 20)))
    if st.button("Compute zero-shot accuracy", key="eval_zs") and tasks:
        start(run, models, Request(tasks=tuple(tasks), limit=limit), "zero-shot accuracy")
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


def sampling_inputs() -> Sampling:
    """One setting for every model side by side: greedy by default, with a repetition penalty and no repeated
    3-gram, which keep a small pruned model out of loops."""
    d = Sampling()
    with st.expander("Decoding"):
        c1, c2, c3, c4, c5 = st.columns(5)
        temperature = c1.number_input("Temperature", 0.0, 2.0, step=0.1, key=remembered("eval_temperature", d.temperature),
                                      help="0: greedy (the same text every time); above 0: sampled with the seed")
        top_p = c2.number_input("Top-p", 0.05, 1.0, step=0.05, key=remembered("eval_top_p", d.top_p),
                                help="sampling only: the smallest set of tokens holding this probability")
        penalty = c3.number_input("Repetition penalty", 1.0, 3.0, step=0.05,
                                  key=remembered("eval_repetition_penalty", d.repetition_penalty),
                                  help="1: off. Above 1, tokens already in the text become less likely")
        ngram = c4.number_input("No repeated n-gram", 0, 10, key=remembered("eval_no_repeat_ngram", d.no_repeat_ngram),
                                help="never repeat a sequence of this many tokens (0: off)")
        seed = c5.number_input("Seed", 0, 2**31 - 1, key=remembered("eval_seed", d.seed), help="sampling only")
        st.caption("Why a small pruned model repeats: with fewer channels its next-token distribution flattens, and "
                   "under greedy decoding the tokens it has just written stay on top, so it loops (\"the Strait of "
                   "the Strait of\"). The penalty and the n-gram rule break such loops without sampling.")
    return Sampling(float(temperature), float(top_p), float(penalty), int(ngram), int(seed))


def generation_section(run: Run, models: list[Compared]) -> None:
    st.subheader("Generation")
    prompt = st.text_area("Prompt", key=remembered("eval_prompt", "The capital of France is"))
    tokens = st.slider("New tokens", 8, 256, key=remembered("eval_new_tokens", 48))
    sampling = sampling_inputs()
    if st.button("Generate with each", key="eval_generate") and prompt.strip():
        start(run, models, Request(prompt=prompt, new_tokens=tokens, sampling=sampling), "generation")
    stored = evaluations.load(run)
    generated = {m.label: stored.get(evaluations.generation_key(m.key, prompt, tokens, sampling.key()))
                 for m in models}
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
    job_panel(run)
    models = compared(run)  # once per page run: finding the newest heal reads every heal job's folder
    with shown_errors():
        perplexity_section(run, models)
    with shown_errors():
        zeroshot_section(run, models)
    with shown_errors():
        generation_section(run, models)


main()
