"""A written checkpoint's perplexities, stored in its grasprune.json as a prune stores its own: what
``grasprune heal --eval`` adds to a healed checkpoint, so a heal has numbers like a run."""

from __future__ import annotations

import json
from pathlib import Path

from grasprune.atomic import write_json_atomic
from grasprune.events import Emit, no_events


def measure_checkpoint(folder: Path, datasets: list[str], seqlen: int, windows: int, emit: Emit = no_events) -> dict:
    """Each dataset's perplexity of the checkpoint at ``folder`` (loaded as a user loads it, in its stored
    precision), added to its report's ``metrics`` (``ppl_<dataset>``); returns the report."""
    from grasprune.evaluation.perplexity import perplexity
    from grasprune.method.export import load_pruned

    emit("phase", phase="evaluation")
    model, tokenizer = load_pruned(folder)
    path = Path(folder) / "grasprune.json"
    report = json.loads(path.read_text())
    for dataset in datasets:
        def progress(done: int, total: int, dataset=dataset) -> None:
            emit("progress", phase="evaluation", done=done, total=total, label=dataset)

        result = perplexity(model, tokenizer, dataset, seqlen, windows, progress)
        report.setdefault("metrics", {})[f"ppl_{dataset}"] = result.to_json()
        emit("metric", **result.to_json())
    write_json_atomic(path, report)
    return report
