"""Numbers as the studio and the CLI show them: thousands separators, one or two decimals, a dash for
nothing (never ``None`` or ``nan``)."""

from __future__ import annotations

import math

BLANK = "–"


def is_blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: float | None) -> str:
    """Two decimals below 10, one from 10 up (``5.43``, ``57.1``, ``1,525.3``): as precise as a reader
    compares perplexities and ratios."""
    if is_blank(value):
        return BLANK
    return f"{value:,.{2 if abs(value) < 10 else 1}f}"


def integer(value: int | None) -> str:
    return BLANK if is_blank(value) else f"{round(value):,}"


def percent(value: float | None) -> str:
    """A value already in percent, with one decimal: ``23.8%``."""
    return BLANK if is_blank(value) else f"{value:,.1f}%"


def ratio(value: float | None) -> str:
    """How many times another value: ``×1.89``, ``×50.7``."""
    return BLANK if is_blank(value) else f"×{number(value)}"


def megabytes(nbytes: int | None) -> str:
    """A size in MiB with one decimal, as the CLI prints file and cache sizes: ``516.5 MB`` (``unknown``
    where the size could not be read)."""
    return "unknown" if nbytes is None else f"{nbytes / 2**20:.1f} MB"
