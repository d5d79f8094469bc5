"""The studio's frame: page navigation and the shared sidebar (jobs, runs folder)."""

from __future__ import annotations

import streamlit as st

from . import heal_jobs
from .common import PAGES, jobs, root, shown_errors

TITLES = {"home": "Home", "prune": "Prune", "runs": "Runs", "inspect": "Inspect", "evaluate": "Evaluate",
          "heal": "Heal", "export": "Export", "results": "Results", "explain": "Explain"}
ICONS = {"home": ":material/home:", "prune": ":material/content_cut:", "runs": ":material/list:",
         "inspect": ":material/grid_on:", "evaluate": ":material/bar_chart:", "heal": ":material/healing:",
         "export": ":material/download:", "results": ":material/monitoring:", "explain": ":material/school:"}


def sidebar() -> None:
    with st.sidebar:
        st.markdown("### GRASPrune Studio")
        state = jobs().state()
        running = state["running"]
        queued = sum(len(q) for q in state["queues"].values())
        healing = heal_jobs.registry().running()
        if running:
            st.page_link(PAGES["prune"], label=f"Running: {running[0]}", icon=":material/play_arrow:",
                         query_params={"run": running[0]})
        if healing:
            st.page_link(PAGES["heal"], label=f"Healing: {healing}", icon=ICONS["heal"],
                         query_params={"heal": healing})
        if not running and not healing:
            st.caption("No job running.")
        if queued:
            st.caption(f"{queued} queued")
        st.caption(f"Runs folder: `{root()}`")


def main() -> None:
    st.set_page_config(page_title="GRASPrune Studio", page_icon=":material/content_cut:", layout="wide")
    pages = [st.Page(path, title=TITLES[name], icon=ICONS[name], default=name == "home", url_path=name)
             for name, path in PAGES.items()]
    page = st.navigation(pages)
    with shown_errors():
        sidebar()
    with shown_errors():
        page.run()
