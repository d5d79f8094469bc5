"""Shared fixtures: tiny random models of every supported family, with the real SmolLM2 tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 16,
    "max_position_embeddings": 512,
}


def tiny_model(family: str = "llama", vocab_size: int = 256, seed: int = 0):
    """A random model of ``family`` whose norms are not all ones (so folding bugs would show)."""
    import transformers

    classes = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
        "mistral": ("MistralConfig", "MistralForCausalLM", {}),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
        "llama-bias": ("LlamaConfig", "LlamaForCausalLM", {"attention_bias": True, "mlp_bias": True}),
    }
    config_name, model_name, extra = classes[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(vocab_size=vocab_size, **TINY, **extra)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.3 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
    return model


def tiny_training_setup(block_seed: int, blocks: int = 3, keep_ratio: float = 0.6):
    """A frozen tiny Llama, its adapter and layout, random calibration blocks of 16 tokens and a budget."""
    from grasprune.method.adapters import ModelAdapter
    from grasprune.method.units import layout_of

    model = tiny_model("llama").requires_grad_(False)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    ids = torch.randint(0, 256, (blocks, 16), generator=torch.Generator().manual_seed(block_seed))
    return model, adapter, layout, ids, layout.budget(keep_ratio)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2's tokenizer, read from the embedded model's converted copy: the first test to ask for it
    converts the GGUF into the user cache (half a minute, once per machine), so the tests that load the
    model after it find the copy, and reading the tokenizer from the folder is faster than from the GGUF."""
    from transformers import AutoTokenizer

    from grasprune.method.models import _converted_gguf_folder, embedded_gguf_path

    return AutoTokenizer.from_pretrained(_converted_gguf_folder(embedded_gguf_path()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A saved tiny Llama (random weights) with the real SmolLM2 tokenizer: a model spec for the CLI."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama", vocab_size=len(smol_tokenizer))
    model.save_pretrained(folder, safe_serialization=True)
    smol_tokenizer.save_pretrained(folder)
    return folder


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """Run ``python -m grasprune`` in a fresh process."""
    return subprocess.run(  # noqa: PLW1510 - callers assert on the return code
        [sys.executable, "-m", "grasprune", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd or REPO,
    )
