"""The CLI end to end on a tiny model (its bad inputs are in test_bad_inputs.py)."""

import json
import re

import pytest

from conftest import run_cli

SMALL = ["--calib-samples", "4", "--block-len", "32", "--epochs", "2", "--rescale-samples", "2",
         "--eval-seqlen", "64", "--eval-windows", "2", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def pruned(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    out = root / "out"
    result = run_cli("prune", "--model", str(tiny_model_dir), "--keep-ratio", "0.6", *SMALL, "--out", str(out),
                     "--runs-dir", str(root / "runs"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_prune_writes_a_complete_report(pruned):
    out, result = pruned
    report = json.loads((out / "grasprune.json").read_text())
    params = report["params"]
    assert set(params) >= {"total_before", "total_after", "prunable_before", "prunable_after"}
    kept = params["prunable_after"] / params["prunable_before"]
    assert 0.6 - 0.01 <= kept <= 0.6 + 0.005 or kept <= 0.6  # tiny layers: one KV group is a big step
    assert kept <= 0.6
    assert report["keep_ratio"] == 0.6
    assert len(report["layers"]) == 3
    assert {"ffn_channels", "kv_groups", "q_heads"} <= set(report["layers"][0])
    assert {"gate_training_s", "rescale_s", "export_s"} <= set(report["timing"])
    assert report["config"]["calib_samples"] == 4 and report["config"]["seed"] == 0
    assert report["metrics"]["ppl_wikitext2"]["windows"] == 2
    assert "% of prunable" in result.stdout.replace("prunable,", "% of prunable") or "of prunable" in result.stdout
    assert "of all parameters" in result.stdout
    dense = report["metrics"]["ppl_wikitext2"]["dense_ppl"]
    assert f" · dense {dense:,.1f} · ×" in result.stdout and "WikiText-2 perplexity: pruned " in result.stdout


def test_the_importance_pass_reports_its_progress_per_block_and_each_phase_its_duration(pruned):
    from grasprune.runs.store import list_runs

    out, result = pruned
    (run,) = list_runs(out.parent / "runs")
    events = run.events()
    phase = next(e for e in events if e["type"] == "phase" and e["phase"] == "importance")  # the guided start
    assert phase["total"] == 4
    assert [(e["phase"], e["done"], e["total"]) for e in events if e["type"] == "progress"] == [
        ("importance", n, 4) for n in range(1, 5)]
    for name in ("loading", "importance", "gate_training", "scale_calibration", "export", "evaluation"):
        assert re.search(rf"^\[{name}\] done in \d+\.\ds$", result.stderr, re.MULTILINE), name
    assert "Loading weights" not in result.stderr  # transformers' bars ran into the phase lines on a pipe


def test_ppl_json_on_the_pruned_checkpoint(pruned):
    out, _ = pruned
    result = run_cli("ppl", "--model", str(out), "--dataset", "wikitext2", "--seqlen", "64", "--max-windows", "2",
                     "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert set(answer) >= {"ppl", "seqlen", "windows", "tokens"}
    assert answer["windows"] == 2 and answer["tokens"] == 2 * 63
    report = json.loads((out / "grasprune.json").read_text())
    # the same windows of the same checkpoint, scored in another process (fp32 reduction order may differ)
    assert answer["ppl"] == pytest.approx(report["metrics"]["ppl_wikitext2"]["ppl"], rel=1e-4)


def test_inspect_prints_the_per_layer_table(pruned):
    out, _ = pruned
    result = run_cli("inspect", str(out))
    assert result.returncode == 0
    report = json.loads((out / "grasprune.json").read_text())
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + 3 + 1
    assert f"{report['layers'][0]['ffn_channels']}/96" in lines[1]


def test_same_seed_gives_the_same_mask(pruned, tiny_model_dir, tmp_path):
    out, _ = pruned
    again = tmp_path / "again"
    result = run_cli("prune", "--model", str(tiny_model_dir), "--ratio", "0.4", *SMALL, "--eval", "none",
                     "--out", str(again), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr[-2000:]
    first = json.loads((out / "grasprune.json").read_text())["mask"]
    second = json.loads((again / "grasprune.json").read_text())["mask"]
    assert first == second
    assert (out / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()


def test_a_non_finite_loss_is_a_clear_error(tmp_path, smol_tokenizer):
    import torch

    from conftest import tiny_model

    model = tiny_model("llama", vocab_size=len(smol_tokenizer))
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    folder = tmp_path / "nan-model"
    model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    result = run_cli("prune", "--model", str(folder), *SMALL, "--out", str(tmp_path / "out"),
                     "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "non-finite loss" in errors[0]
    assert not (tmp_path / "out").exists()

