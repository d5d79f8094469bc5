"""CUDA: fold exactness on the GPU and the CLI end to end with `--device cuda` (bf16 and fp32).

Skipped where there is no GPU (CI has none); run on a lent GPU machine with
``python -m pytest -q tests/test_cuda.py``. Needs no download and no GGUF: the tiny model's tokenizer
is a word-level one built here from the calibration text.
"""

import json
import random

import pytest
import torch
from test_export import FAMILIES, gated_logits, prune_randomly, report_for

from conftest import run_cli, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

WORDS = [f"w{i}" for i in range(200)]


@pytest.fixture(scope="module")
def cuda_setup(tmp_path_factory):
    """A saved tiny Llama with its own word-level tokenizer, and a calibration text file."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("cuda")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    model = tiny_model("llama", vocab_size=len(vocab))
    model.save_pretrained(root / "model", safe_serialization=True)
    tokenizer.save_pretrained(root / "model")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS[: 20 + i % 180]) for _ in range(60)) for i in range(200)]
    (root / "calib.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("family", FAMILIES)
def test_fold_is_exact_on_the_gpu(family, tmp_path):
    from grasprune.method.export import model_class_for, save_pruned

    model, adapter, layout, mask, gamma = prune_randomly(family)
    model.cuda()
    ids = torch.randint(0, 256, (2, 20), device="cuda")
    expected = gated_logits(model, adapter, layout, mask.cuda(), gamma.cuda(), ids)
    save_pruned(tmp_path / "out", adapter, layout, mask.cuda(), gamma.cuda(), None, report_for(layout, mask, model))
    pruned = model_class_for(model.config.model_type).from_pretrained(tmp_path / "out").cuda().eval()
    with torch.no_grad():
        got = pruned(ids).logits
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_cli_prunes_on_the_gpu(cuda_setup, dtype):
    from grasprune.method.export import load_pruned

    out = cuda_setup / f"out-{dtype}"
    calib = str(cuda_setup / "calib.txt")
    result = run_cli("prune", "--model", str(cuda_setup / "model"), "--device", "cuda", "--dtype", dtype,
                     "--keep-ratio", "0.5", "--calib-data", calib, "--rescale-data", calib, "--calib-samples", "8",
                     "--block-len", "64", "--epochs", "2", "--rescale-samples", "4", "--eval", "none",
                     "--out", str(out), "--runs-dir", str(cuda_setup / f"runs-{dtype}"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "grasprune.json").read_text())
    assert report["config"]["device"].startswith("cuda") and report["config"]["dtype"] == dtype
    params = report["params"]
    assert params["prunable_after"] <= 0.5 * params["prunable_before"]
    model, _ = load_pruned(out, device="cuda")
    assert next(model.parameters()).is_cuda
    assert sum(p.numel() for p in model.parameters()) == params["total_after"]
    ids = torch.tensor([[1, 5, 6, 7, 8]], device="cuda")
    generated = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 10)
