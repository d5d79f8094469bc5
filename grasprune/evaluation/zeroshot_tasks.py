"""The seven zero-shot tasks, built exactly as lm-evaluation-harness 0.4.x builds them (0-shot).

Each task turns its source rows into ``Item``s: one ``(context, continuation)`` request per choice
and the gold index. Prompts, choices and the target delimiter follow lm-eval's task YAMLs:

- piqa: ``"Question: {goal}\\nAnswer:"``, choices ``[sol1, sol2]``.
- arc_easy / arc_challenge: ``"Question: {question}\\nAnswer:"``, choices ``choices.text``.
- openbookqa: ``question_stem``, choices ``choices.text``.
- boolq: ``"{passage}\\nQuestion: {question}?\\nAnswer:"``, choices ``["no", "yes"]``.
- hellaswag: ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``, choices
  ``preprocess(ending)``.
- winogrande (partial scoring): one context per option, ``sentence[:blank] + option``, all scored
  on the same continuation ``sentence[blank + 1:].strip()``.

Every continuation is ``" " + choice`` (lm-eval's ``target_delimiter``). The local files (see each
``SOURCE.md`` under ``grasprune/bundled_data/zeroshot/``) are mostly converted formats; each reader maps
its format back onto lm-eval's fields. The one place where that is not exact is HellaSwag: the
llama.cpp text file has lost the ``ctx_a``/``ctx_b`` split (see ``_hellaswag_query``).
Only the first items of each set ship with grasprune; the full sets come from ``$GRASPRUNE_DATA`` or
from the Hugging Face datasets lm-eval reads (``HF_SOURCES``, online only).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from grasprune.data import BUNDLED_DATA, find_data_file
from grasprune.errors import UserError

TARGET_DELIMITER = " "
TASKS = ("piqa", "winogrande", "hellaswag", "arc_easy", "arc_challenge", "boolq", "openbookqa")
# Tasks whose lm-eval YAML lists acc_norm next to acc.
ACC_NORM_TASKS = frozenset({"piqa", "hellaswag", "arc_easy", "arc_challenge", "openbookqa"})


@dataclass(frozen=True)
class Item:
    """One multiple-choice question: a request per choice, and the choice strings lm-eval divides
    by for acc_norm (for WinoGrande, lm-eval's ``doc_to_choice``: the option-filled contexts)."""

    requests: tuple[tuple[str, str], ...]
    choices: tuple[str, ...]
    gold: int


def multiple_choice(context: str, choices: list[str], gold: int) -> Item:
    """A shared context scored on each choice (lm-eval's default multiple_choice requests)."""
    return Item(tuple((context, TARGET_DELIMITER + c) for c in choices), tuple(choices), gold)


def partial_scoring(contexts: list[str], continuation: str, gold: int) -> Item:
    """One context per choice scored on a shared continuation (lm-eval's multiple-input tasks)."""
    return Item(tuple((c, TARGET_DELIMITER + continuation) for c in contexts), tuple(contexts), gold)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``tasks/hellaswag/utils.py::preprocess``."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


# ---------------------------------------------------------------- Hugging Face (original) format


def _winogrande_from_hf(doc: dict) -> Item:
    blank = doc["sentence"].index("_")
    prefix = doc["sentence"][:blank]
    contexts = [prefix + doc["option1"], prefix + doc["option2"]]
    return partial_scoring(contexts, doc["sentence"][blank + 1 :].strip(), {"1": 0, "2": 1}[doc["answer"]])


def _hellaswag_from_hf(doc: dict) -> Item:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    return multiple_choice(query, [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"]))


def _arc_from_hf(doc: dict) -> Item:
    gold = doc["choices"]["label"].index(doc["answerKey"])
    return multiple_choice(f"Question: {doc['question']}\nAnswer:", doc["choices"]["text"], gold)


def _openbookqa_from_hf(doc: dict) -> Item:
    gold = doc["choices"]["label"].index(doc["answerKey"].lstrip())
    return multiple_choice(doc["question_stem"], doc["choices"]["text"], gold)


HF_SOURCES: dict[str, tuple[tuple[str, str | None, str], Callable[[dict], Item]]] = {
    # task: ((dataset path, config, split lm-eval scores), doc -> Item)
    "piqa": (
        ("baber/piqa", None, "validation"),
        lambda d: multiple_choice(f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], d["label"]),
    ),
    "winogrande": (("allenai/winogrande", "winogrande_xl", "validation"), _winogrande_from_hf),
    "hellaswag": (("Rowan/hellaswag", None, "validation"), _hellaswag_from_hf),
    "arc_easy": (("allenai/ai2_arc", "ARC-Easy", "test"), _arc_from_hf),
    "arc_challenge": (("allenai/ai2_arc", "ARC-Challenge", "test"), _arc_from_hf),
    "boolq": (
        ("aps/super_glue", "boolq", "validation"),
        lambda d: multiple_choice(
            f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"], d["label"]
        ),
    ),
    "openbookqa": (("allenai/openbookqa", "main", "test"), _openbookqa_from_hf),
}


# ---------------------------------------------------------------- local files


class _Row:
    """A parsed source row that knows where it came from, so every check can name file and line."""

    def __init__(self, path: Path, line: int, data: dict):
        self.path, self.line, self.data = path, line, data

    def error(self, problem: str) -> ValueError:
        return ValueError(f"{self.path}, line {self.line}: {problem}")

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str):
            raise self.error(f"field {key!r} is missing or not a string")
        return value

    def texts(self, key: str) -> list[str]:
        value = self.data.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.error(f"field {key!r} is missing or not a non-empty list of strings")
        return value

    def gold(self, key: str, n_choices: int) -> int:
        value = self.data.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(f"field {key!r} is missing or not an integer")
        if not 0 <= value < n_choices:
            raise self.error(f"label {value} out of range for {n_choices} choices")
        return value


def _lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not any(line.strip() for line in lines):
        raise ValueError(f"{path}, line 1: file is empty")
    return lines


def _jsonl_rows(path: Path) -> Iterator[_Row]:
    """One ``_Row`` per non-blank line of a JSON-lines file."""
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object")  # noqa: TRY004 (a format error)
        yield _Row(path, number, data)


def _icl_item(row: _Row, context: str) -> Item:
    """MosaicML ICL multiple-choice row ``{"query", "choices", "gold"}`` with lm-eval's prompt."""
    choices = row.texts("choices")
    return multiple_choice(context, choices, row.gold("gold", len(choices)))


def _strip_prefix(row: _Row, prefix: str) -> str:
    query = row.text("query")
    if not query.startswith(prefix):
        raise row.error(f"field 'query' does not start with {prefix!r}")
    return query[len(prefix) :]


def _label(path: Path, line: int, text: str, n_choices: int) -> int:
    if not text.strip().isdigit() or not 0 <= int(text) < n_choices:
        raise ValueError(f"{path}, line {line}: label {text!r} is not an integer from 0 to {n_choices - 1}")
    return int(text)


def _load_arc(path: Path) -> list[Item]:
    # MosaicML: "Question: {question}"; lm-eval: "Question: {question}\nAnswer:".
    return [_icl_item(r, f"Question: {_strip_prefix(r, 'Question: ')}\nAnswer:") for r in _jsonl_rows(path)]


def _load_boolq(path: Path) -> list[Item]:
    # MosaicML: "Passage: {passage}\nQuestion: {question}?"; lm-eval: "{passage}\nQuestion: {question}?\nAnswer:".
    return [_icl_item(r, _strip_prefix(r, "Passage: ") + "\nAnswer:") for r in _jsonl_rows(path)]


def _load_openbookqa(path: Path) -> list[Item]:
    return [_icl_item(r, r.text("query")) for r in _jsonl_rows(path)]


def _load_winogrande(path: Path) -> list[Item]:
    # MosaicML schema rows already hold lm-eval's partial-scoring pieces: sentence[:blank] + option, and
    # the text after the blank.
    items = []
    for row in _jsonl_rows(path):
        contexts = row.texts("context_options")
        items.append(
            partial_scoring(contexts, row.text("continuation").strip(), row.gold("gold", len(contexts)))
        )
    return items


def _load_piqa(path: Path) -> list[Item]:
    """``valid.jsonl`` (goal, sol1, sol2) with line i's label on line i of ``valid-labels.lst``."""
    labels_path = path.with_name("valid-labels.lst")
    labels = _lines(labels_path)
    rows = list(_jsonl_rows(path))
    if len(labels) != rows[-1].line:
        line = min(len(labels), rows[-1].line) + 1
        raise ValueError(
            f"{labels_path}, line {line}: {len(labels)} labels for {rows[-1].line} lines of {path.name}"
        )
    return [
        multiple_choice(
            f"Question: {row.text('goal')}\nAnswer:",
            [row.text("sol1"), row.text("sol2")],
            _label(labels_path, row.line, labels[row.line - 1], 2),
        )
        for row in rows
    ]


_SENTENCE_BREAK = re.compile(r"[.!?][\"')\]]*\s+")


def _hellaswag_query(line: str) -> str:
    """lm-eval's query from the llama.cpp line ``activity_label: ctx_a ctx_b``.

    The file lost the ``ctx_a``/``ctx_b`` split, and lm-eval capitalises ``ctx_b``
    (``str.capitalize``: first letter up, the rest down). Heuristic: ``ctx_b`` is the text after the
    last sentence break when it starts with a lower-case letter (ActivityNet items: "... roof. he");
    otherwise it is taken as empty or already capitalised and left alone. lm-eval's ``preprocess``
    then removes the bracketed spans the llama.cpp preprocessing kept.
    """
    breaks = list(_SENTENCE_BREAK.finditer(line))
    start = breaks[-1].end() if breaks else line.find(": ") + 2
    tail = line[start:]
    if tail[:1].islower():
        line = line[:start] + tail.capitalize()
    return hellaswag_preprocess(line)


def _load_hellaswag(path: Path) -> list[Item]:
    """llama.cpp text format: 6 lines per item (context, label, four endings)."""
    lines = _lines(path)
    if len(lines) % 6:
        start = len(lines) - len(lines) % 6 + 1
        raise ValueError(
            f"{path}, line {start}: incomplete item (expected 6 lines: context, label, 4 endings)"
        )
    items = []
    for first in range(0, len(lines), 6):
        context, label, *endings = lines[first : first + 6]
        for offset, text in enumerate([context, *endings]):
            if not text.strip():
                number = first + 1 + (0 if offset == 0 else offset + 1)
                raise ValueError(f"{path}, line {number}: empty {'context' if offset == 0 else 'ending'}")
        gold = _label(path, first + 2, label, 4)
        items.append(
            multiple_choice(_hellaswag_query(context), [hellaswag_preprocess(e) for e in endings], gold)
        )
    return items


LOCAL_SOURCES: dict[str, tuple[str, Callable[[Path], list[Item]]]] = {
    "piqa": ("piqa/valid.jsonl", _load_piqa),
    "winogrande": ("winogrande/winogrande.jsonl", _load_winogrande),
    "hellaswag": ("hellaswag/hellaswag_val_full.txt", _load_hellaswag),
    "arc_easy": ("arc_easy/arc_easy.jsonl", _load_arc),
    "arc_challenge": ("arc_challenge/arc_challenge.jsonl", _load_arc),
    "boolq": ("boolq/boolq.jsonl", _load_boolq),
    "openbookqa": ("openbookqa/openbook_qa.jsonl", _load_openbookqa),
}


def check_task_names(names: list[str]) -> None:
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UserError(f"unknown zero-shot task {unknown[0]!r}: choose from {','.join(TASKS)}")


def load_task(
    name: str, limit: int | None = None, data_root_dir: Path | str | None = None, source: str = "local"
) -> list[Item]:
    """The first ``limit`` items (all if None) of task ``name``.

    ``source="hf"`` downloads the split lm-eval scores. ``source="local"`` reads
    ``<data_root_dir>/zeroshot/`` when that is given; otherwise, in order: the task's file under
    ``$GRASPRUNE_DATA``; the Hugging Face Hub when more items are asked than the bundled slice holds
    (unless offline); the bundled slice when they fit in it; else a ``UserError`` saying what to do.
    Malformed local files raise ``ValueError`` naming the file and line.
    """
    check_task_names([name])
    if source == "hf":
        items = _load_from_hub(name, limit)
    elif source == "local":
        items = _load_local(name, limit, data_root_dir)
    else:
        raise UserError(f"unknown zero-shot data source {source!r}: use 'local' or 'hf'")
    return items[:limit] if limit is not None else items


def _load_local(name: str, limit: int | None, data_root_dir: Path | str | None) -> list[Item]:
    relative, reader = LOCAL_SOURCES[name]
    if data_root_dir is not None:
        path = Path(data_root_dir) / "zeroshot" / relative
        if not path.is_file():
            raise UserError(
                f"zero-shot data for {name} not found at {path}: pass a folder holding zeroshot/{relative}"
            )
        return reader(path)
    found = find_data_file(f"zeroshot/{relative}")
    bundled = BUNDLED_DATA / "zeroshot" / relative
    if found is not None and found != bundled:
        return reader(found)  # the full set under $GRASPRUNE_DATA
    items = reader(bundled)
    if limit is not None and limit <= len(items):
        return items
    if _hub_offline():
        reason = "offline: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set"
        raise _beyond_the_slice(name, relative, len(items), reason)
    try:
        return _load_from_hub(name, limit)
    except Exception as err:  # any hub or network failure
        reason = f"the Hugging Face Hub failed: {type(err).__name__}"
        raise _beyond_the_slice(name, relative, len(items), reason) from err


def _beyond_the_slice(name: str, relative: str, shipped: int, reason: str) -> UserError:
    return UserError(
        f"zero-shot task {name}: only the first {shipped} items ship with grasprune; pass --limit {shipped} "
        f"or less, set GRASPRUNE_DATA to a folder holding zeroshot/{relative}, or go online for the full set "
        f"({reason})"
    )


def _hub_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _load_from_hub(name: str, limit: int | None) -> list[Item]:
    import datasets

    (path, config, split), build = HF_SOURCES[name]
    if limit is not None:
        split = f"{split}[:{limit}]"
    return [build(doc) for doc in datasets.load_dataset(path, config, split=split)]
