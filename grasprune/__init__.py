"""GRASPrune: structured pruning of FFN channels and KV-head groups under one global budget.

The library calls behind the CLI and the app:

- ``load_model(spec) -> (model, tokenizer)``: the embedded alias ``smollm2-135m``, a hub id, a
  folder or a ``.gguf`` file.
- ``prune(PruneConfig(...), out=...) -> report``: gate training, scale calibration, export, evaluation.
- ``perplexity(model, tokenizer, dataset, seqlen, max_windows)``.
- ``save_pruned(...)`` / ``load_pruned(dir) -> (model, tokenizer)``: the checkpoint folder.
- ``keep_freed_memory()``: what the CLI calls first; a process that prunes or evaluates and then ends
  runs a quarter faster on Linux with it (``allocator.py`` says why and what it costs).
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

from grasprune.config import PruneConfig
from grasprune.errors import UserError

__all__ = ["PruneConfig", "UserError", "keep_freed_memory", "load_model", "load_pruned", "perplexity", "prune",
           "save_pruned"]
# imported on first use: `import grasprune` (and so every CLI call, bad input included) stays light
_LAZY = {"perplexity": ".evaluation.perplexity", "load_pruned": ".method.export", "save_pruned": ".method.export",
         "load_model": ".method.models",
         "keep_freed_memory": ".scaleout.allocator"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def prune(
    config: PruneConfig,
    out: str | Path | None = None,
    runs_dir: str | Path | None = None,
    stop: threading.Event | None = None,
    overwrite: bool = False,
) -> dict:
    """Run a whole prune in a new run folder; return the report (also in ``<out>/grasprune.json``)."""
    from grasprune.runs.inputs import check_inputs
    from grasprune.runs.pipeline import prune_run
    from grasprune.runs.store import create_run

    out = Path(out).resolve() if out else None
    check_inputs(config, out, overwrite)  # every refusal before a run folder exists
    run = create_run(config, Path(runs_dir).resolve() if runs_dir else None, out)
    return prune_run(run, stop=stop, overwrite=overwrite)
