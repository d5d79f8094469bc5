"""Text sources for calibration and evaluation, all read from one data root.

A data spec is a name (``wikitext2``, ``wikitext2-valid``, ``c4``, ``ptb``), a local ``.txt`` /
``.jsonl`` / ``.parquet`` file (absolute, relative to the working folder, or relative to the data
root), or a Hugging Face dataset id (``owner/name[:config]``, online only). Any file or name may end
in ``#lines=A:B`` to take a slice of its rows, A and B being row numbers or percentages
(``#lines=0:50%`` is the first half).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = (".txt", ".raw", ".tokens", ".text", ".md", ".jsonl", ".parquet")
SLICE = re.compile(r"^(?P<base>.+?)#lines=(?P<start>\d+%?)?:(?P<end>\d+%?)?$")


def data_root() -> Path:
    """``$GRASPRUNE_DATA``, else the ``shared/data`` folder beside the repository."""
    env = os.environ.get("GRASPRUNE_DATA")
    return Path(env).expanduser().resolve() if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def _named_file(name: str, purpose: str) -> Path | None:
    """Local file behind a dataset name, for calibration or evaluation."""
    root = data_root()
    wiki = root / "wikitext-2-raw"
    table = {
        "calibration": {
            # WikiText-2 train is not shipped here: the raw validation split stands in for it.
            "wikitext2": wiki / "wiki.train.raw" if (wiki / "wiki.train.raw").is_file() else wiki / "wiki.valid.raw",
            "wikitext2-valid": wiki / "wiki.valid.raw",
            "c4": root / "c4-sample" / "c4_validation_2k.jsonl",
            "ptb": root / "ptb" / "ptb.valid.txt",
        },
        "evaluation": {
            "wikitext2": wiki / "wiki.test.raw",
            "wikitext2-valid": wiki / "wiki.valid.raw",
            "ptb": root / "ptb" / "ptb.test.txt",
            "c4": root / "c4-sample" / "c4_validation_2k.jsonl",
        },
    }[purpose]
    if purpose == "calibration" and name in ("wikitext2-test",):
        raise UserError("wikitext2-test is the evaluation split: never calibrate on it (use wikitext2)")
    return table.get(name)


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
        if not named.is_file():
            raise UserError(f"data '{base}' is missing: expected {named} (set GRASPRUNE_DATA to the data folder)")
        return named
    for candidate in (Path(base).expanduser(), data_root() / base):
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
    """All tokens of a source, as one 1-D tensor."""
    ids = tokenizer(source.text(), add_special_tokens=add_special_tokens, return_attention_mask=False).input_ids
    return torch.tensor(ids, dtype=torch.long)


def calibration_blocks(spec: str, tokenizer, num_blocks: int, block_len: int) -> torch.Tensor:
    """The first ``num_blocks`` consecutive blocks of ``block_len`` tokens: shape (num_blocks, block_len).

    Text is tokenised without special tokens, as the reference implementation does.
    """
    if num_blocks < 1 or block_len < 2:
        raise UserError("calibration needs at least 1 sample and a block length of at least 2")
    tokens = tokenize_source(read_source(spec, "calibration"), tokenizer, add_special_tokens=False)
    available = tokens.numel() // block_len
    if available < 1:
        raise UserError(
            f"data '{spec}' has {tokens.numel()} tokens, fewer than one block of {block_len}: "
            "pass more text or a smaller --block-len"
        )
    if available < num_blocks:
        raise UserError(
            f"data '{spec}' holds only {available} blocks of {block_len} tokens, {num_blocks} asked: "
            f"pass --calib-samples {available} or less, or more text"
        )
    return tokens[: num_blocks * block_len].view(num_blocks, block_len)
