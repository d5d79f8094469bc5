"""The live view of one heal job: step and total (and the time limit), training time, the loss curve,
Stop and Resume; once done, the healed folder, its last losses and where to take it next.

While the job's process runs it is a fragment that re-renders every second (as the prune live view, only
the fragment); when the process ends it asks for one full rerun and then stays static.
"""

from __future__ import annotations

import shlex

import streamlit as st

from grasprune.method.heal import HealConfig, check_heal
from grasprune.runs.processes import log_tail, process_rss

from . import charts
from .common import PAGES, duration, root, shown_errors, size
from .heal_jobs import HealJob, HealProgress, heal_job_in_root, read_progress, registry

RESUMABLE = ("stopped", "interrupted", "failed", "created")
PHASES = {"loading": "loading the checkpoint and the calibration text",
          "merging": "merging the adapters into the weights and writing the healed folder"}


def heal_view(job_id: str) -> None:
    job = heal_job_in_root(job_id, root())
    if registry().alive(job):
        _live_fragment(job_id)
    else:
        render(job)


@st.fragment(run_every=1)
def _live_fragment(job_id: str) -> None:
    job = heal_job_in_root(job_id, root())
    if not registry().alive(job):
        st.rerun(scope="app")  # the process ended: draw the job once, statically (with its Resume button)
    with shown_errors():
        render(job)


def progress_of(job: HealJob) -> HealProgress:
    """The job's progress, read incrementally (only the new lines of its events) and kept in the session."""
    key = f"heal-progress:{job.id}"
    cached = st.session_state.get(key)
    progress = read_progress(job.events_path, cached if isinstance(cached, HealProgress) else None)
    st.session_state[key] = progress
    return progress


def render(job: HealJob) -> None:
    progress = progress_of(job)
    state = registry().state(job, progress)
    cfg = job.config()
    st.subheader(f"Heal {job.id}")
    st.caption(f"{job.source} → {job.out} · {state}")
    _status_line(job, state, progress)
    _bar(cfg, progress, state)
    _numbers(job, cfg, progress, state)
    _actions(job, state)
    points = progress.loss.get("healing", [])
    if points:
        st.plotly_chart(charts.heal_loss_figure(points, cfg.distill, sorted(progress.holdout.items())),
                        width="stretch")
    else:
        st.info("The loss curve appears with the first training step.")
    if state == "completed":
        _result(job)
    with st.expander("Equivalent command and job log"):
        st.code(job.command(), language="bash")
        tail = log_tail(job.log_path)
        if tail is not None:
            st.code(tail or "(empty)", language="text")


def _status_line(job: HealJob, state: str, progress: HealProgress) -> None:
    span = progress.spans.get("healing")
    at = "" if span is None else f" at step {span.done} of {span.total}"
    if state in ("starting", "running") and registry().stopping(job):
        st.warning("Stopping after the current step (the adapters and AdamW's state are saved; Resume continues "
                   "from them)…")
    elif state == "starting":
        st.info("Starting… its process is loading PyTorch; training begins in a few seconds.")
    elif state == "stopped":
        st.warning(f"Stopped{at}. Resume (or Start with the same settings) continues from the saved state.")
    elif state == "interrupted":
        st.warning(f"Interrupted{at}: its process is gone. Resume continues from the last saved state (every "
                   f"{job.config().checkpoint_every} steps).")
    elif state == "failed":
        code = registry().returncode(job)
        st.error(f"Failed: {progress.error or f'its process ended with exit code {code}; see the job log below'}")
    elif state == "created":
        st.info("Created but not started: press Resume to start it.")
    elif state == "completed":
        st.success(f"Healed: {job.out}")


def _bar(cfg: HealConfig, progress: HealProgress, state: str) -> None:
    if state == "completed":
        st.progress(1.0, text="done")
        return
    span = progress.spans.get("healing")
    done = 0 if span is None else span.done
    parts, fraction = [f"step {done:,}/{cfg.steps:,}"], done / cfg.steps
    if cfg.minutes:
        spent = progress.training_s or 0.0
        parts.append(f"{duration(spent)} of {cfg.minutes:g} min")
        fraction = max(fraction, spent / (60 * cfg.minutes))
    if progress.phase in PHASES and state in ("starting", "running"):
        parts.append(PHASES[progress.phase])
    st.progress(min(1.0, fraction), text=" · ".join(parts))


def remaining(cfg: HealConfig, progress: HealProgress) -> float | None:
    """Seconds of training left: by the step rate, or the time limit when that comes first."""
    span, left = progress.spans.get("healing"), []
    rate = None if span is None else span.rate()
    if rate:
        left.append((cfg.steps - span.done) / rate)
    if cfg.minutes and progress.training_s is not None:
        left.append(max(0.0, 60 * cfg.minutes - progress.training_s))
    return min(left) if left else None


def _numbers(job: HealJob, cfg: HealConfig, progress: HealProgress, state: str) -> None:
    live = state in ("starting", "running")
    span = progress.spans.get("healing")
    points = progress.loss.get("healing", [])
    report = job.report() or {}
    trained = report.get("elapsed_s", progress.training_s)  # once written, the report's figure: one number
    cols = st.columns(3) + st.columns(3)  # two rows: six metrics in one row cut their values off
    cols[0].metric("Step", f"{0 if span is None else span.done:,} / {cfg.steps:,}")
    cols[1].metric("Training time", duration(trained),
                   help="Time spent training, over every attempt (what the time limit counts)")
    cols[2].metric("Loss", "–" if not points else f"{points[-1][1]:.4f}")
    cols[3].metric("ETA (training)", duration(remaining(cfg, progress) if live else None))
    cols[4].metric("Memory (RSS)", size(process_rss(job.process().get("pid")) if live else None))
    best = progress.best
    cols[5].metric("Best held-out loss" if best is None else f"Best held-out loss (step {best[0]:,})",
                   "–" if best is None else f"{best[1]:.4f}",
                   help="The lowest loss on the held-out text so far, and its step: the adapters merged at the end "
                        "are that step's" if cfg.uses_holdout else "No held-out text (--holdout none): the last "
                        "step's adapters are merged")


def _actions(job: HealJob, state: str) -> None:
    jobs = registry()
    if jobs.alive(job):
        if st.button("Stop", key=f"heal-stop-{job.id}", type="primary"):
            if jobs.stop(job):
                st.toast("Stopping after the current step…")
            else:
                st.warning("Its process is gone.")
    elif state in RESUMABLE and st.button("Resume", key=f"heal-resume-{job.id}", type="primary"):
        with shown_errors():
            check_heal(job.source, job.out, job.config(), job.spec().get("overwrite", False))
            jobs.resume(job)
            st.rerun(scope="app")


def merged_text(report: dict) -> str:
    """Which step's adapters the healed folder holds, and why."""
    holdout = report.get("holdout")
    if not holdout:
        return "The last step's adapters are merged (no held-out text)."
    curve = holdout.get("curve") or [[None, None]]
    step, last = holdout.get("best_step"), curve[-1]
    if step == last[0]:
        return f"The last step had the lowest held-out loss ({holdout.get('best_loss', 0):.4f}): its adapters are merged."
    if step == 0:
        return (f"Healing never beat the checkpoint on the held-out text (best {holdout.get('best_loss', 0):.4f} at "
                f"step 0, {last[1]:.4f} at the last): the folder holds the pruned weights unchanged.")
    return (f"Merged step **{step}**, the lowest held-out loss ({holdout.get('best_loss', 0):.4f}; the last step "
            f"{last[0]} had {last[1]:.4f}): the steps after it overfit the calibration text.")


def _result(job: HealJob) -> None:
    report = job.report() or {}
    losses = report.get("last_losses") or []
    st.markdown(f"Trained **{report.get('steps', '–')}** steps in {duration(report.get('elapsed_s'))}; the last "
                f"losses: {', '.join(f'{x:.4f}' for x in losses) or '–'}. {merged_text(report)} The folder is a "
                "GRASPrune checkpoint of the same shapes as the pruned one, the adapters merged into its weights.")
    for metric in job.metrics().values():
        st.markdown(f"Healed {metric['dataset']} perplexity **{metric['ppl']:.2f}** (seqlen {metric['seqlen']}, "
                    f"{metric['windows']} windows), measured once written.")
    out = shlex.quote(str(job.out))
    st.markdown("**Next**: compare it and export it. The Evaluate page compares a run's dense, pruned and newest "
                "healed model; the Export page exports this healed checkpoint (safetensors or GGUF). From a "
                "terminal:")
    st.code(f"grasprune ppl --model {out} --dataset wikitext2 --seqlen 512 --max-windows 64\n"
            f"grasprune export {out} --format gguf --type q8_0 --out {shlex.quote(str(job.out) + '-gguf')}",
            language="bash")
    run_id = job.spec().get("run")
    query = {"run": run_id} if run_id else None
    cols = st.columns(2)
    cols[0].page_link(PAGES["evaluate"], label="Evaluate: dense, pruned and healed" if run_id else "Evaluate a run",
                      query_params=query, icon=":material/analytics:")
    cols[1].page_link(PAGES["export"], label="Export this healed checkpoint" if run_id else "Export a run",
                      query_params={**query, "heal": job.id} if run_id else None, icon=":material/download:")
