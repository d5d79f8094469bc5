"""The dense model's perplexity beside the pruned one's, and the judgement of how far apart they are.

A run measures its base model at the settings its checkpoint is evaluated at (dataset, seqlen,
windows, device, precision). The result is kept in the user cache (``cache_dir()/dense-ppl``), keyed
by the model's identity (its files' sizes and mtimes, or the hub commit) and those settings, so only
the first run of a model at given settings pays for it.
"""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import torch

from grasprune.atomic import write_json_atomic
from grasprune.cache import cache_dir
from grasprune.config import CPU_DEFAULTS, GPU_DEFAULTS, PruneConfig
from grasprune.data import source_file
from grasprune.errors import UserError
from grasprune.evaluation.perplexity import PerplexityResult, perplexity
from grasprune.events import Emit
from grasprune.formatting import number, ratio
from grasprune.method.models import EMBEDDED_ALIAS, embedded_gguf_path, load_model

PROTOCOL = 1  # bump when evaluate.perplexity changes what it measures: older cached results stop matching
FAR_WORSE = 3.0  # a pruned perplexity above this multiple of the dense one gets a warning
DATASET_NAMES = {"wikitext2": "WikiText-2", "ptb": "PTB"}
# What the engine reaches with its full CPU settings (CPU_DEFAULTS) on the embedded SmolLM2-135M: the
# README's "Results" rows of the default variant (AMD EPYC, 2026-11-29, seqlen 512, 64 windows),
# WikiText-2 perplexity by keep ratio, and the dense model's.
REFERENCE_DENSE = 29.93
REFERENCE_PRUNED = {0.8: 39.90, 0.7: 57.06, 0.5: 126.29}


def _file_stamp(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def model_identity(spec: str) -> str:
    """What names the weights behind a model spec: a local file or folder by its resolved path and its
    files' sizes and mtimes (a re-saved model is another model), a hub id by the commit the local hub
    cache resolves it to (the one a load uses), when known."""
    spec = str(spec).strip()
    if spec == EMBEDDED_ALIAS or spec.lower().endswith(".gguf"):
        path = embedded_gguf_path() if spec == EMBEDDED_ALIAS else Path(spec).expanduser().resolve()
        return f"gguf:{path.parent}/{_file_stamp(path)}"
    path = Path(spec).expanduser()
    if path.exists():
        folder = path.resolve()
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [folder]
        return f"local:{folder}:" + ",".join(_file_stamp(p) for p in files)
    return f"hub:{spec}@{_hub_commit(spec) or 'unknown'}"


def _hub_commit(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent.name if isinstance(found, str) else None  # .../snapshots/<commit>/config.json


def _cache_path(config: PruneConfig, dataset: str, dtype: torch.dtype) -> tuple[Path, dict]:
    data = source_file(dataset, "evaluation")
    settings = {"protocol": PROTOCOL, "model": model_identity(config.model), "dataset": dataset,
                "dataset_file": None if data is None else f"{data.parent}/{_file_stamp(data)}",
                "seqlen": config.eval_seqlen, "windows": config.eval_windows, "device": config.device,
                "dtype": str(dtype).removeprefix("torch.")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "dense-ppl" / f"{digest}.json", settings


def _cached(path: Path, settings: dict) -> PerplexityResult | None:
    try:
        stored = json.loads(path.read_text())
        return PerplexityResult(**stored["result"]) if stored["settings"] == settings else None
    except (OSError, ValueError, KeyError, TypeError):  # absent, torn by hand or from another version
        return None


def dense_perplexities(config: PruneConfig, dtype: torch.dtype,
                       emit: Emit) -> dict[str, tuple[PerplexityResult, bool]]:
    """``{dataset: (result, cached)}`` of the base model at ``config``'s evaluation settings in ``dtype``.

    The model is loaded only when a dataset is not cached, and freed before this returns; its windows
    are reported as ``eval_progress`` events labelled as the dense model's.
    """
    found = {d: _cache_path(config, d, dtype) for d in config.eval_datasets}
    results = {d: (hit, True) for d, (path, settings) in found.items()
               if (hit := _cached(path, settings)) is not None}
    missing = [d for d in config.eval_datasets if d not in results]
    if missing:
        model, tokenizer = load_model(config.model, dtype=dtype, device=config.device,
                                      trust_remote_code=config.trust_remote_code,
                                      allow_pickle=config.allow_pickle)
        try:
            for dataset in missing:
                result = perplexity(model, tokenizer, dataset, config.eval_seqlen, config.eval_windows,
                                    progress=_progress(emit, dataset))
                _store(*found[dataset], result)
                results[dataset] = (result, False)
        finally:
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return {d: results[d] for d in config.eval_datasets}


def _progress(emit: Emit, dataset: str):
    def report(window: int, total: int) -> None:
        emit("eval_progress", dataset=dataset, window=window, total=total, role="dense",
             label=f"{dataset} (dense model)")

    return report


def _store(path: Path, settings: dict, result: PerplexityResult) -> None:
    try:
        write_json_atomic(path, {"settings": settings, "result": result.to_json()})
    except UserError:
        pass  # an unwritable cache only costs the next run this measurement again


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def perplexity_line(metric: dict) -> str:
    """``WikiText-2 perplexity: pruned 57.1 · dense 30.2 · ×1.89 (seqlen 512, 16 windows)`` from a report's
    metric (its ``dense_ppl`` absent: the pruned figure alone)."""
    text = f"{dataset_name(metric['dataset'])} perplexity: pruned {number(metric['ppl'])}"
    if metric.get("dense_ppl") is not None:
        text += f" · dense {number(metric['dense_ppl'])} · {ratio(metric['ppl'] / metric['dense_ppl'])}"
    windows = metric["windows"]
    return text + f" (seqlen {metric['seqlen']}, {windows} window{'s' if windows != 1 else ''})"


def quality_warning(report: dict) -> str | None:
    """A plain warning when the pruned model's perplexity is more than ``FAR_WORSE`` times the dense one's
    on some dataset (the worst one is named), saying what to change; None otherwise."""
    ratios = [(m["ppl"] / m["dense_ppl"], m) for m in report.get("metrics", {}).values()
              if m.get("dense_ppl")]
    if not ratios or max(r for r, _ in ratios) <= FAR_WORSE:
        return None
    worst, metric = max(ratios, key=lambda pair: pair[0])
    config = report.get("config", {})
    keep = report["keep_ratio"]
    headline = (f"The pruned model is far worse than the dense one: its {dataset_name(metric['dataset'])} "
                f"perplexity is {ratio(worst)} the dense model's ({number(metric['ppl'])} vs "
                f"{number(metric['dense_ppl'])}; this warning shows above ×{FAR_WORSE:g}). "
                "To get closer:")
    calibrate = (f"- calibrate on more samples for more epochs: this run used {_calibration(config)}. The "
                 f"studio's quick settings are a demo; the engine's full settings use {_calibration(CPU_DEFAULTS)} "
                 f"on a CPU and {_calibration(GPU_DEFAULTS)} on a GPU.")
    lines = [headline, f"- keep more parameters: a keep ratio above {keep:g}.", calibrate]
    if report.get("base_model") == EMBEDDED_ALIAS:
        lines.append(f"- {_reference(keep)}")
    return "\n".join(lines)


def _calibration(settings: dict) -> str:
    if settings.get("calib_samples") is None:
        return "its own calibration settings"
    epochs = settings["epochs"]
    return (f"{settings['calib_samples']:,} samples of {settings['block_len']:,} tokens for "
            f"{epochs} epoch{'s' if epochs != 1 else ''}")


def _reference(keep: float) -> str:
    """What the engine's full CPU settings reach on the embedded model at (or around) ``keep``."""
    full = "with its full CPU settings the engine reaches"
    if round(keep, 4) in REFERENCE_PRUNED:
        ppl = REFERENCE_PRUNED[round(keep, 4)]
        text = (f"for this budget: {full} a WikiText-2 perplexity of {number(ppl)} on {EMBEDDED_ALIAS} at keep "
                f"{keep:g} ({ratio(ppl / REFERENCE_DENSE)} its dense {number(REFERENCE_DENSE)})")
        if ppl / REFERENCE_DENSE > FAR_WORSE:
            text += f": above ×{FAR_WORSE:g} even so, so this budget itself costs too much; keep more"
        return text + "."
    shown = ", ".join(f"keep {k:g}: {ratio(p / REFERENCE_DENSE)}"
                      for k, p in sorted(REFERENCE_PRUNED.items(), reverse=True))
    return (f"for comparison: {full} these multiples of the dense WikiText-2 perplexity of {EMBEDDED_ALIAS} "
            f"({number(REFERENCE_DENSE)}): {shown}.")
