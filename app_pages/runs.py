"""Runs: every run folder with status, model, budget, perplexities and times; open, resume, stop,
delete, compare two."""

from __future__ import annotations

from functools import partial

import pandas as pd
import streamlit as st

from grasprune.formatting import BLANK
from grasprune.runs.store import Run, delete_run, list_runs
from grasprune.runs.timeline import timeline_of
from studio import charts
from studio.common import PAGES, age, describe, duration, jobs, root, shown_errors
from studio.heal_jobs import list_heal_jobs, read_progress, registry
from studio.live import RESUMABLE, is_active
from studio.run_table import cell_text, config_differences, run_row


def page_row(run: Run, job_state: str | None = None) -> dict:
    """``run_row`` with its times as the page writes them."""
    row = run_row(run, job_state)
    return {**row, "started": age(row.get("started")), "seconds": duration(row.get("seconds"))}


def table(runs: list[Run]) -> None:
    job_states = {run_id: job["state"] for run_id, job in jobs().state()["jobs"].items()}
    frame = pd.DataFrame([page_row(run, job_states.get(run.id)) for run in runs])
    # numbers stay numbers, so that a column sorts by value; cell_text writes what is shown
    shown = frame.style.format({column: partial(cell_text, column) for column in frame.columns}, na_rep=BLANK)
    st.dataframe(shown, hide_index=True, width="stretch", column_config={"seconds": "duration"})


def actions(runs: list[Run]) -> None:
    by_id = {run.id: run for run in runs}
    current = st.query_params.get("run")
    ids = list(by_id)
    run_id = st.selectbox("Run", ids, index=ids.index(current) if current in ids else 0, key="runs_selected",
                          format_func=lambda i: describe(by_id[i]))
    run = by_id[run_id]
    state = run.status().get("status")
    active = is_active(run)
    cols = st.columns(4)
    if cols[0].button("Open", key="runs_open"):
        st.switch_page(PAGES["prune"], query_params={"run": run.id})
    if cols[1].button("Resume", key="runs_resume", disabled=active or state not in RESUMABLE):
        with shown_errors():
            jobs().submit(run, root())
            st.switch_page(PAGES["prune"], query_params={"run": run.id})
    if cols[2].button("Stop", key="runs_stop", disabled=not active) and jobs().stop(run.id):
        st.toast(f"Stopping {run.id} after the current step…")
    confirm = cols[3].checkbox("Confirm delete", key="runs_confirm_delete")
    if cols[3].button("Delete", key="runs_delete", disabled=not confirm or active):
        with shown_errors():
            delete_run(run, root())
            if st.query_params.get("run") == run.id:
                del st.query_params["run"]
            st.session_state.pop("runs_confirm_delete", None)
            st.rerun()
    if active:
        st.caption("A queued or running run cannot be deleted: stop it first.")


def heal_rows(runs: list[Run]) -> list[dict]:
    """Every heal in the runs folder, under the run whose checkpoint it healed (a folder's path where it came
    from elsewhere), with its perplexities beside the pruned checkpoint's at the same settings."""
    by_checkpoint = {str(run.output_dir().resolve()): run for run in runs}
    jobs, rows = registry(), []
    for job in list_heal_jobs(root()):
        try:
            source, cfg = job.source, job.config()
        except (OSError, KeyError, ValueError):
            continue
        run = by_checkpoint.get(str(source.resolve()))
        pruned = (run.report() or {}).get("metrics", {}) if run is not None else {}
        report = job.report() or {}
        row = {"heal": job.id, "of run": run.id if run is not None else str(source),
               "state": jobs.state(job, read_progress(job.events_path)), "steps": report.get("steps"),
               "minutes": round(report["elapsed_s"] / 60, 1) if "elapsed_s" in report else None}
        for key, metric in job.metrics().items():
            name = metric["dataset"]
            row[f"{name} healed"] = round(metric["ppl"], 2)
            same = pruned.get(key)
            if same and (same["seqlen"], same["windows"]) == (metric["seqlen"], metric["windows"]):
                row[f"{name} pruned"] = round(same["ppl"], 2)
        row["settings"] = f"{cfg.steps} steps" + (f" / {cfg.minutes:g} min" if cfg.minutes else "") + f", lr {cfg.lr:g}"
        rows.append(row)
    return rows


def heals(runs: list[Run]) -> None:
    rows = heal_rows(runs)
    if not rows:
        return
    st.subheader("Heals")
    st.caption("Each heal of a run's checkpoint (Heal page), with its perplexity measured once written at the "
               "pruned checkpoint's own protocol, beside the pruned one's.")
    st.dataframe(rows, hide_index=True, width="stretch")
    ids = [row["heal"] for row in rows]
    chosen = st.selectbox("Heal", ids, key="runs_heal", format_func=lambda i: f"{i} (of {rows[ids.index(i)]['of run']})")
    left, right = st.columns(2)
    if left.button("Open", key="runs_heal_open", icon=":material/healing:"):
        st.switch_page(PAGES["heal"], query_params={"heal": chosen})
    run_id = rows[ids.index(chosen)]["of run"]
    if right.button("Export", key="runs_heal_export", icon=":material/download:", disabled=run_id not in
                    {run.id for run in runs}):
        st.switch_page(PAGES["export"], query_params={"run": run_id, "heal": chosen})


def compare(runs: list[Run]) -> None:
    st.subheader("Compare two runs")
    by_id = {run.id: run for run in runs}
    ids = list(by_id)
    c1, c2 = st.columns(2)
    a = c1.selectbox("First run", ids, index=0, key="runs_compare_a", format_func=lambda i: describe(by_id[i]))
    b = c2.selectbox("Second run", ids, index=min(1, len(ids) - 1), key="runs_compare_b",
                     format_func=lambda i: describe(by_id[i]))
    if a == b:
        st.info("Choose two different runs.")
        return
    ra, rb = by_id[a], by_id[b]
    right = page_row(rb)
    rows = [{"": k, a: cell_text(k, v), b: cell_text(k, right.get(k))}
            for k, v in page_row(ra).items() if k != "run"]
    rows += [{"": f"setting: {k}", a: cell_text(k, v1), b: cell_text(k, v2)}
             for k, v1, v2 in config_differences(ra, rb)]
    st.dataframe(rows, hide_index=True, width="stretch")
    names = {run.id: legend_name(run) for run in (ra, rb)}  # keep ratios in the legend, the id after
    reports = {names[run.id]: run.report() for run in (ra, rb)}
    if all(reports.values()):
        st.plotly_chart(charts.compare_layers_figure({k: r["layers"] for k, r in reports.items()}), width="stretch")
        st.caption("The share of each layer's FFN channels and KV groups each run kept.")
    curves = {names[run.id]: timeline_of(run.events()).loss.get("gate_training", []) for run in (ra, rb)}
    if all(curves.values()):
        st.plotly_chart(charts.loss_compare_figure(curves), width="stretch")
        st.caption("Both runs' gate-training loss, step by step.")


def legend_name(run: Run) -> str:
    try:
        config = run.config()
    except Exception:  # noqa: BLE001 - an unreadable config: the id alone
        return run.id
    return f"{config.method} keep {config.keep_ratio:g} · {run.id[-6:]}"

def main() -> None:
    st.title("Runs")
    runs = list_runs(root())
    if not runs:
        st.info("No runs yet: start one on the Prune page.")
        st.page_link(PAGES["prune"], label="Prune a model")
        return
    table(runs)
    actions(runs)
    with shown_errors():
        heals(runs)
    if len(runs) >= 2:
        compare(runs)


main()
