"""A run's final mask and gate probabilities arranged per layer (layer × unit), for inspection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grasprune.errors import UserError
from grasprune.method.train import gate_probs
from grasprune.runs.store import Run


@dataclass(frozen=True)
class MaskView:
    ffn: np.ndarray  # layers × max FFN channels: 1 kept, 0 pruned, NaN where a layer has fewer
    kv: np.ndarray  # layers × max KV groups
    ffn_probs: np.ndarray  # gate probabilities of all FFN channels (flat)
    kv_probs: np.ndarray


def _padded(parts: list[np.ndarray]) -> np.ndarray:
    width = max(len(p) for p in parts)
    out = np.full((len(parts), width), np.nan)
    for i, part in enumerate(parts):
        out[i, : len(part)] = part
    return out


def split_units(flat: np.ndarray, layers: list[dict]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-layer FFN and KV slices of a flat per-unit vector (units are laid out FFN then KV, per layer)."""
    ffn, kv, start = [], [], 0
    for layer in layers:
        ffn.append(flat[start : start + layer["ffn_channels"]])
        start += layer["ffn_channels"]
        kv.append(flat[start : start + layer["kv_groups"]])
        start += layer["kv_groups"]
    if start != flat.size:
        raise UserError(f"mask has {flat.size} units but the model's layers have {start}: the run folder is corrupt")
    return ffn, kv


def mask_view(run: Run, layers: list[dict]) -> MaskView:
    """From ``scores.safetensors`` (written when gate training ends); ``layers`` from the model event."""
    from safetensors.torch import load_file

    if not run.scores_path.is_file():
        raise UserError(f"run {run.id} has no mask yet: gate training has not finished")
    tensors = load_file(str(run.scores_path))
    probs = gate_probs(tensors["scores"].float(), run.config().tau).numpy()
    ffn, kv = split_units(tensors["mask"].float().numpy(), layers)
    ffn_p, kv_p = split_units(probs, layers)
    return MaskView(_padded(ffn), _padded(kv), np.concatenate(ffn_p), np.concatenate(kv_p))
