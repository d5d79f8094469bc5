"""Where a run's model lives: every device (of every process), the layers on it, its weights and its
peak memory, from the run's ``placement`` events (one at load, one after training)."""

from __future__ import annotations

import streamlit as st

from grasprune.runs.store import Run, open_run

from .common import root, size, timeline
from .live import is_active

MODES = {"single": "one device", "device_map": "a device map (accelerate)", "fsdp": "FSDP shards"}


def latest_placement(run: Run) -> dict | None:
    """From the session's incrementally read timeline: re-reading the whole event log every poll would
    cost time and transient memory that grow with the log (a long run's log holds thousands of steps)."""
    return timeline(run).placement


def layer_ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for layer in sorted(layers):
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) or "–"


def placement_rows(placement: dict) -> list[dict]:
    return [{"process": d.get("rank", 0), "device": d["device"], "layers": layer_ranges(d["layers"]),
             "other modules": ", ".join(d["modules"]) or "–", "weights": size(d["param_bytes"]),
             "peak memory": size(d["peak_bytes"]) if d["peak_bytes"] is not None else "– (disk)"}
            for d in placement["devices"]]


def render(run: Run) -> None:
    placement = latest_placement(run)
    if placement is None:
        return
    processes = placement["world_size"]
    title = f"Placement: {MODES.get(placement['mode'], placement['mode'])}"
    title += f", {processes} processes" if processes > 1 else ""
    with st.expander(title, expanded=placement["mode"] != "single"):
        st.dataframe(placement_rows(placement), hide_index=True, width="stretch")
        st.caption("Weights: the frozen backbone's bytes held on each device (an FSDP process holds its "
                   "shard). Peak memory: allocated on a GPU; the whole process's peak resident memory for "
                   "the CPU.")


@st.fragment(run_every=2)
def _live(run_id: str) -> None:
    render(open_run(run_id, root()))


def placement_panel(run_id: str) -> None:
    """The placement table; refreshed every 2 s while the run is active."""
    run = open_run(run_id, root())
    if is_active(run):
        _live(run_id)
    else:
        render(run)
