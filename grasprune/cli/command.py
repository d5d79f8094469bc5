"""The ``grasprune prune`` and ``grasprune heal`` command lines equivalent to the app's settings (it shows them)."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from grasprune.cli.options import flag_of, negated
from grasprune.config import HealConfig, PruneConfig

# The settings a user picks on the Prune (Heal) page are always written; any other only when not default.
ALWAYS = ("model", "keep_ratio", "calib_data", "calib_samples", "block_len", "epochs", "rescale_samples", "seed",
          "device")
HEAL_ALWAYS = ("steps", "lr", "rank", "data", "samples")


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


def heal_args(source: Path | str, out: Path | str, cfg: HealConfig, overwrite: bool = False,
              restart: bool = False) -> list[str]:
    """``heal ...``: the arguments of the ``grasprune heal`` run of these settings (the studio's job runs them)."""
    default = HealConfig()
    args = ["heal", str(source), "--out", str(out)]
    for field in dataclasses.fields(HealConfig):
        value = getattr(cfg, field.name)
        if value is None or (field.name not in HEAL_ALWAYS and value == getattr(default, field.name)):
            continue
        args += [flag_of(field), ",".join(value) if isinstance(value, list) else str(value)]
    return args + ["--overwrite"] * overwrite + ["--restart"] * restart


def heal_command(source: Path | str, out: Path | str, cfg: HealConfig, overwrite: bool = False,
                 restart: bool = False) -> str:
    return shlex.join(["grasprune", *heal_args(source, out, cfg, overwrite, restart)])
