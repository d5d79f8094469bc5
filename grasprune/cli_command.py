"""The ``grasprune prune`` command line equivalent to a prune config (the app shows it)."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from .config import PruneConfig

# The settings a user picks on the Prune page are always written; any other only when not default.
ALWAYS = ("model", "keep_ratio", "calib_data", "calib_samples", "block_len", "epochs", "rescale_samples", "seed",
          "device")
FLAGS = {"eval_datasets": "--eval"}  # config fields whose flag is not the field name
NEGATED = {"eval_dense": "--no-eval-dense"}  # switches on by default: their flag turns them off


def _flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def _value(name: str, value) -> str:
    if name == "eval_datasets":
        return ",".join(value) or "none"
    return str(value)


def prune_command(config: PruneConfig, out: Path | None = None) -> str:
    """``grasprune prune ...`` that produces the same run (same resolved config, same checkpoint)."""
    default = PruneConfig()
    args = ["grasprune", "prune"]
    for field in dataclasses.fields(PruneConfig):
        name, value = field.name, getattr(config, field.name)
        if value is None or (name not in ALWAYS and value == getattr(default, name)):
            continue
        if isinstance(value, bool):
            if value != (name in NEGATED):  # shown where it differs from what leaving the flag out gives
                args.append(NEGATED.get(name) or _flag(name))
            continue
        args += [_flag(name), _value(name, value)]
    if out is not None:
        args += ["--out", str(out)]
    return shlex.join(args)
