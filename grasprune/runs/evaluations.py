"""Dense-vs-pruned evaluations of a completed run, kept in its folder (``evaluations.json``).

Each result is stored under a key naming the model (dense or pruned), the measurement and its
settings, so a page refresh or a second tab shows what was already computed.
"""

from __future__ import annotations

import json
import threading

from grasprune.atomic import write_json_atomic
from grasprune.runs.store import Run

NAME = "evaluations.json"
_LOCK = threading.Lock()


def ppl_key(role: str, dataset: str, seqlen: int, windows: int) -> str:
    return f"ppl|{role}|{dataset}|{seqlen}|{windows}"


def zeroshot_key(role: str, task: str, limit: int) -> str:
    return f"zeroshot|{role}|{task}|{limit}"


def generation_key(role: str, prompt: str, new_tokens: int, sampling: str = "") -> str:
    """The text is a function of these (seeded sampling included; the prompt last: it may hold any character).
    ``sampling`` is ``Sampling.key()``."""
    return f"generation|{role}|{new_tokens}|{sampling}|{prompt}"


def load(run: Run) -> dict:
    try:
        return json.loads((run.folder / NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def record(run: Run, key: str, value: dict) -> None:
    with _LOCK:
        results = load(run)
        results[key] = value
        write_json_atomic(run.folder / NAME, results)
