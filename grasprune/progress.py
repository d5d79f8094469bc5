"""Terminal progress bars that follow a run's event log (the same events the app reads)."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

from tqdm import tqdm

from .runs import Run


@contextmanager
def follow_events(run: Run, interval: float = 0.5):
    """Show one progress bar per phase while the body runs, reading ``run``'s events."""
    done = threading.Event()
    thread = threading.Thread(target=_follow, args=(run, done, interval), daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


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
            print(f"[{event['phase']}]", file=sys.stderr)
            self.open(event["phase"], event.get("total"), "step")
        elif kind == "step" and self.bar is not None:
            self.bar.update(event["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{event['loss']:.3f}")
        elif kind == "eval_progress":
            label = f"ppl {event['dataset']}"
            if self.label != label:
                self.open(label, event["total"], "window")
            if self.bar is not None:
                self.bar.update(event["window"] - self.bar.n)
