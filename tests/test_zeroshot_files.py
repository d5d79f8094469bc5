"""Malformed zero-shot task files fail with one line naming the file and the line (single-row cases are in
test_bad_inputs.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from grasprune.data import data_root
from grasprune.zeroshot_tasks import LOCAL_SOURCES, load_task

GOOD_ARC = {"query": "Question: Why?", "choices": ["a", "b", "c", "d"], "gold": 2}


def write(root: Path, task: str, text: str) -> Path:
    path = root / "zeroshot" / LOCAL_SOURCES[task][0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def jsonl(*rows) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"


@pytest.mark.parametrize("task", sorted(LOCAL_SOURCES))
def test_empty_file_is_an_error_at_line_1(tmp_path, task):
    path = write(tmp_path, task, "")
    if task == "piqa":
        (path.parent / "valid-labels.lst").write_text("0\n")
    with pytest.raises(ValueError, match=f"^{path}, line 1: file is empty$"):
        load_task(task, data_root_dir=tmp_path)


def test_piqa_labels_must_match_the_questions(tmp_path):
    row = {"goal": "g", "sol1": "a", "sol2": "b"}
    path = write(tmp_path, "piqa", jsonl(row, row, row))
    labels = path.with_name("valid-labels.lst")
    labels.write_text("0\n1\n")
    with pytest.raises(ValueError, match=f"^{labels}, line 3: 2 labels for 3 lines of valid.jsonl$"):
        load_task("piqa", data_root_dir=tmp_path)
    labels.write_text("0\n2\n1\n")
    with pytest.raises(ValueError, match=f"^{labels}, line 2: label '2' is not an integer from 0 to 1$"):
        load_task("piqa", data_root_dir=tmp_path)
    del row["sol2"]
    path.write_text(jsonl({"goal": "g", "sol1": "a", "sol2": "b"}, row, row))
    with pytest.raises(ValueError, match=f"^{path}, line 2: field 'sol2' is missing or not a string$"):
        load_task("piqa", data_root_dir=tmp_path)


def test_hellaswag_bad_label_incomplete_item_and_empty_ending(tmp_path):
    item = ["Label: A man sits. he", "1", "a", "b", "c", "d"]
    path = write(tmp_path, "hellaswag", "\n".join(item + ["Label: x", "4", "a", "b", "c", "d"]) + "\n")
    with pytest.raises(ValueError, match=f"^{path}, line 8: label '4' is not an integer from 0 to 3$"):
        load_task("hellaswag", data_root_dir=tmp_path)
    path.write_text("\n".join(item + item[:4]) + "\n")
    with pytest.raises(ValueError, match=f"^{path}, line 7: incomplete item"):
        load_task("hellaswag", data_root_dir=tmp_path)
    path.write_text("\n".join(item[:4] + ["", "d"]) + "\n")
    with pytest.raises(ValueError, match=f"^{path}, line 5: empty ending$"):
        load_task("hellaswag", data_root_dir=tmp_path)


def test_hellaswag_capitalises_the_lower_case_tail_as_lm_eval_does(tmp_path):
    write(tmp_path, "hellaswag", "Label: A man sits. he lifts the ATV\n1\na\nb\nc\nd\n")
    query = load_task("hellaswag", data_root_dir=tmp_path)[0].requests[0][0]
    assert (
        query == "Label: A man sits. He lifts the atv"
    )  # str.capitalize lower-cases the rest, as in lm-eval


def test_data_root_follows_grasprune_data(tmp_path, monkeypatch):
    shutil.copytree(data_root() / "zeroshot" / "openbookqa", tmp_path / "zeroshot" / "openbookqa")
    monkeypatch.setenv("GRASPRUNE_DATA", str(tmp_path))
    assert len(load_task("openbookqa")) == 500
