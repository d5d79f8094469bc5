"""Every run records its dense model's perplexity beside the pruned one's (measured once per model and
settings, then cached), and the run's numbers read the same in the report, the Runs table and the CLI."""

from __future__ import annotations

import os

import pytest
import torch

from grasprune.config import PruneConfig
from grasprune.evaluation.dense_reference import model_identity, perplexity_line, quality_warning
from grasprune.evaluation.perplexity import perplexity
from grasprune.method.models import load_model
from grasprune.runs import evaluations
from grasprune.runs.pipeline import prune_run
from grasprune.runs.store import create_run
from grasprune.runs.timeline import timeline_of
from studio.run_table import cell_text, run_row

TINY = {"keep_ratio": 0.5, "calib_samples": 4, "block_len": 32, "epochs": 1, "rescale_samples": 2, "eval_windows": 2,
        "eval_seqlen": 64, "checkpoint_every": 2, "device": "cpu"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GRASPRUNE_CACHE", str(folder))
    return folder


def dense_events(run) -> tuple[list[dict], list[dict]]:
    events = run.events()
    return ([e for e in events if e["type"] == "dense_metric"],
            [e for e in events if e["type"] == "eval_progress" and e.get("role") == "dense"])


def test_a_run_records_the_dense_perplexity_and_a_second_run_takes_it_from_the_cache(tmp_path, cache,
                                                                                      tiny_model_dir):
    config = PruneConfig(model=str(tiny_model_dir), **TINY)
    first = create_run(config, tmp_path / "runs")
    report = prune_run(first)
    metric = report["metrics"]["ppl_wikitext2"]
    model, tokenizer = load_model(str(tiny_model_dir), dtype=torch.float32, device="cpu")  # the checkpoint's dtype
    expected = perplexity(model, tokenizer, "wikitext2", 64, 2)
    assert metric["dense_ppl"] == pytest.approx(expected.ppl, rel=1e-6)
    assert metric["ppl"] != metric["dense_ppl"]  # half of the units gone: another model
    (measured,), progress = dense_events(first)
    assert measured["cached"] is False and measured["ppl"] == metric["dense_ppl"]
    assert [(e["window"], e["total"], e["label"]) for e in progress] == [(1, 2, "wikitext2 (dense model)"),
                                                                          (2, 2, "wikitext2 (dense model)")]
    events = first.events()
    tl = timeline_of(events[:events.index(measured)])  # as the live view saw it just before the dense figure
    assert tl.eval_progress == ("wikitext2 (dense model)", 2, 2) and tl.dense_metrics == {}
    assert timeline_of(first.events()).dense_metrics["wikitext2"]["ppl"] == metric["dense_ppl"]
    stored = evaluations.load(first)
    assert stored[evaluations.ppl_key("dense", "wikitext2", 64, 2)]["ppl"] == metric["dense_ppl"]
    assert stored[evaluations.ppl_key("pruned", "wikitext2", 64, 2)]["ppl"] == metric["ppl"]
    assert len(list((cache / "dense-ppl").glob("*.json"))) == 1

    second = create_run(config, tmp_path / "runs")
    again = prune_run(second)["metrics"]["ppl_wikitext2"]
    (reused,), progress = dense_events(second)
    assert reused["cached"] is True and progress == []  # no dense model loaded, no window scored
    assert again["dense_ppl"] == metric["dense_ppl"]
    assert evaluations.load(second)[evaluations.ppl_key("dense", "wikitext2", 64, 2)]["ppl"] == metric["dense_ppl"]

    row = run_row(second)
    assert row["dense wikitext2"] == metric["dense_ppl"] and row["ppl wikitext2"] == again["ppl"]
    assert row["dense ptb"] is None and cell_text("dense ptb", row["dense ptb"]) == "–"


def test_no_eval_dense_skips_the_dense_model(tmp_path, cache, tiny_model_dir):
    run = create_run(PruneConfig(model=str(tiny_model_dir), eval_dense=False, **TINY), tmp_path / "runs")
    report = prune_run(run)
    assert "dense_ppl" not in report["metrics"]["ppl_wikitext2"]
    assert dense_events(run) == ([], [])
    assert not (cache / "dense-ppl").exists()


def test_the_cache_key_changes_when_the_weights_are_saved_again(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    before = model_identity(str(copy))
    assert model_identity(str(copy)) == before
    weights = copy / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert model_identity(str(copy)) != before
    assert model_identity("owner/not-cached").startswith("hub:owner/not-cached@")


def metric(ppl: float, dense: float | None) -> dict:
    return {"dataset": "wikitext2", "ppl": ppl, "seqlen": 512, "windows": 16, "tokens": 16 * 511,
            **({} if dense is None else {"dense_ppl": dense})}


def test_the_perplexity_line_puts_dense_beside_pruned():
    assert perplexity_line(metric(57.06, 30.19)) == ("WikiText-2 perplexity: pruned 57.1 · dense 30.2 · ×1.89 "
                                                     "(seqlen 512, 16 windows)")
    assert perplexity_line(metric(1525.3, None)) == "WikiText-2 perplexity: pruned 1,525.3 (seqlen 512, 16 windows)"


def report_of(ppl: float, dense: float, keep: float = 0.7, model: str = "smollm2-135m") -> dict:
    return {"base_model": model, "keep_ratio": keep, "metrics": {"ppl_wikitext2": metric(ppl, dense)},
            "config": {"calib_samples": 32, "block_len": 256, "epochs": 1}}


def test_the_warning_shows_above_three_times_dense_and_says_what_to_change():
    assert quality_warning(report_of(90.0, 30.0)) is None  # exactly 3x: not yet
    assert quality_warning({"metrics": {"ppl_wikitext2": metric(900.0, None)}}) is None  # no dense figure
    warning = quality_warning(report_of(1525.3, 29.93))
    assert warning.startswith("The pruned model is far worse than the dense one: its WikiText-2 perplexity is "
                              "×51.0 the dense model's (1,525.3 vs 29.9; this warning shows above ×3).")
    assert "- keep more parameters: a keep ratio above 0.7." in warning
    assert "this run used 32 samples of 256 tokens for 1 epoch" in warning
    assert "64 samples of 256 tokens for 2 epochs on a CPU and 512 samples of 512 tokens for 4 epochs" in warning
    assert "57.1 on smollm2-135m at keep 0.7 (×1.91 its dense 29.9)" in warning
    at_half = quality_warning(report_of(1525.3, 29.93, keep=0.5))
    assert "126.3 on smollm2-135m at keep 0.5 (×4.22 its dense 29.9): above ×3 even so" in at_half
    elsewhere = quality_warning(report_of(1525.3, 29.93, keep=0.6))
    assert "keep 0.8: ×1.33, keep 0.7: ×1.91, keep 0.5: ×4.22" in elsewhere
    assert "smollm2" not in quality_warning(report_of(1525.3, 29.93, model="/models/mine"))


@pytest.mark.parametrize(("column", "value", "shown"), [
    ("ppl wikitext2", 1525.333, "1,525.3"),
    ("dense wikitext2", 29.934, "29.9"),
    ("ppl ptb", 5.4321, "5.43"),
    ("removed % of all", 23.8412, "23.8%"),
    ("params after", 102452544, "102,452,544"),
    ("keep ratio", 0.7, "0.70"),
    ("ppl wikitext2", None, "–"),
    ("ppl ptb", float("nan"), "–"),
    ("phase", None, "–"),
    ("status", "completed", "completed"),
])
def test_run_table_cells_are_formatted_by_column(column, value, shown):
    assert cell_text(column, value) == shown


def test_a_dense_model_that_does_not_fit_leaves_the_run_completed(tmp_path, cache, tiny_model_dir, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("grasprune.evaluation.dense_reference.load_model", out_of_memory)
    run = create_run(PruneConfig(model=str(tiny_model_dir), **TINY), tmp_path / "runs")
    report = prune_run(run)
    assert run.status()["status"] == "completed" and report["metrics"]["ppl_wikitext2"]["ppl"] > 1
    assert "dense_ppl" not in report["metrics"]["ppl_wikitext2"]
    (skipped,) = [e for e in run.events() if e["type"] == "dense_skipped"]
    assert skipped["message"].startswith("the dense model does not fit on cpu")
