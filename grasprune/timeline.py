"""A run's progress folded from its event log: what the live view and the run table show.

``Timeline.apply`` is idempotent for replayed steps: a resumed run re-emits the steps after its last
checkpoint, and those replace the earlier values instead of doubling the curves. The per-step curves
keep at most ``HISTORY_POINTS`` points each (older points thinned), so a view that follows a long run
for hours holds a bounded timeline.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

HISTORY_POINTS = 2048
PHASES = ("loading", "gate_training", "scale_calibration", "export", "evaluation")
PHASE_LABELS = {
    "loading": "loading",
    "gate_training": "gate training",
    "scale_calibration": "scale calibration",
    "export": "export",
    "evaluation": "evaluation",
}


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
    eval_progress: tuple[str, int, int] | None = None  # (dataset, window, total)
    metrics: dict[str, dict] = field(default_factory=dict)
    stopped: bool = False
    error: str | None = None
    done: dict | None = None

    def apply(self, event: dict) -> None:
        kind = event.get("type")
        time = event.get("time")
        if time is not None:
            self.started = time if self.started is None else self.started
            self.last_time = time
        if kind == "phase":
            self.phase, self.phase_total = event.get("phase"), event.get("total")
            self.step, self.eta, self.stopped, self.error = 0, None, False, None
        elif kind == "model":
            self.model = event
        elif kind == "placement":
            self.placement = event
        elif kind == "step":
            self._step(event)
        elif kind == "eval_progress":
            self.eval_progress = (event["dataset"], event["window"], event["total"])
        elif kind == "metric":
            self.metrics[event["dataset"]] = event
        elif kind == "stopped":
            self.stopped = True
        elif kind == "error":
            self.error = event.get("message")
        elif kind == "done":
            self.done = event

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
        """Progress through the current phase, 0..1."""
        if self.phase == "evaluation" and self.eval_progress:
            return min(1.0, self.eval_progress[1] / max(1, self.eval_progress[2]))
        if self.phase_total:
            return min(1.0, self.step / self.phase_total)
        return 1.0 if self.done else 0.0

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
