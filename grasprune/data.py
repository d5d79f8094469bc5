"""Text sources for calibration and evaluation.

A data spec is a name (``wikitext2``, ``wikitext2-valid``, ``c4``, ``ptb``), a local ``.txt`` /
``.jsonl`` / ``.parquet`` file (absolute, relative to the working folder, or relative to a data
root), or a Hugging Face dataset id (``owner/name[:config]``, online only). Any file or name may end
in ``#lines=A:B`` to take a slice of its rows, A and B being row numbers or percentages
(``#lines=0:50%`` is the first half).

The data roots, searched file by file in this order: ``$GRASPRUNE_DATA`` when set (laid out as
``wikitext-2-raw/``, ``ptb/``, ``c4-sample/``, ``zeroshot/<task>/``), then the data bundled inside the
package (``bundled_data/``: WikiText-2 and PTB in full, slices of C4 and of the zero-shot sets).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from grasprune.cache import cached_tokens
from grasprune.errors import UserError

if TYPE_CHECKING:  # tensors come from cached_tokens: reading and checking data specs needs no torch
    import torch

BUNDLED_DATA = Path(__file__).resolve().parent / "bundled_data"
TEXT_SUFFIXES = (".txt", ".raw", ".tokens", ".text", ".md", ".jsonl", ".parquet")
SLICE = re.compile(r"^(?P<base>.+?)#lines=(?P<start>\d+%?)?:(?P<end>\d+%?)?$")


def data_roots() -> list[Path]:
    """The folders data files are looked for in, in order: ``$GRASPRUNE_DATA`` when set, then the bundled
    data."""
    env = os.environ.get("GRASPRUNE_DATA")
    return [Path(env).expanduser().resolve(), BUNDLED_DATA] if env else [BUNDLED_DATA]


def find_data_file(*relatives: str) -> Path | None:
    """The first of ``relatives`` that a data root holds, each looked for in every root before the next."""
    for relative in relatives:
        for root in data_roots():
            if (root / relative).is_file():
                return root / relative
    return None


# Files behind the dataset names, for calibration or evaluation, the preferred file first.
NAMED_FILES = {
    "calibration": {
        # WikiText-2 train does not ship with grasprune: the raw validation split stands in for it.
        "wikitext2": ("wikitext-2-raw/wiki.train.raw", "wikitext-2-raw/wiki.valid.raw"),
        "wikitext2-valid": ("wikitext-2-raw/wiki.valid.raw",),
        "c4": ("c4-sample/c4_validation_2k.jsonl", "c4-sample/c4_validation_256.jsonl"),
        "ptb": ("ptb/ptb.valid.txt",),
    },
    "evaluation": {
        "wikitext2": ("wikitext-2-raw/wiki.test.raw",),
        "wikitext2-valid": ("wikitext-2-raw/wiki.valid.raw",),
        "ptb": ("ptb/ptb.test.txt",),
        "c4": ("c4-sample/c4_validation_2k.jsonl", "c4-sample/c4_validation_256.jsonl"),
    },
}


def _named_file(name: str, purpose: str) -> Path | None:
    """Local file behind a dataset name, for calibration or evaluation (None for other specs)."""
    if purpose == "calibration" and name in ("wikitext2-test",):
        raise UserError("wikitext2-test is the evaluation split: never calibrate on it (use wikitext2)")
    relatives = NAMED_FILES[purpose].get(name)
    if relatives is None:
        return None
    path = find_data_file(*relatives)
    if path is None:
        raise UserError(
            f"data '{name}' is missing: no {relatives[-1]} under {' or '.join(map(str, data_roots()))} "
            f"(reinstall grasprune, or set GRASPRUNE_DATA to a folder holding {relatives[-1]})"
        )
    return path


@dataclass(frozen=True)
class TextSource:
    rows: list[str]
    joiner: str
    origin: str

    def text(self) -> str:
        return self.joiner.join(self.rows)


def read_source(spec: str, purpose: str = "calibration") -> TextSource:
    """Rows of text for a data spec (see module docstring)."""
    spec = str(spec).strip()
    if not spec:
        raise UserError("no data given: pass --calib-data wikitext2, c4, ptb or a .txt/.jsonl/.parquet file")
    base, row_slice = _split_slice(spec)
    path = _resolve_path(base, purpose)
    if path is not None:
        rows = _read_file_rows(path)
        joiner = " " if path.parent.name == "ptb" else "\n\n"
        if path.parent.name == "ptb":  # as the pruning papers: " ".join of the stripped sentences
            rows = [r.strip() for r in rows]
        origin = str(path)
    else:
        rows, joiner, origin = _read_hub_rows(base), "\n\n", base
    rows = row_slice.apply(rows)
    if not any(r.strip() for r in rows):
        raise UserError(f"data '{spec}' is empty: pass a file or slice that holds text")
    return TextSource(rows=rows, joiner=joiner, origin=origin)


def source_file(spec: str, purpose: str = "calibration") -> Path | None:
    """The local file a data spec reads (a named dataset's file or the user's own), or None for a hub id."""
    return _resolve_path(_split_slice(str(spec).strip())[0], purpose)


def check_sources(calibration: list[str], evaluation: list[str]) -> None:
    """Read every text source a run will use, so a missing or malformed one fails before the run starts."""
    for spec in calibration:
        read_source(spec, "calibration")
    for spec in evaluation:
        read_source(spec, "evaluation")


def _split_slice(spec: str) -> tuple[str, _RowSlice]:
    match = SLICE.match(spec)
    if not match:
        if "#" in spec:
            raise UserError(f"bad data slice in '{spec}': write FILE#lines=A:B (rows or percentages, e.g. 0:50%)")
        return spec, _RowSlice(None, None)
    return match["base"], _RowSlice(match["start"], match["end"])


@dataclass(frozen=True)
class _RowSlice:
    """A row slice whose percentages resolve against the number of rows when applied."""

    start: str | None
    end: str | None

    def apply(self, rows: list[str]) -> list[str]:
        total = len(rows)
        return rows[_bound(self.start, total, 0) : _bound(self.end, total, total)]


def _bound(value: str | None, total: int, default: int) -> int:
    if value is None:
        return default
    if value.endswith("%"):
        return round(total * int(value[:-1]) / 100)
    return int(value)


def _resolve_path(base: str, purpose: str) -> Path | None:
    named = _named_file(base, purpose)
    if named is not None:
        return named
    for candidate in (Path(base).expanduser(), *(root / base for root in data_roots())):
        if candidate.is_file():
            if candidate.suffix.lower() not in TEXT_SUFFIXES:
                raise UserError(f"data file {base} is not a text file: pass a {', '.join(TEXT_SUFFIXES)} file")
            return candidate.resolve()
        if candidate.exists():
            raise UserError(f"data '{base}' is not a file: pass a .txt, .jsonl or .parquet file")
    if Path(base).suffix in (".txt", ".jsonl", ".parquet", ".raw", ".json"):
        raise UserError(f"data file not found: {base}")
    return None


def _read_file_rows(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl_rows(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise UserError(f"{path} has no 'text' column: pass a parquet file with a text column")
        return [str(t) for t in table.column("text").to_pylist()]
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text: pass a .txt, .jsonl or .parquet file") from err
    # Hugging Face rows of a raw text file: a line, or "" for a blank line.
    return [line if line.strip() else "" for line in lines]


def _read_jsonl_rows(path: Path) -> list[str]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UserError(f"{path}:{number}: each line needs a string 'text' field")
            rows.append(record["text"])
    return rows


def _read_hub_rows(name: str) -> list[str]:
    if not re.match(r"^[\w.-]+(/[\w.-]+)?(:[\w.-]+)?$", name):
        raise UserError(f"unknown data '{name}': pass wikitext2, c4, ptb, a .txt/.jsonl/.parquet file or a dataset id")
    dataset_id, _, config = name.partition(":")
    try:
        from datasets import load_dataset

        dataset = load_dataset(dataset_id, config or None, split="train")
    except Exception as err:
        raise UserError(
            f"unknown data '{name}': not a known name or file, and the Hugging Face Hub could not provide it "
            f"({type(err).__name__})"
        ) from err
    if "text" not in dataset.column_names:
        raise UserError(f"dataset '{name}' has no 'text' column")
    return list(dataset["text"])


def tokenize_source(source: TextSource, tokenizer, add_special_tokens: bool) -> torch.Tensor:
    """All tokens of a source, as one 1-D tensor (kept in the user cache: see ``grasprune.cache``)."""
    return cached_tokens(source.text(), tokenizer, add_special_tokens)


def text_blocks(spec: str, tokenizer, block_len: int) -> torch.Tensor:
    """Every whole block of ``block_len`` consecutive tokens of a data spec, in order: (blocks, block_len).

    Text is tokenised without special tokens, as the reference implementation does.
    """
    if block_len < 2:
        raise UserError("calibration needs a block length of at least 2")
    tokens = tokenize_source(read_source(spec, "calibration"), tokenizer, add_special_tokens=False)
    available = tokens.numel() // block_len
    if available < 1:
        raise UserError(
            f"data '{spec}' has {tokens.numel()} tokens, fewer than one block of {block_len}: "
            "pass more text or a smaller --block-len"
        )
    return tokens[: available * block_len].view(available, block_len)


def calibration_blocks(spec: str, tokenizer, num_blocks: int, block_len: int,
                       samples_flag: str = "--calib-samples") -> torch.Tensor:
    """The first ``num_blocks`` consecutive blocks of ``block_len`` tokens: shape (num_blocks, block_len).
    ``samples_flag`` is the option a too-large ``num_blocks`` came from, named in the error."""
    if num_blocks < 1 or block_len < 2:
        raise UserError("calibration needs at least 1 sample and a block length of at least 2")
    blocks = text_blocks(spec, tokenizer, block_len)
    if blocks.shape[0] < num_blocks:
        raise UserError(
            f"data '{spec}' holds only {blocks.shape[0]} blocks of {block_len} tokens, {num_blocks} asked: "
            f"pass {samples_flag} {blocks.shape[0]} or less, or more text"
        )
    return blocks[:num_blocks]
