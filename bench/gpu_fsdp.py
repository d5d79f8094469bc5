"""GRASPrune gate training under FSDP: a LLaMA-2-7B-shaped model on one GPU, measured, and from that
measurement the memory per GPU and the time of the paper's 2,048 block passes at the 13B and 70B
shapes on 8 GPUs, computed.

    bash bench/gpu_fsdp.sh           # on a lent GPU machine: writes $OUT/gpu_fsdp.{json,md}
    bash bench/gpu_fsdp.sh --tiny    # the same code path on a tiny shape (CPU, gloo) when there is no GPU

Launched by ``torchrun --standalone --nproc-per-node 1`` (the wrapper does it): the model is wrapped
exactly as ``grasprune prune --fsdp`` wraps it (``placement.shard``: one FSDP2 unit per decoder layer),
random bf16 weights built from a ``LlamaConfig`` (no download). Measured: the gate step of
``bench.timing.gate_training_step`` (projection, STE factors, gated forward, backward to the scores,
AdamW) without and with FSDP, and the peak memory under FSDP.

Computed for a shape S on W GPUs with a global batch of W blocks (one block per GPU per step), the
paper's 512 blocks x 4 epochs = 2,048 block passes being 2,048 / W steps:

- memory per GPU = weights(S) / W (the shard) + 2 x layer(S) (the layer being computed, unsharded, and
  the next one prefetched) + activations + gate state. Activations are the measured peak minus the
  measured weights, unsharded buffers and gate state at 7B, scaled by layers x (hidden + FFN width) of S
  over 7B's (the tensors a decoder layer saves for the backward are that wide; the logits are
  shape-independent at one vocabulary and are scaled too, a slight overestimate).
- step time = the measured 7B block time x FLOPs(S) / FLOPs(7B) (a frozen backbone's forward+backward
  costs about 4 x matmul parameters x tokens at either size, so at the same efficiency the time scales
  with the matmul parameters), and the FSDP all-gathers: every GPU receives (W-1)/W of the weights twice
  per block (forward and backward) at ``--allgather-gbps``. FSDP prefetches the next layer while one
  computes: the step is between max(compute, communication) (full overlap) and their sum (none).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from grasprune.atomic import write_json_atomic
from grasprune.method.adapters import ModelAdapter
from grasprune.method.collectives import world
from grasprune.method.units import layout_of
from grasprune.scaleout.distributed import join_process_group, join_single_process_group
from grasprune.scaleout.placement import shard

from .common import setting
from .gpu import LLAMA2_7B, TINY, build_model
from .timing import gate_training_step, interleaved_times, peak_rss_bytes, sync_for

LLAMA2_13B = {"vocab_size": 32000, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
              "num_attention_heads": 40, "num_key_value_heads": 40, "max_position_embeddings": 4096}
LLAMA2_70B = {"vocab_size": 32000, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
              "num_attention_heads": 64, "num_key_value_heads": 8, "max_position_embeddings": 4096}
PAPER_BLOCK_PASSES = 2048  # 512 calibration blocks x 4 epochs
BF16 = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_fsdp", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a tiny Llama instead of the 7B shape")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--block-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--keep-ratio", type=float, default=0.5)
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the computed rows")
    p.add_argument("--allgather-gbps", type=float, default=300.0,
                   help="all-gather bandwidth each GPU receives at, GB/s (NVLink H100/H200 nodes: ~300-370)")
    p.add_argument("--out", type=Path, default=Path("."))
    return p.parse_args(argv)


def shape_numbers(shape: dict) -> dict:
    """Parameter counts of a Llama shape: all, matmul (what a token's forward multiplies), one layer."""
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    head = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head
    layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    embed = shape["vocab_size"] * h
    return {"params": 2 * embed + n * layer + h, "matmul_params": n * (layer - 2 * h) + embed,
            "layer_params": layer,
            "gate_units": n * (i + shape["num_key_value_heads"]), "width": n * (h + i)}


def gate_state_bytes(units: int, gpus: int) -> int:
    """Scores, their gradient and AdamW's two moments (fp32), plus the all-gathered per-block gradients."""
    return 4 * units * 4 + gpus * (units + 1) * 4


def project(base: dict, measured: dict, shape: dict, gpus: int, gbps: float) -> dict:
    """Memory per GPU and time of the paper's block passes for ``shape`` on ``gpus`` GPUs (see the module
    docstring for the model)."""
    s = shape_numbers(shape)
    weights = s["params"] * BF16
    activations = measured["activation_bytes"] * s["width"] / base["width"]
    unsharded = 2 * s["layer_params"] * BF16
    memory = weights / gpus + unsharded + activations + gate_state_bytes(s["gate_units"], gpus)
    compute = measured["fsdp_step_s"] * s["matmul_params"] / base["matmul_params"]
    communication = 2 * weights * (gpus - 1) / gpus / (gbps * 1e9)
    steps = PAPER_BLOCK_PASSES // gpus
    return {"params": s["params"], "gpus": gpus, "global_batch_blocks": gpus, "steps": steps,
            "memory_per_gpu_bytes": int(memory), "weights_shard_bytes": int(weights / gpus),
            "activation_bytes": int(activations), "step_compute_s": round(compute, 4),
            "step_allgather_s": round(communication, 4),
            "step_s_overlapped": round(max(compute, communication), 4),
            "step_s_serial": round(compute + communication, 4),
            "paper_block_passes_s": [round(steps * max(compute, communication), 1),
                                     round(steps * (compute + communication), 1)]}


def peak(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return peak_rss_bytes()["peak_rss_bytes"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    join_process_group()  # torchrun's group when launched by it,
    join_single_process_group()  # else a group of one: FSDP needs a device mesh
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"
    sync = sync_for(device)
    started = time.perf_counter()
    shape = TINY if args.tiny else LLAMA2_7B
    model = build_model(shape, device)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    budget = layout.budget(args.keep_ratio)
    ids = torch.randint(0, shape["vocab_size"], (args.block_len,), generator=torch.Generator().manual_seed(0))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    build_s = time.perf_counter() - started

    plain, gates = gate_training_step(model, adapter, layout, budget)
    plain_times = interleaved_times({"step": lambda: plain(ids)}, args.repeats, args.warmup, sync)["step"]
    gates.remove()
    shard(model, torch.device(device))
    fsdp, gates = gate_training_step(model, adapter, layout, budget)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    fsdp_times = interleaved_times({"step": lambda: fsdp(ids)}, args.repeats, args.warmup, sync)["step"]
    fsdp_peak = peak(device)
    gates.remove()

    base = shape_numbers(shape)
    unsharded = 2 * base["layer_params"] * BF16
    gate_state = gate_state_bytes(base["gate_units"], 1)
    measured = {"gpus": 1, "block_len": args.block_len, "weights_bytes": weights,
                "plain_step_s": round(statistics.median(plain_times), 5),
                "fsdp_step_s": round(statistics.median(fsdp_times), 5),
                "fsdp_peak_bytes": fsdp_peak,
                "activation_bytes": max(0, fsdp_peak - weights - unsharded - gate_state),
                "paper_block_passes_s": round(statistics.median(fsdp_times) * PAPER_BLOCK_PASSES, 1)}
    measured["fsdp_overhead"] = round(measured["fsdp_step_s"] / measured["plain_step_s"], 4)
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else None
    result = {
        "setting": setting(("tiny llama" if args.tiny else "llama-2-7b-shape") + " (random weights)", "bf16",
                           device, gpu=gpu, cuda=torch.version.cuda, world_size=world().size),
        "shape": shape,
        "build_s": round(build_s, 2),
        "measured": measured,
        "computed": {name: project(base, measured, s, args.gpus, args.allgather_gbps)
                     for name, s in (("llama-2-13b", LLAMA2_13B), ("llama-2-70b", LLAMA2_70B))},
        "assumptions": {"allgather_gbps": args.allgather_gbps, "global_batch": "one block per GPU per step",
                        "activations": "measured at the base shape, scaled by layers x (hidden + FFN width)",
                        "time": "base block time x matmul parameters ratio; all-gathers overlapped or not"},
        "total_s": round(time.perf_counter() - started, 2),
    }
    if world().is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / "gpu_fsdp.json", result)
        (args.out / "gpu_fsdp.md").write_text(table(result))
        print(f"[bench.gpu_fsdp] wrote {args.out / 'gpu_fsdp.json'}: FSDP step "
              f"{measured['fsdp_step_s']:.4f}s (x{measured['fsdp_overhead']:.3f} of unsharded), peak "
              f"{fsdp_peak / 2**30:.2f} GiB", flush=True)
    return 0


def table(result: dict) -> str:
    """The README's rows: shape, devices, peak memory per device, step time, how each was obtained."""
    gib = 2**30
    m, date = result["measured"], result["setting"]["date"]
    where = result["setting"].get("gpu") or result["setting"]["device"]
    name = "LLaMA-2-7B shape" if result["shape"] == LLAMA2_7B else "tiny Llama"
    header = ("| model shape | devices | peak memory per device | step time (one block per device) | "
              "2,048 block passes | how |")
    measured = (f"| {name} | 1 x {where}, FSDP | {m['fsdp_peak_bytes'] / gib:.2f} GiB | "
                f"{m['fsdp_step_s']:.3f} s (unsharded {m['plain_step_s']:.3f} s) | "
                f"{m['paper_block_passes_s'] / 60:.1f} min | measured {date} |")
    how = "computed from the row above" if result["shape"] == LLAMA2_7B else \
        "computed from a tiny CPU row: a code-path check, not an estimate"
    lines = [header, "| --- | --- | --- | --- | --- | --- |", measured]
    for label, row in result["computed"].items():
        low, high = row["paper_block_passes_s"]
        lines.append(f"| {label} | {row['gpus']} GPUs, FSDP | {row['memory_per_gpu_bytes'] / gib:.1f} GiB | "
                     f"{row['step_s_overlapped']:.3f}-{row['step_s_serial']:.3f} s | "
                     f"{low / 60:.1f}-{high / 60:.1f} min | {how} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
