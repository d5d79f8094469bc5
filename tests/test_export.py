"""Fold exactness and export round trip for every adapter, and loading in a fresh process."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from grasprune.method.adapters import ModelAdapter
from grasprune.method.export import load_pruned, save_pruned
from grasprune.method.gates import Gates
from grasprune.method.units import layout_of, project

from conftest import tiny_model

FAMILIES = ["llama", "llama-bias", "mistral", "qwen2", "qwen3"]


def prune_randomly(family, keep=0.5, seed=0):
    model = tiny_model(family)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    generator = torch.Generator().manual_seed(seed)
    mask = project(torch.rand(layout.num_units, generator=generator), layout, layout.budget(keep))
    gamma = 1 + 0.45 * torch.tanh(torch.randn(layout.num_units, generator=generator))
    return model, adapter, layout, mask, gamma


def gated_logits(model, adapter, layout, mask, gamma, ids):
    with Gates(adapter, layout) as gates, torch.no_grad():
        gates.set(mask * gamma, key_factors=None if adapter.family.scale_keys else mask)
        return model(ids).logits


def report_for(layout, mask, model):
    from grasprune.runs.pipeline import layer_report, parameter_report

    total = sum(p.numel() for p in model.parameters())
    return {"base_model": "tiny", "keep_ratio": 0.5, "params": parameter_report(layout, mask, total),
            "layers": layer_report(layout, mask)}


@pytest.mark.parametrize("family", FAMILIES)
def test_sliced_checkpoint_reproduces_the_gated_rescaled_model(family, tmp_path):
    model, adapter, layout, mask, gamma = prune_randomly(family)
    ids = torch.randint(0, 256, (2, 20))
    expected = gated_logits(model, adapter, layout, mask, gamma, ids)
    report = report_for(layout, mask, model)
    save_pruned(tmp_path / "out", adapter, layout, mask, gamma, None, report)
    from grasprune.method.export import model_class_for

    pruned = model_class_for(model.config.model_type).from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        got = pruned(ids).logits
    assert (got - expected).abs().max().item() <= 1e-4
    assert sum(p.numel() for p in pruned.parameters()) == report["params"]["total_after"]
    ffn, kv = layout.kept_counts(mask)
    assert [layer.mlp.down_proj.in_features for layer in pruned.model.layers] == ffn
    assert [layer.self_attn.k_proj.out_features // 16 for layer in pruned.model.layers] == kv


def test_export_refuses_an_existing_folder_and_leaves_it_untouched(tmp_path):
    from grasprune.errors import UserError

    model, adapter, layout, mask, gamma = prune_randomly("llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists"):
        save_pruned(out, adapter, layout, mask, gamma, None, report_for(layout, mask, model))
    assert (out / "keep.txt").read_text() == "mine"


def test_a_failed_export_leaves_no_folder(tmp_path, monkeypatch):
    from grasprune.method import export

    model, adapter, layout, mask, gamma = prune_randomly("llama")

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_file", crash)
    from grasprune.errors import UserError

    with pytest.raises(UserError, match="cannot write checkpoint"):
        save_pruned(tmp_path / "out", adapter, layout, mask, gamma, None, report_for(layout, mask, model))
    assert list(tmp_path.iterdir()) == []


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.modules["grasprune"] = None  # grasprune must not be importable here
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = sys.argv[1]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    ids = torch.tensor(json.loads(sys.argv[2]))
    with torch.no_grad():
        logits = model(ids).logits
    prompt = tok("The capital of France is", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    from safetensors.torch import save_file
    save_file({"logits": logits.contiguous()}, sys.argv[3])
    print("RESULT " + json.dumps({"params": sum(p.numel() for p in model.parameters()),
                      "new_tokens": int(generated.shape[1] - prompt.input_ids.shape[1]),
                      "text": tok.decode(generated[0])}))
    """
)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_checkpoint_loads_with_stock_transformers_in_a_fresh_process(family, tmp_path, smol_tokenizer):
    model = tiny_model(family, vocab_size=len(smol_tokenizer))
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    mask = project(torch.rand(layout.num_units, generator=torch.Generator().manual_seed(1)), layout,
                   layout.budget(0.6))
    gamma = 1 + 0.3 * torch.tanh(torch.randn(layout.num_units, generator=torch.Generator().manual_seed(2)))
    ids = torch.randint(0, 1000, (1, 16))
    expected = gated_logits(model, adapter, layout, mask, gamma, ids)
    report = report_for(layout, mask, model)
    out = save_pruned(tmp_path / "ckpt", adapter, layout, mask, gamma, smol_tokenizer, report)
    logits_file = tmp_path / "logits.safetensors"
    result = subprocess.run(  # noqa: PLW1510
        [sys.executable, "-c", FRESH_PROCESS, str(out), json.dumps(ids.tolist()), str(logits_file)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    loaded = json.loads(lines[0][7:])
    assert loaded["params"] == report["params"]["total_after"]
    assert loaded["new_tokens"] == 5 and loaded["text"].startswith("The capital of France is")
    from safetensors.torch import load_file

    assert (load_file(str(logits_file))["logits"] - expected).abs().max().item() <= 1e-4
    # and our own loader, without remote code
    ours, tokenizer = load_pruned(out)
    with torch.no_grad():
        assert (ours(ids).logits - expected).abs().max().item() <= 1e-4
    assert tokenizer("hi").input_ids == smol_tokenizer("hi").input_ids
