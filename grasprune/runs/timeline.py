"""A run's progress folded from its event log: what the live view and the run table show.

``Timeline.apply`` is idempotent for replayed steps: a resumed run re-emits the steps after its last
checkpoint, and those replace the earlier values instead of doubling the curves. The per-step curves
keep at most ``HISTORY_POINTS`` points each (older points thinned), so a view that follows a long run
for hours holds a bounded timeline.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grasprune.config import PruneConfig

HISTORY_POINTS = 2048
PHASE_LABELS = {  # every phase, in run order (``run_phases`` gives a run's own)
    "loading": "loading",
    "importance": "importance scoring",
    "gate_training": "gate training",
    "scale_calibration": "scale calibration",
    "export": "export",
    "evaluation": "evaluation",
}
PROGRESS_UNITS = {"importance": "block", "evaluation": "window"}  # the others count optimizer steps


def run_phases(config: PruneConfig) -> list[str]:
    """The phases a run of ``config`` goes through, in order (``config`` resolved: its variant's
    ``score_init`` decides whether gate training starts from an importance pass)."""
    phases = ["loading"]
    if config.method != "grasprune" or config.score_init not in (None, "zero"):
        phases.append("importance")  # a baseline's ranking, or the start of the gate scores
    if config.method == "grasprune":
        phases.append("gate_training")
    if config.rescale_epochs > 0:
        phases.append("scale_calibration")
    phases.append("export")
    if config.eval_datasets:
        phases.append("evaluation")
    return phases


@dataclass
class PhaseSpan:
    """One phase of a run's latest attempt: when it started and ended, and its progress.

    ``part`` counts the separate progress counters a phase runs through (the evaluation scores each
    dataset, and the dense model beside it, with its own window count); ``first`` is the first
    progress point of the current part, from which its own rate is measured."""

    started: float
    total: int | None = None
    ended: float | None = None
    completed: bool = False
    done: int = 0
    part: int = 0
    label: str | None = None
    first: tuple[float, int] | None = None
    last: tuple[float, int] | None = None

    def advance(self, time: float, done: int, total: int | None, label: str | None = None) -> None:
        if self.first is not None and label != self.label:
            self.part, self.first = self.part + 1, None
        self.label, self.done, self.total = label, done, total
        self.first = self.first or (time, done)
        self.last = (time, done)

    def close(self, time: float, completed: bool) -> None:
        if self.ended is None:
            self.ended, self.completed = time, completed

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    @property
    def fraction(self) -> float:
        """Progress through the current part, 0..1."""
        if self.completed:
            return 1.0
        return min(1.0, self.done / self.total) if self.total else 0.0

    def rate(self, min_points: int = 3) -> float | None:
        """Progress units per second of the current part, once it has moved ``min_points - 1`` units
        past its first point (the first step pays for warm-up, so the rate is measured after it)."""
        if self.first is None or self.last is None or self.last[1] - self.first[1] < min_points - 1:
            return None
        elapsed = self.last[0] - self.first[0]
        return (self.last[1] - self.first[1]) / elapsed if elapsed > 0 else None


@dataclass
class Timeline:
    offset: int = 0  # bytes of the event log applied (for ``events.read_new_events``)
    started: float | None = None
    last_time: float | None = None
    phase: str | None = None
    phase_total: int | None = None
    step: int = 0
    eta: float | None = None
    loss: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # phase -> [(step, loss)]
    churn: list[tuple[int, int]] = field(default_factory=list)
    kept_history: list[tuple[int, array, array]] = field(default_factory=list)  # (step, ffn, kv)
    model: dict | None = None  # the "model" event: layer shapes, budget, parameter counts
    placement: dict | None = None  # the latest "placement" event: devices, layers, memory
    ffn_kept: list[int] | None = None
    kv_kept: list[int] | None = None
    eval_progress: tuple[str, int, int] | None = None  # (label, window, total): "ptb (dense model)"
    metrics: dict[str, dict] = field(default_factory=dict)
    dense_metrics: dict[str, dict] = field(default_factory=dict)  # the base model's, at the same settings
    stopped: bool = False
    error: str | None = None
    done: dict | None = None
    config: dict | None = None  # the resolved config of the latest attempt (its "loading" event)
    attempts: int = 0  # how often the run was started: 1, or more once resumed
    spans: dict[str, PhaseSpan] = field(default_factory=dict)  # phase -> its latest span

    def apply(self, event: dict) -> None:
        kind = event.get("type")
        time = event.get("time")
        if time is not None:
            self.started = time if self.started is None else self.started
            self.last_time = time
        if kind == "phase":
            self._phase(event)
        elif kind == "model":
            self.model = event
        elif kind == "placement":
            self.placement = event
        elif kind == "step":
            self._step(event)
            self._advance(event["phase"], time, event["step"], event.get("total"))
        elif kind == "progress":
            self._advance(event["phase"], time, event["done"], event["total"])
        elif kind == "eval_progress":
            self.eval_progress = (event.get("label", event["dataset"]), event["window"], event["total"])
            self._advance("evaluation", time, event["window"], event["total"], self.eval_progress[0])
        elif kind == "metric":
            self.metrics[event["dataset"]] = event
        elif kind == "dense_metric":
            self.dense_metrics[event["dataset"]] = event
        elif kind == "stopped":
            self.stopped = True
            self._close(time, completed=False)
        elif kind == "error":
            self.error = event.get("message")
            self._close(time, completed=False)
        elif kind == "done":
            self.done = event
            self._close(time, completed=True)

    def _phase(self, event: dict) -> None:
        phase, time = event.get("phase"), event.get("time", 0.0)
        if phase == "loading":  # a new attempt: what ran before it without an end was interrupted
            self.config, self.attempts = event.get("config"), self.attempts + 1
        self._close(time, completed=phase != "loading")
        self.phase, self.phase_total = phase, event.get("total")
        self.step, self.eta, self.stopped, self.error = 0, None, False, None
        self.spans[phase] = PhaseSpan(started=time, total=event.get("total"))

    def _close(self, time: float | None, completed: bool) -> None:
        """End the current phase's span: completed when the next phase (or the run) follows it."""
        span = self.spans.get(self.phase or "")
        if span is not None and time is not None:
            span.close(time, completed)

    def _advance(self, phase: str, time: float | None, done: int, total: int | None, label: str | None = None) -> None:
        span = self.spans.get(phase)
        if span is not None and time is not None:
            span.advance(time, done, total, label)

    def _step(self, event: dict) -> None:
        phase, step = event["phase"], event["step"]
        self.phase, self.phase_total, self.step, self.eta = phase, event.get("total"), step, event.get("eta")
        series = self.loss.setdefault(phase, [])
        _append(series, (step, event["loss"]))
        if phase == "gate_training":
            _append(self.churn, (step, event.get("churn", 0)))
            if "ffn_kept" in event:
                self.ffn_kept, self.kv_kept = event["ffn_kept"], event["kv_kept"]
                # packed: a long-polling view keeps thousands of these; as lists of int objects they
                # scatter over the allocator's arenas and each thinning leaves them fragmented
                _append(self.kept_history, (step, array("i", event["ffn_kept"]), array("i", event["kv_kept"])))

    def extend(self, events: list[dict]) -> Timeline:
        for event in events:
            self.apply(event)
        return self

    @property
    def fraction(self) -> float:
        """Progress through the current phase (its current part), 0..1."""
        if self.done:
            return 1.0
        span = self.spans.get(self.phase or "")
        return 0.0 if span is None else span.fraction

    def phase_state(self, phase: str, phases: list[str]) -> str:
        """``done``, ``current``, ``stopped`` (where the latest attempt ended without finishing it),
        ``skipped`` (an earlier phase that never ran: a resumed run restored its result) or ``pending``,
        for ``phase`` of the run's ``phases``."""
        span = self.spans.get(phase)
        if span is not None and span.completed:
            return "done"
        if phase == self.phase and not self.done:
            return "current" if span is None or span.ended is None else "stopped"
        if self.phase in phases and phase in phases and phases.index(phase) < phases.index(self.phase):
            return "skipped"
        return "pending"

    @property
    def phase_label(self) -> str:
        return PHASE_LABELS.get(self.phase or "", self.phase or "waiting to start")


def _append(series: list, point: tuple) -> None:
    """Append a step's point after dropping replayed ones; past ``HISTORY_POINTS``, keep every other
    point but the last (the whole run stays drawn, older steps at a coarser resolution)."""
    _truncate(series, point[0])
    series.append(point)
    if len(series) > HISTORY_POINTS:
        series[:] = series[:-1:2] + [series[-1]]


def _truncate(series: list, step: int) -> None:
    """Drop entries at or after ``step`` (a resumed run replays them)."""
    while series and series[-1][0] >= step:
        series.pop()


def timeline_of(events: list[dict]) -> Timeline:
    return Timeline().extend(events)
