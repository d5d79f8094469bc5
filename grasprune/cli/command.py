"""The ``grasprune prune`` command line equivalent to a prune config (the app shows it)."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from grasprune.cli.options import flag_of, negated
from grasprune.config import PruneConfig

# The settings a user picks on the Prune page are always written; any other only when not default.
ALWAYS = ("model", "keep_ratio", "calib_data", "calib_samples", "block_len", "epochs", "rescale_samples", "seed",
          "device")


def _value(value) -> str:
    if isinstance(value, list):
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
            if value != negated(field):  # shown where it differs from what leaving the flag out gives
                args.append(flag_of(field))
            continue
        args += [flag_of(field), _value(value)]
    if out is not None:
        args += ["--out", str(out)]
    return shlex.join(args)
