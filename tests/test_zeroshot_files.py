"""Where zero-shot items come from ($GRASPRUNE_DATA, the Hugging Face Hub, the bundled slices), and malformed
task files failing with one line naming the file and the line (single-row cases are in test_bad_inputs.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from grasprune.errors import UserError
from grasprune.evaluation import zeroshot_tasks
from grasprune.evaluation.zeroshot_tasks import LOCAL_SOURCES, TASKS, load_task

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


def test_hellaswag_drops_every_bracketed_span_like_lm_eval(tmp_path):
    write(tmp_path, "hellaswag", "Label: Call [insert name] now.\n0\nsay [citation needed] hi\nb\nc\nd\n")
    item = load_task("hellaswag", data_root_dir=tmp_path)[0]
    assert item.requests[0] == ("Label: Call now.", " say hi")


@pytest.fixture
def bundled_only(monkeypatch):
    """No $GRASPRUNE_DATA, offline, and a hub loader that records what it is asked instead of downloading."""
    monkeypatch.delenv("GRASPRUNE_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    asked = []

    def hub(name, limit):
        asked.append((name, limit))
        return [zeroshot_tasks.multiple_choice(f"hub {i}", ["a", "b"], 0) for i in range(limit or 1000)]

    monkeypatch.setattr(zeroshot_tasks, "_load_from_hub", hub)
    return asked


@pytest.mark.parametrize("task", TASKS)
def test_the_bundled_slice_serves_up_to_200_items_offline(bundled_only, task):
    assert len(load_task(task, limit=200)) == 200
    assert len(load_task(task, limit=7)) == 7
    assert bundled_only == []


@pytest.mark.parametrize("limit", [201, None], ids=["201", "all"])
def test_more_items_than_ship_offline_is_one_line_saying_what_to_do(bundled_only, limit):
    message = (
        "zero-shot task piqa: only the first 200 items ship with grasprune; pass --limit 200 or less, set "
        "GRASPRUNE_DATA to a folder holding zeroshot/piqa/valid.jsonl, or go online for the full set "
        "(offline: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set)"
    )
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        load_task("piqa", limit=limit)
    assert bundled_only == []


def test_online_the_hub_serves_more_items_than_ship(bundled_only, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    items = load_task("boolq", limit=300)
    assert bundled_only == [("boolq", 300)] and len(items) == 300 and items[0].requests[0][0] == "hub 0"
    assert len(load_task("boolq")) == 1000 and bundled_only[-1] == ("boolq", None)


def test_a_failing_hub_gives_the_same_line_with_its_error(bundled_only, monkeypatch):
    def unreachable(name, limit):
        raise ConnectionError("no route to host")

    monkeypatch.setenv("HF_HUB_OFFLINE", "false")
    monkeypatch.setattr(zeroshot_tasks, "_load_from_hub", unreachable)
    with pytest.raises(UserError, match=r"ship .*\(the Hugging Face Hub failed: ConnectionError\)$"):
        load_task("arc_easy", limit=1000)


def test_grasprune_data_is_read_first_with_any_limit(bundled_only, tmp_path, monkeypatch):
    row = {"query": "Which?", "choices": ["a", "b", "c", "d"], "gold": 1}
    write(tmp_path, "openbookqa", jsonl(*[row] * 250))
    monkeypatch.setenv("GRASPRUNE_DATA", str(tmp_path))
    assert len(load_task("openbookqa")) == 250
    assert load_task("openbookqa", limit=3)[0].requests[0] == ("Which?", " a")  # not the bundled first item
    assert len(load_task("piqa", limit=5)) == 5  # a task missing there: the bundled slice
    assert bundled_only == []
