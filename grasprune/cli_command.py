"""The ``grasprune prune`` command line equivalent to a prune config (the app shows it)."""

from __future__ import annotations

import shlex
from pathlib import Path

from .config import PruneConfig

# (config field, flag): the settings a user picks, always written; the rest only when not default.
ALWAYS = (("model", "--model"), ("keep_ratio", "--keep-ratio"), ("calib_data", "--calib-data"),
          ("calib_samples", "--calib-samples"), ("block_len", "--block-len"), ("epochs", "--epochs"),
          ("rescale_samples", "--rescale-samples"), ("seed", "--seed"), ("device", "--device"))
OPTIONAL = (("rescale_data", "--rescale-data"), ("rescale_epochs", "--rescale-epochs"), ("lr", "--lr"),
            ("tau", "--tau"), ("dtype", "--dtype"), ("checkpoint_every", "--checkpoint-every"),
            ("eval_seqlen", "--eval-seqlen"), ("eval_windows", "--eval-windows"))


def prune_command(config: PruneConfig, out: Path | None = None) -> str:
    """``grasprune prune ...`` that produces the same run (same resolved config, same checkpoint)."""
    default = PruneConfig()
    args = ["grasprune", "prune"]
    for name, flag in ALWAYS:
        value = getattr(config, name)
        if value is not None:
            args += [flag, str(value)]
    for name, flag in OPTIONAL:
        value = getattr(config, name)
        if value is not None and value != getattr(default, name):
            args += [flag, str(value)]
    if config.eval_datasets != default.eval_datasets:
        args += ["--eval", ",".join(config.eval_datasets) or "none"]
    if config.trust_remote_code:
        args.append("--trust-remote-code")
    if config.allow_pickle:
        args.append("--allow-pickle")
    if out is not None:
        args += ["--out", str(out)]
    return shlex.join(args)
