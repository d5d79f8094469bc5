"""The live view of one run: progress, loss, per-layer kept units, elapsed time, memory, Stop/Resume.

While the run is queued or running it is a fragment that re-renders every second (only the fragment,
so the rest of the page stays usable); when the run ends it asks for one full rerun and then stays
static.
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from grasprune.cli_command import prune_command
from grasprune.jobs import LOG_NAME, log_tail, process_rss
from grasprune.runs import Run, run_in_root
from grasprune.timeline import PHASE_LABELS, PHASES, Timeline

from . import charts
from .common import PAGES, duration, jobs, root, shown_errors, size, timeline

RESUMABLE = ("stopped", "interrupted", "failed", "queued")


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
    state = status.get("status", "unknown")
    job = jobs().job(run.id)
    if job is not None and job.state == "queued":
        state = "queued"
    tl = timeline(run)
    config = run.config()
    st.subheader(f"Run {run.id}")
    st.caption(f"{config.model} · keep ratio {config.keep_ratio:g} · {state} · folder {run.folder}")
    _status_line(run, state, status, tl)
    _progress(tl, state)
    _numbers(tl, state, status)
    _actions(run, state)
    _charts(tl)
    _results(tl)
    with st.expander("Equivalent command and job log"):
        st.code(prune_command(config, Path(run.extra()["out"]) if run.extra().get("out") else None),
                language="bash")
        tail = log_tail(run.folder / LOG_NAME)
        if tail is not None:
            st.code(tail or "(empty)", language="text")


def _status_line(run: Run, state: str, status: dict, tl: Timeline) -> None:
    job = jobs().job(run.id)
    if state == "queued":
        position = jobs().queue_position(run.id)
        if position is None:
            st.info("Created but not started: press Resume to queue it.")
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


def _progress(tl: Timeline, state: str) -> None:
    done_phases = PHASES[: PHASES.index(tl.phase)] if tl.phase in PHASES else ()
    steps = " → ".join(
        f"**{PHASE_LABELS[p]}**" if p == tl.phase and not tl.done else (f"~~{PHASE_LABELS[p]}~~"
                                                                          if p in done_phases or tl.done
                                                                          else PHASE_LABELS[p])
        for p in PHASES
    )
    st.markdown(steps)
    if tl.done:
        st.progress(1.0, text="done")
        return
    text = tl.phase_label
    if tl.phase == "evaluation" and tl.eval_progress:
        dataset, window, total = tl.eval_progress
        text += f" · {dataset} window {window}/{total}"
    elif tl.phase_total:
        text += f" · step {tl.step}/{tl.phase_total}"
    if tl.eta is not None and state == "running":
        text += f" · ETA {duration(tl.eta)}"
    st.progress(tl.fraction, text=text)


def _numbers(tl: Timeline, state: str, status: dict) -> None:
    running = state == "running"
    end = time.time() if running else tl.last_time
    elapsed = None if tl.started is None or end is None else end - tl.started
    last_loss = next((points[-1][1] for points in reversed(list(tl.loss.values())) if points), None)
    cols = st.columns(4)
    cols[0].metric("Elapsed", duration(elapsed))
    cols[1].metric("Memory (RSS)", size(process_rss(status.get("pid")) if running else None))
    cols[2].metric("Loss", "–" if last_loss is None else f"{last_loss:.4f}")
    budget = tl.model.get("budget") if tl.model else None
    cols[3].metric("Budget (params kept)", "–" if budget is None else f"{budget:,}")


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
    if state == "completed":
        cols[1].page_link(PAGES["inspect"], label="Inspect the mask", query_params={"run": run.id})
        cols[2].page_link(PAGES["evaluate"], label="Evaluate", query_params={"run": run.id})
        cols[3].page_link(PAGES["export"], label="Download", query_params={"run": run.id})


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


def _results(tl: Timeline) -> None:
    if tl.done:
        params = tl.done["params"]
        st.markdown(
            f"Kept **{params['prunable_after']:,}** of {params['prunable_before']:,} prunable parameters: removed "
            f"**{params['removed_pct_of_prunable']:.2f}%** of prunable, **{params['removed_pct_of_total']:.2f}%** "
            f"of all ({params['total_before']:,} → {params['total_after']:,})."
        )
    for dataset, metric in tl.metrics.items():
        st.markdown(f"Perplexity **{dataset}**: **{metric['ppl']:.3f}** (seqlen {metric['seqlen']}, "
                    f"{metric['windows']} windows)")
