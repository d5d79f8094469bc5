"""Expected durations in the studio: the library's estimate (``grasprune.runs.estimate``) with the rates
measured on the runs folder's completed runs, for the Prune page and the live view."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from grasprune.config import PruneConfig
from grasprune.errors import UserError
from grasprune.runs.estimate import ModelSize, Rates, expected_durations, phase_parts, rates_for
from grasprune.runs.store import Run
from grasprune.runs.timeline import Timeline, run_phases

from .common import cached_preview, root


@dataclass
class Plan:
    """A run's phases in order, and (when its config and model size are known) their expected seconds."""

    phases: list[str]
    expected: dict[str, float] = field(default_factory=dict)
    parts: dict[str, int] = field(default_factory=dict)
    rates: Rates | None = None


@st.cache_data(ttl=30, show_spinner=False, max_entries=8)
def cached_rates(runs_folder: str, device: str) -> Rates:
    """Rates from the newest completed runs (read again at most every 30 s: the live view polls)."""
    return rates_for(Path(runs_folder), device)


def resolved(config: PruneConfig) -> PruneConfig | None:
    """``config`` with its defaults filled in, or None where this machine cannot (a CUDA run seen here)."""
    try:
        return config.resolved()
    except UserError:
        return None


def model_size(spec: str, tl: Timeline | None = None) -> ModelSize | None:
    """The run's parameter counts: its "model" event once loaded, before that the model's config."""
    if tl is not None and tl.model is not None:
        return ModelSize(tl.model["total_params"], tl.model["prunable_params"])
    found, _ = cached_preview(spec)
    return None if found is None else ModelSize(found.total_params, found.prunable_params)


def plan_for(config: PruneConfig, tl: Timeline | None = None) -> Plan:
    full = resolved(config)
    if full is None:
        return Plan(run_phases(config))
    size = model_size(full.model, tl)
    if size is None:
        return Plan(run_phases(full))
    rates = cached_rates(str(root()), full.device)
    return Plan(run_phases(full), expected_durations(full, size, rates), phase_parts(full), rates)


def run_plan(run: Run, tl: Timeline) -> Plan:
    """The plan of a run: from the config its latest attempt resolved (its "loading" event), else its own."""
    config = run.config()
    if tl.config is not None:
        try:
            config = PruneConfig.from_dict(tl.config)
        except UserError:
            pass
    return plan_for(config, tl)


def about(seconds: float) -> str:
    """A rough duration for a prediction: "under a minute", "about 4 min", "about 2.5 h"."""
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    return f"about {minutes} min" if minutes < 90 else f"about {seconds / 3600:.1f} h"


def expected_duration_caption(config: PruneConfig) -> None:
    """"Expected duration: about N min" for the Prune page's settings (nothing where they cannot run)."""
    plan = plan_for(config)
    if plan.expected:
        st.caption(f"Expected duration: {about(sum(plan.expected.values()))} ({plan.rates.source()}).")
