"""The live view of one run: progress, loss, per-layer kept units, elapsed time, memory, Stop/Resume.

While the run is queued or running it is a fragment that re-renders every second (only the fragment,
so the rest of the page stays usable); when the run ends it asks for one full rerun and then stays
static.
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from grasprune.cli.command import prune_command
from grasprune.evaluation.dense_reference import perplexity_line, quality_warning
from grasprune.runs.estimate import correction, phase_remaining, whole_run_eta
from grasprune.runs.jobs import Job, shown_state
from grasprune.runs.processes import LOG_NAME, log_tail, process_rss
from grasprune.runs.store import Run, run_in_root
from grasprune.runs.timeline import PHASE_LABELS, PROGRESS_UNITS, PhaseSpan, Timeline

from . import charts
from .advice import next_steps
from .common import PAGES, duration, jobs, root, shown_errors, size, timeline
from .estimates import Plan, run_plan
from .results_view import measured_spread

NEXT_PAGES = (("inspect", "Inspect the mask", ":material/grid_on:"), ("evaluate", "Evaluate", ":material/analytics:"),
              ("export", "Download", ":material/download:"))
RESUMABLE = ("stopped", "interrupted", "failed", "queued")
LIVE = ("queued", "starting", "running")
# Streamlit's Material icons: drawn by the app's own font, where emoji need one on the viewer's machine
ICONS = {"done": ":material/check_circle:", "current": ":material/play_circle:", "stopped": ":material/pause_circle:",
         "skipped": ":material/skip_next:", "pending": ":material/schedule:"}


def is_active(run: Run) -> bool:
    job = jobs().job(run.id)
    if job is not None and job.state in ("queued", "running"):
        return True
    return run.status().get("status") == "running"


def live_view(run_id: str) -> None:
    run = run_in_root(run_id, root())
    if is_active(run):
        _live_fragment(run_id)
    else:
        render(run)


@st.fragment(run_every=1)
def _live_fragment(run_id: str) -> None:
    run = run_in_root(run_id, root())
    if not is_active(run):
        st.rerun(scope="app")  # the run ended: draw it once, statically (with its Resume button)
    with shown_errors():
        render(run)


def render(run: Run) -> None:
    status = run.status()
    job = jobs().job(run.id)
    state = shown_state(status.get("status", "unknown"), None if job is None else job.state)
    tl = timeline(run)
    config = run.config()
    st.subheader(f"Run {run.id}")
    st.caption(f"{config.model} · keep ratio {config.keep_ratio:g} · {state} · folder {run.folder}")
    _status_line(run, state, status, tl)
    eta = _phases(tl, run_plan(run, tl), state)
    _numbers(tl, state, status, eta)
    _actions(run, state)
    _charts(tl)
    _results(run, tl)
    with st.expander("Equivalent command and job log"):
        st.code(prune_command(config, Path(run.extra()["out"]) if run.extra().get("out") else None),
                language="bash")
        tail = log_tail(run.folder / LOG_NAME)
        if tail is not None:
            st.code(tail or "(empty)", language="text")


def _status_line(run: Run, state: str, status: dict, tl: Timeline) -> None:
    job = jobs().job(run.id)
    if state == "starting":
        st.info("Starting… its process is loading PyTorch; the first phase begins in a few seconds.")
    elif state == "queued":
        position = jobs().queue_position(run.id)
        if position is None:
            _not_queued(jobs().job(run.id))  # read again: the worker may have just taken it
        else:
            st.info(f"Queued: position {position} on {job.device if job else 'its device'}; it starts when the "
                    "jobs before it finish.")
    elif state == "running" and job is not None and job.stopping:
        st.warning("Stopping after the current step (a checkpoint is written; Resume continues from it)…")
    elif state == "stopped":
        st.warning(f"Stopped: {status.get('message', '')}. Resume continues from the last checkpoint.")
    elif state == "interrupted":
        st.warning("Interrupted: the process running it is gone. Resume continues from the last checkpoint.")
    elif state == "failed":
        st.error(f"Failed: {status.get('message') or tl.error or 'see the job log below'}")
    elif state == "completed":
        st.success("Completed.")


def _not_queued(job: Job | None) -> None:
    """The status file says queued, but no queue of this server holds the run."""
    if job is not None and job.state in ("queued", "running"):
        st.info("Starting… its process is loading PyTorch; the first phase begins in a few seconds.")
    elif job is not None and job.state == "finished":
        st.error(f"Its process ended (exit code {job.returncode}) before the run started: see the job log below. "
                 "Resume tries again.")
    else:
        st.info("Created but not started: press Resume to queue it.")


def _phases(tl: Timeline, plan: Plan, state: str) -> float | None:
    """The run's own phases, each done (in how long), current (with its progress) or pending (with its
    expected duration), and the current phase's progress bar; returns the whole run's ETA while live."""
    now, live = time.time(), state in LIVE
    factor = correction(tl, plan.expected)
    st.markdown("  \n".join(_phase_line(tl, plan, phase, live, factor, now) for phase in plan.phases))
    if tl.done:
        st.progress(1.0, text="done")
    else:
        span = tl.spans.get(tl.phase or "")
        text = tl.phase_label if span is None else f"{tl.phase_label} · {_progress_of(tl.phase, span, now)}"
        remaining = _remaining(tl, plan, factor, now) if live and span is not None else None
        if remaining is not None:
            text += f" · ETA {duration(remaining)}"
        st.progress(tl.fraction, text=text)
    return whole_run_eta(tl, plan.expected, plan.parts, now) if live and plan.expected else None


def _phase_line(tl: Timeline, plan: Plan, phase: str, live: bool, factor: float, now: float) -> str:
    label, span, expected = PHASE_LABELS.get(phase, phase), tl.spans.get(phase), plan.expected.get(phase)
    state = tl.phase_state(phase, plan.phases)
    if state == "current" and not live:
        state = "stopped"  # the process is gone without saying so (interrupted)
    if state == "done":
        text = f"done in {duration(span.duration)}"
    elif state == "current" and span is not None:
        text = _progress_of(phase, span, now)
        remaining = _remaining(tl, plan, factor, now)
        text += "" if remaining is None else f" · about {duration(remaining)} left"
    elif state == "stopped" and span is not None:
        ended = "failed" if tl.error else "stopped"
        end = span.ended if span.ended is not None else tl.last_time or now
        text = f"{ended} at {_progress_of(phase, span, now)}" if span.total else \
            f"{ended} after {duration(end - span.started)}"
    elif state == "skipped":
        text = "skipped (its result came from an earlier attempt)"
    else:
        text = "pending" + ("" if expected is None else f", {_expected(expected * factor)}")
    name = f"**{label}**" if state in ("current", "stopped") else label
    return f"{ICONS.get(state, ICONS['pending'])} {name}: {text}"


def _expected(seconds: float) -> str:
    return "a few seconds" if seconds < 5 else f"about {duration(seconds)}"


def _progress_of(phase: str, span: PhaseSpan, now: float) -> str:
    """``step 12/64 (19%)``, ``wikitext2 window 3/16 (19%)``; a phase without steps: how long it has run."""
    if not span.total:
        return f"running for {duration(now - span.started)}"
    counted = f"{PROGRESS_UNITS.get(phase, 'step')} {span.done}/{span.total}"
    return f"{span.label + ' ' if span.label else ''}{counted} ({span.fraction:.0%})"


def _remaining(tl: Timeline, plan: Plan, factor: float, now: float) -> float | None:
    """The current phase's remaining seconds (its training loop's own ETA where the size is unknown)."""
    if tl.phase not in plan.expected:
        return tl.eta
    return phase_remaining(tl, tl.phase, plan.expected[tl.phase], plan.parts.get(tl.phase, 1), factor, now)


def _numbers(tl: Timeline, state: str, status: dict, eta: float | None) -> None:
    running = state == "running"
    end = time.time() if running else tl.last_time
    elapsed = None if tl.started is None or end is None else end - tl.started
    last_loss = next((points[-1][1] for points in reversed(list(tl.loss.values())) if points), None)
    cols = st.columns(5)
    cols[0].metric("Elapsed", duration(elapsed))
    cols[1].metric("Memory (RSS)", size(process_rss(status.get("pid")) if running else None))
    cols[2].metric("Loss", "–" if last_loss is None else f"{last_loss:.4f}")
    budget = tl.model.get("budget") if tl.model else None
    cols[3].metric("Budget (params kept)", "–" if budget is None else f"{budget:,}")
    cols[4].metric("ETA (whole run)", duration(eta), help="The current phase from its own progress, the phases "
                   "after it from their predictions, scaled by how the finished ones compared with theirs")


def _actions(run: Run, state: str) -> None:
    cols = st.columns(4)
    active = is_active(run)  # the job, not the status file: a stopping job says "stopped" before it exits
    if active and cols[0].button("Stop", key=f"stop-{run.id}", type="primary"):
        if jobs().stop(run.id):
            st.toast("Stopping after the current step…")
        else:
            st.warning("No job of this server runs it, and its recorded process is gone.")
    elif not active and state in (*RESUMABLE, "unknown") and cols[0].button("Resume", key=f"resume-{run.id}",
                                                                              type="primary"):
        with shown_errors():
            jobs().submit(run, root())
            st.rerun(scope="app")
    if state == "completed":  # buttons, so they read as the actions they are (a page link looks like text)
        for column, (page, label, icon) in zip(cols[1:], NEXT_PAGES, strict=True):
            if column.button(label, key=f"{page}-{run.id}", icon=icon, width="stretch"):
                st.switch_page(PAGES[page], query_params={"run": run.id})


def _charts(tl: Timeline) -> None:
    left, right = st.columns(2)
    with left:
        if any(tl.loss.values()):
            st.plotly_chart(charts.loss_figure(tl), width="stretch")
        else:
            st.info("The loss curve appears with the first training step.")
    with right:
        if tl.model is None:
            st.info("The per-layer chart appears once the model is loaded.")
        else:
            layers = tl.model["layers"]
            ffn = tl.ffn_kept or [layer["ffn_channels"] for layer in layers]
            kv = tl.kv_kept or [layer["kv_groups"] for layer in layers]
            st.plotly_chart(charts.layers_figure(layers, ffn, kv, "Kept per layer"), width="stretch")


def _results(run: Run, tl: Timeline) -> None:
    if tl.done:
        params = tl.done["params"]
        st.markdown(
            f"Kept **{params['prunable_after']:,}** of {params['prunable_before']:,} prunable parameters: removed "
            f"**{params['removed_pct_of_prunable']:.2f}%** of prunable, **{params['removed_pct_of_total']:.2f}%** "
            f"of all ({params['total_before']:,} → {params['total_after']:,})."
        )
    for dataset, metric in tl.metrics.items():  # the dense figure joins it once measured
        dense = tl.dense_metrics.get(dataset)
        st.markdown(perplexity_line({**metric, "dense_ppl": None if dense is None else dense["ppl"]}))
    spread = measured_spread(run.config()) if tl.metrics else None
    if spread:
        st.caption(spread)
    warning = quality_warning(run.report() or {}) if tl.done else None
    if warning:
        st.warning(warning)
    if tl.done:
        st.markdown("**Next steps**\n\n" + "\n".join(f"- {step}" for step in next_steps(run.config())))
