"""How long a run takes: each phase's expected duration before it starts, one ETA while it runs.

A phase's duration is its work times a rate. Work is counted in units of one parameter through one
token in one forward pass (``phase_work``): the importance pass and the evaluation run forward passes
only, gate training and scale calibration a forward and a backward (about three forwards) plus the
dense teacher's forward when they distil; loading and export move each parameter once. The rate
(seconds per unit, per phase) comes from the newest completed runs on the same device kind in the
runs folder (``measured_rates``), else from ``BUILTIN_RATES``.

While a run goes, ``whole_run_eta`` adds the current phase's remaining time (from its own progress
rate once it has a few steps, else its prediction) to the predictions of the phases still to come,
scaled by how the finished phases compared with their predictions (a busy machine runs them all
slower).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from grasprune.config import PruneConfig
from grasprune.errors import UserError
from grasprune.method.baselines import CALIBRATION_PASSES
from grasprune.runs.store import list_runs
from grasprune.runs.timeline import Timeline, run_phases, timeline_of

# Seconds per work unit. CPU: measured on this machine's kind (AMD EPYC, 2 cores, torch 2.13 CPU, fp32:
# no bf16 matrix units), 2026-12-06, with `grasprune prune --model smollm2-135m --keep-ratio 0.5
# --calib-samples 8 --block-len 256 --epochs 1 --rescale-samples 8 --eval-windows 8` (the `guided`
# variant: wanda-sp importance, distillation): its event log gave importance 6.6 s, gate training
# 19.9 s, scale calibration 15.1 s, export 2.2 s, evaluation 6.8 s, and a second run's loading 3.3 s
# (the first use of the embedded model converts its GGUF file once: 34 s). CUDA: bench/results/gpu.json
# (an H200, a LLaMA-2-7B-shaped model in bf16, block 512): a gated training step in 0.133 s, used for
# every pass; loading and export are disk-bound, taken from the CPU's.
BUILTIN_RATES = {
    "cpu": {"loading": 2.5e-8, "importance": 2.4e-11, "gate_training": 1.8e-11, "scale_calibration": 2.0e-11,
            "export": 1.6e-8, "evaluation": 2.0e-11},
    "cuda": {"loading": 2.5e-8, "importance": 1.3e-14, "gate_training": 1.3e-14, "scale_calibration": 1.3e-14,
             "export": 1.6e-8, "evaluation": 1.3e-14},
}
# Tokens scored per dataset when the evaluation has no window limit (--eval-windows none): about
# WikiText-2's test split with a Llama-style tokenizer, the larger of the two built-in sets.
UNLIMITED_EVAL_TOKENS = 300_000
CORRECTION_RANGE = (0.2, 5.0)  # how far finished phases may scale the predictions of the pending ones
MEASURED_RUNS = 5


class ModelSize(NamedTuple):
    total_params: int
    prunable_params: int


@dataclass(frozen=True)
class Rates:
    """Seconds per work unit of each phase, and how many earlier runs measured them (0: built in)."""

    per_unit: dict[str, float] = field(default_factory=dict)
    runs: int = 0

    def source(self) -> str:
        if self.runs:
            return f"rates measured on the last {self.runs} completed run{'s' if self.runs != 1 else ''} here"
        return "built-in rates; the runs completed here refine them"


def device_kind(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def phase_parts(config: PruneConfig) -> dict[str, int]:
    """Separate progress counters per phase: the evaluation scores each dataset, and the dense model
    on it beside the pruned one (at most: a dense result from the cache costs nothing)."""
    per_dataset = 2 if config.eval_dense else 1
    return {phase: len(config.eval_datasets) * per_dataset if phase == "evaluation" else 1
            for phase in run_phases(config)}


def phase_work(config: PruneConfig, size: ModelSize, dense_evaluations: int | None = None) -> dict[str, float]:
    """Work units of each phase of ``config``'s run (``config`` resolved), in the run's phase order.

    ``dense_evaluations`` is how many datasets the dense model is scored on: by default all of them
    when the config asks for it (an upper bound: results at the same settings come from the cache).
    """
    total = size.total_params
    pruned = total - size.prunable_params * (1 - config.keep_ratio)
    calib_tokens = config.calib_samples * config.block_len
    rescale_tokens = config.rescale_samples * config.block_len * config.rescale_epochs
    # The sliced student of the scale calibration; with FSDP or a device map the gated full model
    student = total if config.fsdp or config.device_map else pruned
    windows = config.eval_windows or UNLIMITED_EVAL_TOKENS // config.eval_seqlen
    eval_tokens = windows * config.eval_seqlen
    if dense_evaluations is None:
        dense_evaluations = len(config.eval_datasets) if config.eval_dense else 0
    criterion = config.method if config.method != "grasprune" else config.score_init
    # distillation: the full-vocabulary KL costs about a forward pass even where the dense logits are
    # cached (measured: the guided variant's steps take a third longer than the paper's)
    teacher = 1 if config.distill else 0
    work = {
        "loading": total,
        "importance": calib_tokens * CALIBRATION_PASSES.get(criterion, 0) * total,
        "gate_training": calib_tokens * config.epochs * (3 + teacher) * total,
        "scale_calibration": rescale_tokens * (3 * student + (total if config.rescale_distill else 0)),
        "export": total,
        "evaluation": eval_tokens * (len(config.eval_datasets) * pruned + dense_evaluations * total),
    }
    return {phase: float(work[phase]) for phase in run_phases(config)}


def expected_durations(config: PruneConfig, size: ModelSize, rates: Rates) -> dict[str, float]:
    """Seconds each phase of ``config``'s run (resolved) is expected to take, in the run's order."""
    builtin = BUILTIN_RATES[device_kind(config.device)]
    return {phase: units * rates.per_unit.get(phase, builtin[phase])
            for phase, units in phase_work(config, size).items()}


def measured_rates(root: Path, device: str, newest: int = MEASURED_RUNS) -> Rates:
    """Seconds per unit of each phase over the ``newest`` completed runs in ``root`` on ``device``'s kind
    that ran in one go (a resumed run's phases ran in pieces); phases no such run measured are absent."""
    seconds: dict[str, float] = {}
    units: dict[str, float] = {}
    used = 0
    for run in list_runs(root):
        if used == newest:
            break
        if run.status().get("status") != "completed":
            continue
        measured = _measured_phases(run.events(), device)
        if measured is None:
            continue
        for phase, (duration, work) in measured.items():
            seconds[phase] = seconds.get(phase, 0.0) + duration
            units[phase] = units.get(phase, 0.0) + work
        used += 1
    return Rates({phase: seconds[phase] / units[phase] for phase in seconds if units[phase] > 0}, used)


def _measured_phases(events: list[dict], device: str) -> dict[str, tuple[float, float]] | None:
    """``{phase: (seconds, work units)}`` of one completed run's log, None if it does not fit."""
    tl = timeline_of(events)
    if tl.attempts != 1 or tl.config is None or tl.model is None:
        return None
    try:
        config = PruneConfig.from_dict(tl.config)  # resolved by the pipeline when it started
    except UserError:  # a log from another version of the config
        return None
    if device_kind(config.device) != device_kind(device):
        return None
    dense = sum(1 for e in events if e.get("type") == "dense_metric" and not e.get("cached"))
    work = phase_work(config, ModelSize(tl.model["total_params"], tl.model["prunable_params"]), dense)
    return {phase: (span.duration, work[phase]) for phase, span in tl.spans.items()
            if span.completed and span.duration is not None and work.get(phase)}


def rates_for(root: Path, device: str) -> Rates:
    """The measured rates where earlier runs give them, the built-in ones for the other phases."""
    measured = measured_rates(root, device)
    return Rates({**BUILTIN_RATES[device_kind(device)], **measured.per_unit}, measured.runs)


def correction(tl: Timeline, expected: dict[str, float]) -> float:
    """How much longer (> 1) or shorter the finished phases took than predicted, within
    ``CORRECTION_RANGE``; 1 before any finished."""
    actual = predicted = 0.0
    for phase, seconds in expected.items():
        span = tl.spans.get(phase)
        if span is not None and span.completed and span.duration is not None and seconds > 0:
            actual, predicted = actual + span.duration, predicted + seconds
    if predicted <= 0:
        return 1.0
    low, high = CORRECTION_RANGE
    return min(high, max(low, actual / predicted))


def phase_remaining(tl: Timeline, phase: str, expected: float, parts: int, factor: float, now: float) -> float:
    """Seconds left in the running ``phase``: from its own progress rate once it has a few steps (its
    parts not reached yet counted as long as the current one), else its corrected prediction less the
    time it has run."""
    span = tl.spans[phase]
    rate = span.rate()
    if rate is not None and span.total and span.last is not None:
        units = span.total - span.done + max(0, parts - span.part - 1) * span.total
        return max(0.0, units / rate - (now - span.last[0]))
    return max(0.0, expected * factor - (now - span.started))


def whole_run_eta(tl: Timeline, expected: dict[str, float], parts: dict[str, int], now: float) -> float:
    """Seconds until the run ends (``expected``: each phase's prediction, in the run's phase order).

    Running: the current phase's remaining time plus the corrected predictions of the phases after it.
    Not started, or stopped (to be resumed): the corrected predictions of every phase not done yet.
    """
    if tl.done:
        return 0.0
    phases = list(expected)
    factor = correction(tl, expected)
    if tl.phase not in phases or tl.phase_state(tl.phase, phases) != "current":
        return factor * sum(seconds for p, seconds in expected.items()
                            if tl.phase_state(p, phases) not in ("done", "skipped"))
    current = phase_remaining(tl, tl.phase, expected[tl.phase], parts.get(tl.phase, 1), factor, now)
    later = phases[phases.index(tl.phase) + 1:]
    return current + factor * sum(expected[p] for p in later if tl.phase_state(p, phases) != "done")
