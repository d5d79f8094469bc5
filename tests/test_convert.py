"""A pruned checkpoint in another precision: the library's conversion, its reload (our loader and stock
transformers in a fresh process), the `grasprune export` command and its bad inputs, and the original
model's weight files whose size the Export page shows."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_export import report_for

from grasprune.cli.main import main
from grasprune.errors import UserError
from grasprune.method.adapters import ModelAdapter
from grasprune.method.export import load_pruned, save_pruned
from grasprune.method.models import weight_files, weights_size
from grasprune.method.units import layout_of, project
from grasprune.serving.convert import checkpoint_precision, convert_checkpoint, converted_size, folder_size

from conftest import run_cli, tiny_model

# bf16 keeps 8 bits of mantissa: each weight moves by at most 2^-9 of itself. Through the tiny model's
# two layers that gives logits within 2% of their range (measured: 0.4%).
BF16_LOGIT_TOLERANCE = 0.02
IDS = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, smol_tokenizer) -> Path:
    """A tiny pruned fp32 checkpoint (random mask at keep 0.6, random scales) with the real tokenizer."""
    model = tiny_model("llama", vocab_size=len(smol_tokenizer))
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    mask = project(torch.rand(layout.num_units, generator=torch.Generator().manual_seed(1)), layout,
                   layout.budget(0.6))
    gamma = 1 + 0.3 * torch.tanh(torch.randn(layout.num_units, generator=torch.Generator().manual_seed(2)))
    report = {**report_for(layout, mask, model), "base_model": "smollm2-135m"}
    return save_pruned(tmp_path_factory.mktemp("ckpt") / "checkpoint", adapter, layout, mask, gamma,
                       smol_tokenizer, report)


def dtypes(folder: Path) -> dict[str, str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return {name: handle.get_slice(name).get_dtype() for name in handle.keys()}  # noqa: SIM118


def logits(folder: Path, dtype: torch.dtype | None = None) -> torch.Tensor:
    model, _ = load_pruned(folder, dtype=dtype)
    with torch.no_grad():
        return model(IDS).logits.float()


@pytest.mark.parametrize("precision, name, torch_name", [("bf16", "BF16", "bfloat16"), ("fp16", "F16", "float16")])
def test_half_precision_halves_the_weights_and_copies_everything_else(checkpoint, tmp_path, precision, name,
                                                                      torch_name):
    out = convert_checkpoint(checkpoint, tmp_path / "out", precision)
    assert set(dtypes(out).values()) == {name} and dtypes(out).keys() == dtypes(checkpoint).keys()
    assert checkpoint_precision(out) == precision and checkpoint_precision(checkpoint) == "fp32"
    ratio = (out / "model.safetensors").stat().st_size / (checkpoint / "model.safetensors").stat().st_size
    assert 0.499 < ratio < 0.501
    assert abs(folder_size(out) - converted_size(checkpoint, precision)) < 100  # the estimate: headers only
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == torch_name
    assert {k: v for k, v in config.items() if k != "dtype"} == {
        k: v for k, v in json.loads((checkpoint / "config.json").read_text()).items() if k != "dtype"}
    copied = sorted(p.name for p in checkpoint.iterdir() if p.name not in ("model.safetensors", "config.json"))
    assert {"grasprune.json", "README.md", "modeling_grasprune.py", "tokenizer.json"} <= set(copied)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in checkpoint.iterdir())
    assert filecmp.cmpfiles(checkpoint, out, copied, shallow=False)[0] == copied
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


def test_bf16_logits_stay_within_the_tolerance_and_fp32_round_trips(checkpoint, tmp_path):
    expected = logits(checkpoint)
    bf16 = convert_checkpoint(checkpoint, tmp_path / "bf16", "bf16")
    model, _ = load_pruned(bf16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # loads as stored
    error = (logits(bf16) - expected).abs().max().item()
    assert 0 < error <= BF16_LOGIT_TOLERANCE * (expected.max() - expected.min()).item()
    back = convert_checkpoint(bf16, tmp_path / "fp32", "fp32")  # fp32 on request: the bf16 values, exactly
    assert set(dtypes(back).values()) == {"F32"}
    assert torch.equal(logits(back), logits(bf16, dtype=torch.float32))


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.modules["grasprune"] = None  # as the model card says: stock transformers, remote code
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True, dtype="auto").eval()
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
    with torch.no_grad():
        logits = model(torch.tensor(json.loads(sys.argv[2]))).logits
    from safetensors.torch import save_file
    save_file({"logits": logits.float().contiguous()}, sys.argv[3])
    print("RESULT " + json.dumps({"dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                                  "ids": tokenizer("hi").input_ids}))
    """
)


def test_bf16_export_loads_with_stock_transformers_in_a_fresh_process(checkpoint, tmp_path, smol_tokenizer):
    from safetensors.torch import load_file

    out = convert_checkpoint(checkpoint, tmp_path / "bf16", "bf16")
    result = subprocess.run(  # noqa: PLW1510
        [sys.executable, "-c", FRESH_PROCESS, str(out), json.dumps(IDS.tolist()), str(tmp_path / "logits")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-2000:]
    loaded = json.loads(lines[0][7:])
    assert loaded == {"dtypes": ["torch.bfloat16"], "ids": smol_tokenizer("hi").input_ids}
    assert torch.equal(load_file(str(tmp_path / "logits"))["logits"], logits(out))  # the same model as ours


def test_a_failed_conversion_leaves_the_previous_folder_untouched(checkpoint, tmp_path, monkeypatch):
    from grasprune.serving import convert

    out = convert_checkpoint(checkpoint, tmp_path / "out", "fp16")

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert, "save_file", crash)
    with pytest.raises(UserError, match="cannot write checkpoint .*nothing was left behind"):
        convert_checkpoint(checkpoint, out, "bf16", overwrite=True)
    assert checkpoint_precision(out) == "fp16" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_export_command_writes_bf16_by_default_and_reports_the_sizes(checkpoint, tmp_path):
    out = tmp_path / "exported"
    result = run_cli("export", str(checkpoint), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert checkpoint_precision(out) == "bf16"
    original = weights_size("smollm2-135m")
    assert result.stdout == (f"wrote {out} (bf16): {folder_size(out) / 2**20:.1f} MB; the checkpoint "
                             f"{folder_size(checkpoint) / 2**20:.1f} MB (fp32); the original model "
                             f"{original / 2**20:.1f} MB (smollm2-135m)\n")
    assert main(["export", str(checkpoint), "--dtype", "fp32", "--out", str(out), "--overwrite"]) == 0
    assert checkpoint_precision(out) == "fp32"


def test_export_command_refuses_bad_inputs_in_one_line(checkpoint, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    refusals = [
        (["export", str(tmp_path), "--out", str(tmp_path / "a")], "is not a GRASPrune checkpoint"),
        (["export", str(tmp_path / "missing"), "--out", str(tmp_path / "a")], "is not a GRASPrune checkpoint"),
        (["export", str(checkpoint), "--out", str(tmp_path / "taken")], "exists: pass --overwrite or another --out"),
        (["export", str(checkpoint), "--out", str(checkpoint / "inside")], "overlaps the checkpoint"),
        (["export", str(checkpoint), "--out", str(checkpoint.parent), "--overwrite"], "overlaps the checkpoint"),
    ]
    for argv, message in refusals:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
    for argv, message in ((["export", str(checkpoint), "--dtype", "int8", "--out", str(tmp_path / "a")],
                           "argument --dtype: invalid choice: 'int8' (choose from 'bf16', 'fp16', 'fp32')"),
                          (["export", str(checkpoint)], "the following arguments are required: --out")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and checkpoint_precision(checkpoint) == "fp32"


def test_the_original_models_weight_files_are_found_where_they_are_on_this_machine(tiny_model_dir, tmp_path,
                                                                                     monkeypatch):
    from huggingface_hub import constants

    (gguf,) = weight_files("smollm2-135m")
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and weights_size("smollm2-135m") == gguf.stat().st_size
    assert weights_size(str(gguf)) == gguf.stat().st_size and weight_files(str(tmp_path / "no.gguf")) is None
    assert weight_files(str(tiny_model_dir)) == [tiny_model_dir / "model.safetensors"]
    assert weight_files(str(tmp_path)) is None  # a folder without safetensors
    # a hub id: its snapshot in the local Hugging Face cache, else unknown
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weight_files("owner/model") is None
    commit = "a" * 40
    snapshot = tmp_path / "hub" / "models--owner--model" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(commit)
    assert weight_files("owner/model") == [snapshot / "model.safetensors"]
    assert weight_files("not a model") is None
