"""``grasprune prune``'s flags, derived from the ``PruneConfig`` fields (their ``option`` metadata).

An option is defined once, on ``PruneConfig``: its flag, help, choices and group come from there, so
the parser, the command the studio shows (``cli_command``) and the form's help cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from grasprune.config import PruneConfig

GROUPS = ("model and budget", "calibration", "training", "scale calibration", "evaluation",
          "placement and speed", "security", "experimental")
NUMBER_TYPES = {"int": int, "int | None": int, "float": float, "float | None": float}


def flag_of(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def negated(field: dataclasses.Field) -> bool:
    """A switch that is on by default: its flag turns it off (``--no-eval-dense``)."""
    return field.type == "bool" and field.default is True


def number(kind: type):
    """An argparse type with a one-line error naming the bad text."""
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'a whole number' if kind is int else 'a number'}") \
                from None
    parse.__name__ = kind.__name__
    return parse


def comma_list(text: str) -> list[str]:
    """``a,b`` -> ["a", "b"]; ``none`` or an empty text -> []."""
    return [part for part in text.split(",") if part and part != "none"]


def argument_spec(field: dataclasses.Field) -> dict[str, Any]:
    """argparse keywords for one config field; every default is None (not given), so flags can
    override a --config file field by field."""
    meta = field.metadata
    spec: dict[str, Any] = {"dest": field.name, "default": None, "help": help_text(field)}
    if field.type == "bool":
        spec["action"] = "store_false" if negated(field) else "store_true"
    elif field.type == "list[str]":
        spec["type"] = comma_list
    elif field.type in NUMBER_TYPES:
        spec["type"] = number(NUMBER_TYPES[field.type])
    if meta.get("choices") and field.type != "bool":
        spec["choices"] = list(meta["choices"])
    if meta.get("metavar"):
        spec["metavar"] = meta["metavar"]
    return spec


def help_text(field: dataclasses.Field) -> str:
    text = field.metadata["help"]
    shown_default = field.default if field.default is not dataclasses.MISSING else None
    if shown_default is not None and not isinstance(shown_default, bool) and "default" not in text:
        text += f" (default {shown_default})"
    if field.metadata.get("experimental"):
        text += "; needs --experimental"
    return text.replace("%", "%%")  # argparse %-formats help texts


def add_config_options(parser: argparse.ArgumentParser, extra: dict[str, list] | None = None) -> None:
    """One argument group per option group; ``extra`` maps a field name to more flags that set it
    (mutually exclusive with its own flag), as ``(flag, argparse keywords)`` pairs."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for field in dataclasses.fields(PruneConfig):
        group = groups[field.metadata["group"]]
        if extra and field.name in extra:
            group = group.add_mutually_exclusive_group()
            for flag, spec in extra[field.name]:
                group.add_argument(flag, **spec)
        group.add_argument(flag_of(field), **argument_spec(field))


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(PruneConfig)
            if getattr(args, f.name, None) is not None}
