"""Every refusal a prune can make before it trains, in one call: the CLI, the studio and
``grasprune.prune()`` make it before a run folder exists, so a rejected input leaves nothing behind.

In order of cost: the settings themselves (``PruneConfig.resolved``), the output folder, the model spec
(paths, pickles, remote code, an unknown or unreachable hub id), the text sources, the budget against the
model's per-layer minimum (from its config, built on the meta device), and whether the calibration text
holds the blocks asked for (tokenized with the model's tokenizer; the token cache makes the run's own
tokenization free afterwards).
"""

from __future__ import annotations

from pathlib import Path

from grasprune.config import PruneConfig
from grasprune.data import calibration_blocks, check_sources
from grasprune.errors import UserError
from grasprune.method.budget import budget_preview
from grasprune.method.models import load_tokenizer, model_source


def check_inputs(config: PruneConfig, out: Path | None = None, overwrite: bool = False) -> PruneConfig:
    """Raise the one-line ``UserError`` the run would end with, or return the resolved config."""
    resolved = config.resolved()
    if out is not None and out.exists() and not overwrite:
        raise UserError(f"output folder {out} exists: pass --overwrite or another --out")
    model_source(resolved.model, resolved.trust_remote_code, resolved.allow_pickle)
    check_sources([resolved.calib_data, resolved.rescale_data], resolved.eval_datasets)
    budget_preview(resolved.model, resolved.trust_remote_code).aligned(resolved.align).check(resolved.keep_ratio)
    tokenizer = load_tokenizer(resolved.model, resolved.trust_remote_code)
    calibration_blocks(resolved.calib_data, tokenizer, resolved.calib_samples, resolved.block_len)
    if resolved.rescale_epochs > 0:
        calibration_blocks(resolved.rescale_data, tokenizer, resolved.rescale_samples, resolved.block_len,
                           samples_flag="--rescale-samples")
    return resolved
