"""``grasprune heal``: LoRA on a pruned tiny checkpoint, merged into a checkpoint of the same shapes,
resumable bit for bit, and lowering the loss it trains on."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from safetensors.torch import load_file
from test_gguf import F32_TOLERANCE, llama_cpp_logits, needs_llama_cpp, relative_error, transformers_logits

from grasprune.data import calibration_blocks
from grasprune.errors import Stopped, UserError
from grasprune.method.export import load_pruned
from grasprune.method.heal import HealConfig, heal, state_folder, with_lora

from conftest import run_cli

SMALL = ["--calib-samples", "4", "--block-len", "32", "--epochs", "1", "--rescale-samples", "2",
         "--eval", "none", "--no-eval-dense", "--device", "cpu", "--dtype", "fp32"]
QUICK = {"steps": 6, "samples": 4, "block_len": 32, "checkpoint_every": 2, "lr": 1e-3, "holdout_every": 2}


@pytest.fixture(scope="module")
def pruned(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("heal") / "pruned"
    done = run_cli("prune", "--model", str(tiny_model_dir), "--keep-ratio", "0.6", *SMALL, "--out", str(out),
                   env={"GRASPRUNE_RUNS": str(out.parent / "runs")})
    assert done.returncode == 0, done.stderr
    return out


def test_a_healed_checkpoint_has_the_source_shapes_and_new_weights(pruned, tmp_path):
    out = tmp_path / "healed"
    done = run_cli("heal", str(pruned), "--out", str(out), "--steps", "6", "--samples", "4", "--block-len", "32",
                   "--lr", "1e-3")
    assert done.returncode == 0, done.stderr
    assert "healed 6 steps" in done.stdout
    before, after = load_file(str(pruned / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    assert {k: v.dtype for k, v in before.items()} == {k: v.dtype for k, v in after.items()}
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)  # the LoRA-adapted linears only
    report = json.loads((out / "grasprune.json").read_text())
    assert report["heal"]["steps"] == 6 and report["mask"] == json.loads((pruned / "grasprune.json").read_text())["mask"]
    assert json.loads((out / "config.json").read_text()) == json.loads((pruned / "config.json").read_text())
    model, _ = load_pruned(out)  # loads as any checkpoint does
    assert not state_folder(out).exists()
    from transformers import AutoModelForCausalLM

    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    ids = torch.arange(1, 20).unsqueeze(0)
    assert torch.allclose(remote(ids).logits, model(ids).logits, atol=1e-5)


def test_the_merged_model_computes_what_the_adapted_one_did(pruned):
    model, tokenizer = load_pruned(pruned, dtype=torch.float32)
    adapted = with_lora(model, HealConfig(rank=4))
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # B starts at 0: make the adapters do something
    ids = calibration_blocks("wikitext2", tokenizer, 2, 32)
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
        merged = adapted.merge_and_unload()
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)


def test_a_stopped_heal_resumes_to_the_same_weights(pruned, tmp_path):
    straight = tmp_path / "straight"
    heal(pruned, straight, HealConfig(**QUICK))
    stop = threading.Event()

    def stop_at_three(kind, **fields):
        if kind == "step" and fields["step"] == 3:
            stop.set()

    resumed = tmp_path / "resumed"
    with pytest.raises(Stopped, match="step 3 of 6"):
        heal(pruned, resumed, HealConfig(**QUICK), emit=stop_at_three, stop=stop)
    assert not resumed.exists() and (state_folder(resumed) / "state.json").is_file()
    steps = []
    heal(pruned, resumed, HealConfig(**QUICK), emit=lambda kind, **f: steps.append(f.get("step")) if kind == "step" else None)
    assert steps == [4, 5, 6]
    assert (straight / "model.safetensors").read_bytes() == (resumed / "model.safetensors").read_bytes()
    held_out = [json.loads((folder / "grasprune.json").read_text())["heal"]["holdout"] for folder in (straight, resumed)]
    assert held_out[0] == held_out[1] and [s for s, _ in held_out[0]["curve"]] == [0, 2, 4, 6]  # the best survives
    other, stop = tmp_path / "other", threading.Event()
    with pytest.raises(Stopped):
        heal(pruned, other, HealConfig(**QUICK), emit=stop_at_three, stop=stop)
    with pytest.raises(UserError, match="other settings"):  # a state of other settings is not mixed in
        heal(pruned, other, HealConfig(**{**QUICK, "lr": 1e-2}))


def test_healing_lowers_the_loss_it_trains_on(pruned, tmp_path):
    cfg = HealConfig(**{**QUICK, "steps": 24, "lr": 5e-3})
    out = tmp_path / "healed"
    heal(pruned, out, cfg)

    def mean_loss(folder) -> float:
        model, tokenizer = load_pruned(folder, dtype=torch.float32)
        blocks = calibration_blocks(cfg.data, tokenizer, cfg.samples, cfg.block_len)
        with torch.no_grad():
            return sum(model(input_ids=b[None], labels=b[None]).loss.item() for b in blocks) / len(blocks)

    assert mean_loss(out) < mean_loss(pruned) - 0.05


def test_the_merged_step_is_the_one_with_the_lowest_held_out_loss(pruned, tmp_path):
    """A heal that only makes things worse on the held-out text (trained on one word repeated, held out on
    WikiText-2) gives back the checkpoint it started from: step 0, the adapters' B still zero, was the best."""
    one_word = tmp_path / "zebra.txt"
    one_word.write_text("zebra " * 4000)
    ruined = tmp_path / "ruined"
    done = run_cli("heal", str(pruned), "--out", str(ruined), "--data", str(one_word), "--holdout", "wikitext2",
                   "--steps", "6", "--samples", "4", "--block-len", "32", "--lr", "0.1", "--holdout-every", "2")
    assert done.returncode == 0, done.stderr
    assert "healed 6 steps" in done.stdout and "merged step 0 (lowest held-out loss)" in done.stdout, done.stdout
    report = json.loads((ruined / "grasprune.json").read_text())["heal"]
    assert report["merged_step"] == report["holdout"]["best_step"] == 0 and report["steps"] == 6
    curve = report["holdout"]["curve"]
    assert [s for s, _ in curve] == [0, 2, 4, 6] and all(loss > curve[0][1] for _, loss in curve[1:])
    before, after = load_file(str(pruned / "model.safetensors")), load_file(str(ruined / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    last = tmp_path / "last"  # the same heal without held-out text merges its last, worse step
    heal(pruned, last, HealConfig(**{**QUICK, "data": str(one_word), "lr": 0.1, "holdout": "none"}))
    report = json.loads((last / "grasprune.json").read_text())["heal"]
    assert report["merged_step"] == 6 and "holdout" not in report
    assert not all(torch.equal(before[k], v) for k, v in load_file(str(last / "model.safetensors")).items())


def test_the_held_out_blocks_follow_the_training_ones_or_come_from_their_own_text(pruned):
    from grasprune.data import text_blocks
    from grasprune.method.heal_holdout import heal_blocks

    _, tokenizer = load_pruned(pruned)
    every = text_blocks("wikitext2", tokenizer, 32)
    train, held = heal_blocks(HealConfig(data="wikitext2", samples=4, block_len=32, holdout_samples=3), tokenizer)
    assert torch.equal(train, every[:4]) and torch.equal(held, every[4:7])
    cfg = HealConfig(data="wikitext2", samples=4, block_len=32, holdout="c4", holdout_samples=2)
    assert torch.equal(heal_blocks(cfg, tokenizer)[1], calibration_blocks("c4", tokenizer, 2, 32))
    assert heal_blocks(HealConfig(samples=4, block_len=32, holdout="none"), tokenizer)[1] is None
    assert HealConfig(holdout=" Next ").holdout_source is None and not HealConfig(holdout="NONE").uses_holdout
    with pytest.raises(UserError, match="--holdout-samples 16 held out after them"):
        heal_blocks(HealConfig(data="wikitext2#lines=0:20", samples=len(every), block_len=32), tokenizer)


@pytest.mark.parametrize("settings, message", [
    ({"steps": 0}, "--steps must be at least 1"),
    ({"holdout_samples": 0}, "--holdout-samples must be at least 1"),
    ({"holdout": "wikitext2#lines=0:50%"}, "--holdout is the training text"),
    ({"holdout": " "}, "--holdout is empty"),
    ({"holdout": "wikitext2#rows"}, "bad data slice"),
    ({"distill": 2.0}, "--distill is a loss weight"),
    ({"lr": 0.0}, "--lr must be positive"),
    ({"minutes": -1.0}, "--minutes must be positive"),
])
def test_bad_settings_are_one_line_errors(settings, message, pruned, tmp_path):
    with pytest.raises(UserError, match=message):
        heal(pruned, tmp_path / "out", HealConfig(**{**QUICK, **settings}))


def test_the_cli_refuses_a_folder_that_is_no_checkpoint_and_its_own_source(pruned, tmp_path):
    done = run_cli("heal", str(tmp_path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "is not a GRASPrune checkpoint" in done.stderr and "Traceback" not in done.stderr
    done = run_cli("heal", str(pruned), "--out", str(pruned))
    assert done.returncode == 2 and "another folder" in done.stderr


def test_the_heal_benchmark_measures_before_and_at_each_mark(pruned, tmp_path):
    from bench.heal import main

    assert main(["--checkpoints", str(pruned), "--marks", "0.01,0.02", "--seqlen", "32", "--windows", "2",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "heal.json").read_text())
    points = result["rows"][0]["points"]
    assert [p["minutes"] >= m for p, m in zip(points, (0, 0.01, 0.02), strict=True)] == [True] * 3
    assert points[0]["steps"] == 0 < points[1]["steps"] <= points[2]["steps"]
    assert all(p["wikitext2"] > 1 for p in points) and "| grasprune keep 0.6" in (tmp_path / "heal.md").read_text()


def test_the_heal_benchmark_by_steps_also_measures_the_step_grasprune_heal_would_merge(pruned, tmp_path):
    from bench.heal import main

    common = ["--checkpoints", str(pruned), "--mark-steps", "2,4", "--seqlen", "32", "--windows", "2", "--threads", "1"]
    assert main([*common, "--holdout", "next", "--out", str(tmp_path / "chosen")]) == 0
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    chosen, plain = (json.loads((tmp_path / name / "heal.json").read_text()) for name in ("chosen", "plain"))
    points = chosen["rows"][0]["points"]
    assert [p["steps"] for p in points] == [0, 2, 4] and chosen["conditions"]["marks_steps"] == [2, 4]
    by_step = {p["steps"]: p["wikitext2"] for p in points}
    for point in points[1:]:  # held out at step 0 and at each mark: the best is one of them, evaluated again
        assert point["selected"]["wikitext2"] == by_step[point["selected"]["step"]]
    # evaluating the best adapters puts the last ones back: the trajectory is the one without selection
    assert [p["wikitext2"] for p in plain["rows"][0]["points"]] == [p["wikitext2"] for p in points]
    assert chosen["rows"][0]["holdout"]["curve"][0][0] == 0 and "selected" not in plain["rows"][0]["points"][1]
    assert "| before | 2 steps | 4 steps |" in (tmp_path / "chosen" / "heal.md").read_text()


@needs_llama_cpp
def test_a_healed_checkpoint_exports_to_gguf_and_runs_in_llama_cpp_as_in_transformers(pruned, tmp_path):
    """Healing keeps the checkpoint format, so everything downstream works on it: here GGUF and llama.cpp."""
    healed = tmp_path / "healed"
    heal(pruned, healed, HealConfig(**QUICK))
    done = run_cli("export", str(healed), "--format", "gguf", "--type", "f32", "--out", str(tmp_path / "gguf"))
    assert done.returncode == 0, done.stderr
    gguf_file = next((tmp_path / "gguf").glob("*.gguf"))
    ids = list(range(1, 41))
    expected = transformers_logits(healed, ids)
    assert relative_error(llama_cpp_logits(gguf_file, ids), expected) < F32_TOLERANCE
    assert relative_error(transformers_logits(pruned, ids), expected) > F32_TOLERANCE  # the healed weights, not the source's
