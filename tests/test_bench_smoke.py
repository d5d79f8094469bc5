"""Every benchmark runs end to end on a tiny model, so none of them rots (the real runs are not tests)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import gpu, gpu_fsdp, quality, speed
from grasprune.config import DEFAULT_VARIANT, PruneConfig

# the 2,048-step projections are rounded to 1 decimal and the step times they come from to 5: a check
# of one against the other allows for both roundings
PROJECTION_ROUNDING = 0.05 + 2048 * 0.5e-5 + 1e-9


def quality_args(model_dir, tmp, *extra):
    return ["--model", str(model_dir), "--keep-ratios", "0.6", "--calib-samples", "2", "--block-len", "16",
            "--epochs", "1", "--rescale-samples", "2", "--datasets", "wikitext2", "--seqlen", "32",
            "--limit-windows", "2", "--runs-dir", str(tmp / "runs"), "--out", str(tmp / "results"), *extra]


@pytest.fixture(scope="module")
def quality_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench-quality")
    assert quality.main(quality_args(tiny_model_dir, tmp, "--methods", "grasprune,magnitude")) == 0
    return tmp


@pytest.mark.parametrize("option", [["--methods", "dense,grasprune"], ["--variants", "guidd"]])
def test_quality_bench_refuses_an_unknown_method_or_variant_before_measuring(option, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quality.parse_args([*option, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "unknown method or variant" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_quality_bench_writes_every_entry_with_its_numbers(quality_run):
    data = json.loads((quality_run / "results" / "quality.json").read_text())
    entries = {e["label"]: e for e in data["entries"]}
    ours = f"grasprune ({DEFAULT_VARIANT})"
    assert list(entries) == ["dense", ours, "grasprune (paper)", "magnitude one-shot", "magnitude +scales"]
    for entry in entries.values():
        assert math.isfinite(entry["metrics"]["wikitext2"]) and entry["metrics"]["wikitext2"] > 1
        assert entry["setting"]["threads"] >= 1 and entry["eval_dtype"]
        assert entry["setting"]["freed_memory_kept"] is sys.platform.startswith("linux")  # as the CLI
    for label in (ours, "grasprune (paper)", "magnitude one-shot", "magnitude +scales"):
        assert 40.0 <= entries[label]["params"]["removed_pct_of_prunable"] < 60.0
    assert entries["magnitude one-shot"]["timing"]["rescale_s"] == 0.0
    assert entries["magnitude +scales"]["timing"]["rescale_s"] > 0.0
    assert os.path.isdir(entries[ours]["checkpoint"]) and entries["magnitude +scales"]["checkpoint"] is None
    # a baseline's scale calibration is the distill variant's, the same as the default's
    assert entries["magnitude +scales"]["settings"]["variant"] == quality.BASELINE_SCALES_VARIANT
    scales = [PruneConfig(variant=v, device="cpu").resolved() for v in (quality.BASELINE_SCALES_VARIANT,
                                                                         DEFAULT_VARIANT)]
    assert len({(c.rescale_distill, c.rescale_lr, c.rescale_epochs, c.distill_topk) for c in scales}) == 1
    table = (quality_run / "results" / "quality.md").read_text()
    assert f"| {ours} | 0.60 |" in table and "seqlen 32, first 2 windows" in table
    assert f"keep 0.60, wikitext2: {ours}" in table and "keep 0.60, wikitext2: grasprune (paper)" in table
    assert (quality_run / "results" / "quality.png").stat().st_size > 10_000


def test_quality_bench_skips_entries_it_already_has(quality_run, tiny_model_dir):
    path = quality_run / "results" / "quality.json"
    before = json.loads(path.read_text())["entries"]
    quality.main(quality_args(tiny_model_dir, quality_run, "--methods", "grasprune,magnitude,random",
                              "--rescale", "off"))
    after = json.loads(path.read_text())["entries"]
    assert after[: len(before)] == before
    assert [e["label"] for e in after[len(before):]] == ["random one-shot"]


def test_speed_bench_measures_overhead_stages_and_inference(quality_run, tiny_model_dir, tmp_path):
    checkpoint = json.loads((quality_run / "results" / "quality.json").read_text())["entries"][1]["checkpoint"]
    assert speed.main(["--model", str(tiny_model_dir), "--checkpoints", checkpoint,
                       "--quality", str(quality_run / "results" / "quality.json"), "--repeats", "2", "--warmup", "1",
                       "--block-len", "16", "--prompts", "1", "--prompt-len", "16", "--new-tokens", "4",
                       "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "speed.json").read_text())
    overhead = data["overhead"]
    # the medians are rounded to 5 decimals, the ratio to 4: allow for those roundings on a fast step
    gate_s, plain_s = overhead["gate_step_median_s"], overhead["plain_step_median_s"]
    rounding = gate_s / plain_s * (0.5e-5 / gate_s + 0.5e-5 / plain_s) + 0.5e-4
    assert overhead["ratio"] == pytest.approx(gate_s / plain_s, rel=1e-2, abs=rounding)
    pairs = [g / p for g, p in zip(overhead["gate_step_s"], overhead["plain_step_s"])]
    assert min(pairs) - 1e-3 <= overhead["paired_ratio"] <= max(pairs) + 1e-3
    # one stage row per pruned entry of the quality results (an earlier test may have added one)
    entries = json.loads((quality_run / "results" / "quality.json").read_text())["entries"]
    assert {s["label"] for s in data["stages"]} == {e["label"] for e in entries if e["label"] != "dense"}
    assert {f"grasprune ({DEFAULT_VARIANT})", "grasprune (paper)", "magnitude one-shot", "magnitude +scales"} <= {
        s["label"] for s in data["stages"]}
    dense, pruned = data["inference"]
    assert dense["method"] == "dense" and pruned["keep_ratio"] == 0.6
    for row in (dense, pruned):
        assert row["decode_tokens_per_s"] > 0 and row["prefill_tokens_per_s"] > 0 and row["peak_rss_bytes"] > 0
        assert row["kv_cache_bytes_per_token"] == row["kv_cache_bytes_per_token_measured"]
    assert pruned["params_read_per_token"] < dense["params_read_per_token"]
    assert pruned["ideal_speedup"] == pytest.approx(dense["params_read_per_token"] / pruned["params_read_per_token"],
                                                    rel=1e-3)
    assert "Ratio **" in (tmp_path / "speed.md").read_text()


def test_gpu_script_runs_its_cpu_fallback_on_a_tiny_shape(tmp_path):
    done = subprocess.run(["bash", "bench/gpu.sh", "--tiny", "--device", "cpu", "--repeats", "2", "--warmup", "1",
                           "--block-len", "32", "--prompts", "1", "--prompt-len", "16", "--new-tokens", "4"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["shape"] == gpu.TINY and data["setting"]["device"] == "cpu"
    training = data["gate_training"]
    assert training["projected_paper_s"] == pytest.approx(training["gate_step_median_s"] * 2048,
                                                          abs=PROJECTION_ROUNDING)
    decode = data["decode"]
    assert decode["kept_params"] <= decode["prunable_params"] // 2
    assert decode["pruned"]["kv_cache_bytes_per_token"] < decode["dense"]["kv_cache_bytes_per_token"]
    assert decode["gated_vs_sliced_max_abs_logit_diff"] < 0.05


def test_fsdp_gpu_script_runs_its_cpu_fallback_on_a_tiny_shape(tmp_path):
    done = subprocess.run(["bash", "bench/gpu_fsdp.sh", "--tiny", "--device", "cpu", "--repeats", "2",
                           "--warmup", "1", "--block-len", "32"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "gpu_fsdp.json").read_text())
    assert data["shape"] == gpu.TINY and data["setting"]["world_size"] == 1
    measured = data["measured"]
    assert measured["fsdp_step_s"] > 0 and measured["plain_step_s"] > 0
    assert measured["fsdp_peak_bytes"] > measured["weights_bytes"]
    assert measured["paper_block_passes_s"] == pytest.approx(measured["fsdp_step_s"] * 2048, abs=PROJECTION_ROUNDING)
    assert data["computed"]["llama-2-70b"]["params"] == 68_976_648_192  # LLaMA-2-70B's published count
    for row in data["computed"].values():
        assert row["gpus"] == 8 and row["steps"] == 2048 // 8
        assert row["memory_per_gpu_bytes"] > row["weights_shard_bytes"] == row["params"] * 2 // 8
        assert row["step_s_overlapped"] <= row["step_s_serial"]
    assert "| llama-2-70b | 8 GPUs, FSDP |" in (tmp_path / "gpu_fsdp.md").read_text()


def test_the_fsdp_projection_counts_parameters_exactly():
    model = gpu.build_model(gpu.TINY, "cpu")
    numbers = gpu_fsdp.shape_numbers(gpu.TINY)
    assert numbers["params"] == sum(p.numel() for p in model.parameters())
    assert numbers["layer_params"] == sum(p.numel() for p in model.model.layers[0].parameters())
    assert gpu_fsdp.shape_numbers(gpu.LLAMA2_7B)["params"] == 6_738_415_616


def test_an_entry_interrupted_mid_run_resumes_its_run(tiny_model_dir, tmp_path, monkeypatch):
    import threading

    from grasprune.errors import Stopped

    stopped = threading.Event()
    stopped.set()  # the run checkpoints and stops before its first step, as a killed grid would leave it
    real = quality.prune_run
    monkeypatch.setattr(quality, "prune_run", lambda run, overwrite: real(run, stop=stopped, overwrite=overwrite))
    args = quality_args(tiny_model_dir, tmp_path, "--methods", "grasprune", "--variants", "paper")
    with pytest.raises(Stopped):
        quality.main(args)
    [interrupted] = [p for p in (tmp_path / "runs").iterdir() if p.name != "checkpoints"]
    monkeypatch.setattr(quality, "prune_run", real)
    assert quality.main(args) == 0
    [entry] = [e for e in json.loads((tmp_path / "results" / "quality.json").read_text())["entries"]
               if e["label"] == "grasprune (paper)"]
    assert entry["resumed"] is True and entry["run"] == str(interrupted.resolve())
    assert "(resumed" in (tmp_path / "results" / "quality.md").read_text()


def _add_entries(json_path: str, writer: int, count: int) -> None:
    for i in range(count):
        quality.add_entry(Path(json_path), {"settings": {"writer": writer, "i": i}})


def test_two_processes_filling_one_grid_lose_no_entry(tmp_path):
    """Two bench.quality processes side by side (one variant each) append to one quality.json."""
    import multiprocessing

    json_path = tmp_path / "results" / "quality.json"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_add_entries, args=(str(json_path), w, 25)) for w in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    settings = [e["settings"] for e in json.loads(json_path.read_text())["entries"]]
    assert sorted((s["writer"], s["i"]) for s in settings) == [(w, i) for w in range(2) for i in range(25)]
    assert quality.done_settings(json_path) == settings
