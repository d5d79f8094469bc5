"""Helpers every page uses: the error guard, the runs folder, the attached run, formatting."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from grasprune.errors import UserError
from grasprune.events import read_new_events
from grasprune.method.budget import BudgetPreview, budget_preview
from grasprune.runs.jobs import JobRegistry, registry
from grasprune.runs.store import Run, list_runs, run_in_root, runs_root
from grasprune.runs.timeline import Timeline

LOG = logging.getLogger("grasprune.studio")
PAGES = {
    "home": "app_pages/home.py",
    "prune": "app_pages/prune.py",
    "runs": "app_pages/runs.py",
    "inspect": "app_pages/inspect.py",
    "evaluate": "app_pages/evaluate.py",
    "heal": "app_pages/heal.py",
    "export": "app_pages/export.py",
    "results": "app_pages/results.py",
    "explain": "app_pages/explain.py",
}


@contextmanager
def shown_errors() -> Iterator[None]:
    """A ``UserError`` becomes its one-line message; anything else a generic line (never a traceback).

    Streamlit's own control flow (``st.rerun``, ``st.stop``) derives from BaseException and passes."""
    try:
        yield
    except UserError as err:
        st.error(str(err))
    except Exception as err:
        LOG.exception("studio page error")
        st.error(f"Something went wrong ({type(err).__name__}); the details are in the server log.")


def root() -> Path:
    return runs_root()


@st.cache_data(show_spinner="Reading the model's config…", max_entries=16)
def cached_preview(spec: str) -> tuple[BudgetPreview | None, str | None]:
    """The model's parameter counts from its config (no weights), or the one-line reason they are unknown."""
    try:
        return budget_preview(spec), None
    except UserError as err:
        return None, str(err)


def jobs() -> JobRegistry:
    return registry()


def attached_run_id() -> str | None:
    """The run named by ``?run=<id>`` if it is a run inside the runs folder (an invalid or stale link, a
    path or a symlink out of the folder is reported, not raised)."""
    run_id = st.query_params.get("run")
    if not run_id:
        return None
    try:
        run_in_root(run_id, root())
    except UserError as err:
        st.warning(f"{err}: showing no run")
        return None
    return run_id


def attach(run_id: str) -> None:
    st.query_params["run"] = run_id


def pick_run(label: str, runs: list[Run], key: str, default: Run | None = None) -> Run | None:
    """A run selector that shows (and updates) the attached run; with none attached, the run chosen last
    on this page, else ``default``, else the first of ``runs``."""
    if not runs:
        return None
    ids = [r.id for r in runs]
    current = st.query_params.get("run")
    last = st.session_state.get(f"remembered:{key}")  # the selector's own state is dropped on a page switch
    preferred = [current, last, default.id if default else None]
    index = next((ids.index(i) for i in preferred if i in ids), 0)
    chosen = st.selectbox(label, ids, index=index, key=key, format_func=lambda i: describe(run_in_root(i, root())))
    st.session_state[f"remembered:{key}"] = chosen
    if chosen != current:
        attach(chosen)
    return run_in_root(chosen, root())


def remembered(key: str, default: object) -> str:
    """``key``, for a widget whose value survives a visit to another page.

    Streamlit drops a widget's state when a page without that widget runs; a copy under a non-widget
    key puts it back. The widget takes its value from the session (pass no default to it)."""
    copy = f"remembered:{key}"
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(copy, default)
    st.session_state[copy] = st.session_state[key]
    return key


def completed_runs() -> list[Run]:
    return [r for r in list_runs(root()) if r.status().get("status") == "completed" and r.report()]


def pick_completed_run(key: str, why: str) -> Run | None:
    """The completed-run selector of the Evaluate and Export pages; without one, says ``why`` and links
    to the Prune page."""
    run = pick_run("Completed run", completed_runs(), key=key)
    if run is None:
        st.info(f"No completed run yet: {why}.")
        st.page_link(PAGES["prune"], label="Prune a model")
    return run


def describe(run: Run) -> str:
    try:
        config = run.config()
    except UserError:
        return f"{run.id} (unreadable config)"
    return f"{run.id} · {config.model} · keep {config.keep_ratio:g} · {run.status().get('status', 'unknown')}"


def timeline(run: Run) -> Timeline:
    """The run's timeline, read incrementally (only new events) and kept in the session."""
    key = f"timeline:{run.id}"
    cached = st.session_state.get(key)
    log_size = run.events_path.stat().st_size if run.events_path.is_file() else 0
    if not isinstance(cached, Timeline) or log_size < cached.offset:  # a new log under the same id
        cached = Timeline()
    events, cached.offset = read_new_events(run.events_path, cached.offset)
    cached.extend(events)
    st.session_state[key] = cached
    return cached


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def size(nbytes: int | None) -> str:
    if nbytes is None:
        return "–"
    value = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def age(timestamp: float | None) -> str:
    return "–" if timestamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
