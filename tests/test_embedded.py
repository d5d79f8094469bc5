"""One end-to-end prune of the embedded SmolLM2-135M with a small calibration budget."""

import json

import pytest
import torch
from safetensors.torch import load_file

from grasprune.method.adapters import ModelAdapter
from grasprune.method.export import load_pruned
from grasprune.method.gates import Gates
from grasprune.method.models import load_model
from grasprune.method.units import layout_of

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_embedded_model_prunes_exports_and_matches_the_gated_model(tmp_path):
    out = tmp_path / "smol-pruned"
    runs = tmp_path / "runs"
    result = run_cli("prune", "--model", "smollm2-135m", "--keep-ratio", "0.7", "--calib-samples", "8",
                     "--block-len", "64", "--epochs", "1", "--rescale-samples", "4", "--eval-windows", "1",
                     "--eval-seqlen", "256",
                     "--out", str(out), "--runs-dir", str(runs), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "grasprune.json").read_text())
    params = report["params"]
    kept = params["prunable_after"] / params["prunable_before"]
    assert 0.69 <= kept <= 0.705
    assert params["total_before"] == 134_515_008
    assert report["metrics"]["ppl_wikitext2"]["windows"] == 1

    run_folder = next(runs.iterdir())
    mask = load_file(str(run_folder / "scores.safetensors"))["mask"]
    gamma = load_file(str(run_folder / "gamma.safetensors"))["gamma"]
    # The reference is the gated, rescaled model computed in float64, i.e. that function itself. In fp32 the
    # same function carries its own rounding (7e-5 from the float64 values on one AMD EPYC, more on a CPU
    # without AVX-512), and the export's narrower matmuls sum in other orders: the exported fp32 model must
    # be as exact as the gated model computed in fp32 (within 2x its error, or 1e-4, whichever is larger).
    dense, tokenizer = load_model("smollm2-135m", dtype=torch.float64)
    ids = tokenizer("The quick brown fox jumps over the lazy dog. " * 4, return_tensors="pt").input_ids
    expected = gated_logits(dense, mask * gamma, ids)
    gated_fp32 = gated_logits(dense.float(), mask * gamma, ids)  # in place: float64 no more
    del dense
    pruned, _ = load_pruned(out, dtype=torch.float32)
    with torch.no_grad():
        got = pruned(ids).logits
    assert got.dtype == torch.float32 and gated_fp32.dtype == torch.float32
    own_rounding = (gated_fp32.double() - expected).abs().max().item()
    assert (got.double() - expected).abs().max().item() <= max(1e-4, 2 * own_rounding)
    assert sum(p.numel() for p in pruned.parameters()) == params["total_after"]
    text = tokenizer.decode(pruned.generate(ids[:, :8], max_new_tokens=8, do_sample=False)[0])
    assert len(text) > 0


def gated_logits(model, factors: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` with every unit's gate set to ``factors`` (mask x scale), in the model's dtype."""
    adapter = ModelAdapter(model)
    with Gates(adapter, layout_of(adapter)) as gates, torch.no_grad():
        gates.set(factors.to(next(model.parameters()).dtype))
        return model(ids).logits
