"""Serve a GRASPrune checkpoint with vLLM (through the vllm-grasprune plugin) and check its greedy tokens
against transformers'.

    bash bench/gpu_vllm.sh                          # GPU machine with vLLM: $OUT/gpu_vllm_{llama,mistral}.json
    python -m bench.gpu_vllm --family llama --out DIR

The checkpoint is a small random model of the family, pruned by our projection at keep 0.5 from random
scores (so every layer keeps its own FFN width and number of KV groups) and written by ``save_pruned``.
Its ``lm_head`` is scaled up so that the next token is rarely a near-tie. vLLM generates greedily from
token-id prompts (no tokenizer). Each served token is then checked teacher-forced against the fp32
transformers model (our classes, as ``load_pruned`` uses them): its logit must be within ``--tolerance`` of the best one at that
position, which allows a near-tie to go either way under vLLM's bf16 kernels but not a different model.
Transformers' own greedy tokens are recorded beside them, with the first position where the two differ.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from grasprune.atomic import write_json_atomic
from grasprune.method.adapters import ModelAdapter
from grasprune.method.export import model_class_for, save_pruned
from grasprune.method.units import layout_of, project

SHAPE = {"vocab_size": 1024, "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4,
         "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64, "max_position_embeddings": 512}
CONFIGS = {"llama": "LlamaConfig", "mistral": "MistralConfig"}
MODELS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
LOGIT_SCALE = 10.0  # lm_head init std 0.02 gives logits of std ~0.45 over 1,024 tokens: mostly near-ties
PROMPT_LENGTHS = (8, 13, 21, 34)
PLUGIN = "grasprune"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_vllm", description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=sorted(CONFIGS), default="llama")
    p.add_argument("--keep-ratio", type=float, default=0.5)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--dtype", default="bfloat16", help="vLLM's dtype (the reference is always fp32)")
    p.add_argument("--tolerance", type=float, default=0.25,
                   help="how far below the reference's best logit a served token may be")
    p.add_argument("--preflight", action="store_true", help="only check that vLLM can be imported")
    p.add_argument("--out", type=Path, default=Path("."))
    return p.parse_args(argv)


def missing_requirement(plugin: bool) -> str | None:
    """Why this machine cannot serve with vLLM (one line), or None."""
    if importlib.util.find_spec("vllm") is None:
        return ("vLLM is not installed for this python and cannot be fetched here: `pip install vllm` "
                "(0.33.0 is a 336 MB wheel, more than a device call can carry); nothing served")
    if plugin and PLUGIN not in {e.name for e in importlib.metadata.entry_points(group="vllm.general_plugins")}:
        return "the vllm-grasprune plugin is not installed: `pip install integrations/vllm_grasprune`"
    return None


def build_checkpoint(folder: Path, family: str, keep_ratio: float, seed: int = 0) -> Path:
    """A random ``family`` model of ``SHAPE``, pruned at ``keep_ratio`` from random scores, saved."""
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, CONFIGS[family])(**SHAPE)
    model = getattr(transformers, MODELS[family])(config).eval().requires_grad_(False)
    model.lm_head.weight.mul_(LOGIT_SCALE)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    scores = torch.rand(layout.num_units, generator=torch.Generator().manual_seed(seed))
    mask = project(scores, layout, layout.budget(keep_ratio))
    report = {"base_model": f"random {family} {SHAPE}", "keep_ratio": keep_ratio}
    return save_pruned(folder, adapter, layout, mask, torch.ones(layout.num_units), None, report)


def prompts(seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, SHAPE["vocab_size"], (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


@torch.no_grad()
def greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    """Transformers' greedy continuation (a full forward per token: the sequences are short)."""
    ids = list(prompt)
    device = next(model.parameters()).device
    for _ in range(new_tokens):
        ids.append(int(model(torch.tensor([ids], device=device)).logits[0, -1].argmax()))
    return ids[len(prompt):]


@torch.no_grad()
def logit_gaps(model, prompt: list[int], tokens: list[int]) -> list[float]:
    """For each of ``tokens`` (a continuation of ``prompt``): the best logit minus its logit, teacher-forced."""
    device = next(model.parameters()).device
    logits = model(torch.tensor([prompt + tokens], device=device)).logits[0, len(prompt) - 1:-1].float()
    chosen = logits.gather(1, torch.tensor(tokens, device=device)[:, None])[:, 0]
    return (logits.max(dim=1).values - chosen).tolist()


def compare(reference: list[int], served: list[int], gaps: list[float], tolerance: float) -> dict:
    first = next((i for i, (a, b) in enumerate(zip(reference, served, strict=True)) if a != b), None)
    return {"reference": reference, "served": served, "identical": first is None, "first_difference": first,
            "max_gap": round(max(gaps), 5), "within_tolerance": max(gaps) <= tolerance}


def serve(folder: Path, prompt_ids: list[list[int]], new_tokens: int, dtype: str) -> tuple[list[list[int]], dict]:
    """vLLM's greedy tokens for every prompt, and what served them."""
    from vllm import LLM, ModelRegistry, SamplingParams
    from vllm.inputs import TokensPrompt

    started = time.perf_counter()
    llm = LLM(model=str(folder), trust_remote_code=True, dtype=dtype, skip_tokenizer_init=True,
              enforce_eager=True, max_model_len=256, gpu_memory_utilization=0.3, seed=0)
    load_s = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True, detokenize=False)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params)
    model_config = llm.llm_engine.model_config
    info = {"architectures": list(model_config.architectures),
            "resolved_architecture": getattr(model_config, "architecture", None),  # TransformersForCausalLM = fallback
            "registered": sorted(a for a in ModelRegistry.get_supported_archs() if a.startswith("Grasprune")),
            "load_s": round(load_s, 2)}
    return [list(o.outputs[0].token_ids) for o in outputs], info


def reference(folder: Path, device: str):
    """The checkpoint in fp32 through transformers (our model classes; the folder has no tokenizer)."""
    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    return model_class_for(model_type).from_pretrained(folder, dtype=torch.float32).to(device).eval()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = missing_requirement(plugin=not args.preflight)
    if problem:
        print(f"bench/gpu_vllm: {problem}", file=sys.stderr)
        return 3
    if args.preflight:
        return 0
    import vllm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_checkpoint(Path(tmp) / "checkpoint", args.family, args.keep_ratio)
        prompt_ids = prompts()
        served, info = serve(folder, prompt_ids, args.new_tokens, args.dtype)
        reference_model = reference(folder, device)
        config = reference_model.config
        rows = [compare(greedy(reference_model, p, args.new_tokens), s, logit_gaps(reference_model, p, s),
                        args.tolerance) for p, s in zip(prompt_ids, served, strict=True)]
    result = {
        "family": args.family, "shape": SHAPE, "keep_ratio": args.keep_ratio,
        "layer_intermediate_sizes": config.layer_intermediate_sizes,
        "layer_num_key_value_heads": config.layer_num_key_value_heads,
        "vllm": vllm.__version__, "torch": torch.__version__, "dtype": args.dtype, "tolerance": args.tolerance,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None, **info,
        "prompts": [{"prompt": p, **row} for p, row in zip(prompt_ids, rows, strict=True)],
        "identical_prompts": sum(row["identical"] for row in rows),
        "passed": all(row["within_tolerance"] for row in rows),
    }
    path = write_json_atomic(args.out / f"gpu_vllm_{args.family}.json", result)
    print(f"[bench.gpu_vllm] {args.family}: {result['identical_prompts']}/{len(rows)} prompts token-identical, "
          f"max gap {max(row['max_gap'] for row in rows)}, passed {result['passed']} -> {path}", flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
