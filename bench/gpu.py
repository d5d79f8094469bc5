"""GRASPrune at LLaMA-2-7B shape on a GPU: gate-training step time, its projection to the paper's
2,048 steps, peak memory, and pruned-vs-dense decode speed at keep ratio 0.5.

    bash bench/gpu.sh            # on a lent GPU machine: writes $OUT/gpu.json
    python -m bench.gpu --tiny   # the same code path on a tiny shape (CPU fallback when no GPU)

Random bf16 weights built from a ``LlamaConfig`` (no download). The gate step is ours
(``bench.timing.gate_training_step``: Gates, ste_factors, AdamW), interleaved with a plain
forward+backward; the pruned model is our export (``sliced_model``, in
memory) of a random budget-feasible mask.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from grasprune.atomic import write_json_atomic
from grasprune.method.adapters import ModelAdapter
from grasprune.method.export import sliced_model
from grasprune.method.gates import Gates
from grasprune.method.units import layout_of, project

from .common import setting
from .timing import (
    decode_speed,
    gate_training_step,
    interleaved_times,
    kv_bytes_per_token,
    overhead_summary,
    params_read_per_token,
    peak_rss_bytes,
    plain_step,
    sync_for,
)

LLAMA2_7B = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096}
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024}
PAPER_STEPS = 2048


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a tiny Llama instead of the 7B shape")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--block-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--keep-ratio", type=float, default=0.5)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("."))
    return p.parse_args(argv)


def build_model(shape: dict, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**shape, dtype="bfloat16"))
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def peak_memory(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return peak_rss_bytes()["peak_rss_bytes"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sync = sync_for(device)
    started = time.perf_counter()
    shape = TINY if args.tiny else LLAMA2_7B
    model = build_model(shape, device)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    budget = layout.budget(args.keep_ratio)
    ids = torch.randint(0, shape["vocab_size"], (args.block_len,), generator=torch.Generator().manual_seed(0))
    build_s = time.perf_counter() - started

    gate, gates = gate_training_step(model, adapter, layout, budget)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        gate(ids)
    sync()
    training_peak = peak_memory(device)
    plain = plain_step(model)
    times = interleaved_times({"gate_step": lambda: gate(ids), "plain_step": lambda: plain(ids)},
                              args.repeats, 0, sync)
    overhead = overhead_summary(times)
    gates.remove()

    mask = project(torch.rand(layout.num_units, generator=torch.Generator().manual_seed(0)), layout, budget)
    pruned = sliced_model(adapter, layout, mask)  # the checkpoint our export would write, in memory
    prompts = torch.randint(0, shape["vocab_size"], (args.prompts, args.prompt_len),
                            generator=torch.Generator().manual_seed(1))
    with Gates(adapter, layout) as check, torch.no_grad():
        check.set(mask.to(device))
        gated = model(input_ids=prompts[:1].to(device)).logits.float()
        sliced = pruned(input_ids=prompts[:1].to(device)).logits.float()
    rows = {}
    for name, m in (("dense", model), ("pruned", pruned)):
        rows[name] = {**decode_speed(m, prompts, args.new_tokens), "params": sum(p.numel() for p in m.parameters()),
                      "params_read_per_token": params_read_per_token(m), "kv_cache_bytes_per_token":
                      kv_bytes_per_token(m)}
    ideal = rows["dense"]["params_read_per_token"] / rows["pruned"]["params_read_per_token"]
    speedup = rows["pruned"]["decode_tokens_per_s"] / rows["dense"]["decode_tokens_per_s"]
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else None
    result = {
        "setting": setting("llama-2-7b-shape (random weights)" if not args.tiny else "tiny llama (random weights)",
                           "bf16", device, gpu=gpu, cuda=torch.version.cuda),
        "shape": shape,
        "build_s": round(build_s, 2),
        "gate_training": {**overhead, "block_len": args.block_len, "batch": 1,
                          "projected_paper_steps": PAPER_STEPS,
                          "projected_paper_s": round(statistics.median(times["gate_step"]) * PAPER_STEPS, 1),
                          "peak_memory_bytes": training_peak},
        "decode": {"keep_ratio": args.keep_ratio, "kept_params": layout.kept_params(mask),
                   "prunable_params": layout.prunable_params, **{k: v for k, v in rows.items()},
                   "decode_speedup": round(speedup, 4), "ideal_speedup": round(ideal, 4),
                   "share_of_ideal": round(speedup / ideal, 4),
                   "gated_vs_sliced_max_abs_logit_diff": round((gated - sliced).abs().max().item(), 5)},
        "peak_memory_bytes": peak_memory(device),
        "total_s": round(time.perf_counter() - started, 2),
    }
    write_json_atomic(args.out / "gpu.json", result)
    print(f"[bench.gpu] wrote {args.out / 'gpu.json'}: step {overhead['gate_step_median_s']:.4f}s, "
          f"ratio {overhead['ratio']:.3f}, decode speed-up {speedup:.3f} of ideal {ideal:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
