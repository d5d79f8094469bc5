"""Terminal progress bars that follow a run's event log (the same events the app reads)."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

from tqdm import tqdm

from grasprune.runs.store import Run
from grasprune.runs.timeline import PROGRESS_UNITS


@contextmanager
def follow_events(run: Run, interval: float = 0.5):
    """Show one progress bar per phase while the body runs, reading ``run``'s events.

    transformers' own bars (``Loading weights``) are off meanwhile: the body writes them from its thread
    while this one prints a phase's ``done in`` line up to ``interval`` later, and on a pipe the two ran
    into one line. The phases already say what is loading."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    done = threading.Event()
    thread = threading.Thread(target=_follow, args=(run, done, interval), daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)
        if was_enabled:
            hf_logging.enable_progress_bar()


def _follow(run: Run, done: threading.Event, interval: float) -> None:
    seen = len(run.events())
    bars = _Bars()
    while True:
        finished = done.wait(interval)
        events = run.events(since=seen)
        seen += len(events)
        for event in events:
            bars.apply(event)
        if finished:
            break
    bars.close()


class _Bars:
    """One tqdm bar at a time, labelled by phase (or by evaluation dataset)."""

    def __init__(self):
        self.bar, self.label = None, None
        self.phase: tuple[str, float] | None = None  # the running phase and its start time

    def end_phase(self, time: float | None) -> None:
        """Say how long the running phase took (its bar shows its progress, not its end)."""
        if self.phase is not None and time is not None:
            print(f"[{self.phase[0]}] done in {time - self.phase[1]:.1f}s", file=sys.stderr)
        self.phase = None

    def open(self, label: str, total: int | None, unit: str) -> None:
        self.close()
        self.label = label
        self.bar = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, disable=None) if total else None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None

    def apply(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "phase":
            self.close()
            self.end_phase(event.get("time"))
            self.phase = (event["phase"], event.get("time", 0.0))
            print(f"[{event['phase']}]", file=sys.stderr)
            self.open(event["phase"], event.get("total"), PROGRESS_UNITS.get(event["phase"], "step"))
        elif kind == "step" and self.bar is not None:
            self.bar.update(event["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{event['loss']:.3f}")
        elif kind == "progress":
            if self.label != event["phase"] or self.bar is None:
                self.open(event["phase"], event["total"], PROGRESS_UNITS.get(event["phase"], "step"))
            if self.bar is not None:
                self.bar.update(event["done"] - self.bar.n)
        elif kind == "done":
            self.close()
            self.end_phase(event.get("time"))
        elif kind == "eval_progress":
            label = f"ppl {event.get('label', event['dataset'])}"
            if self.label != label:
                self.open(label, event["total"], "window")
            if self.bar is not None:
                self.bar.update(event["window"] - self.bar.n)
