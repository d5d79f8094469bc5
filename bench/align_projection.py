"""Time of one budget projection (``units.project``) per alignment, on a model's real unit layout.

The projection runs at every gate-training step, so ``--align`` must not make it slow. Each round
times ``--calls / --rounds`` calls of every alignment in turn (interleaved, so drift between rounds hits
all of them alike); the result is the median per-call time over the rounds, and its ratio to align 1.

    python -m bench.align_projection --model smollm2-135m --calls 1000 --aligns 1,64 --out FILE
    python -m bench.align_projection --shape 32,11008,32,4096,128   # LLaMA-2-7B: layers,ffn,kv,hidden,head_dim
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from grasprune.atomic import write_json_atomic
from grasprune.method.adapters import LayerShape, ModelAdapter
from grasprune.method.units import UnitLayout, layout_of, project


def shaped_layout(layers: int, ffn: int, kv: int, hidden: int, head_dim: int) -> UnitLayout:
    """A Llama-style layout (no biases, one query head per KV head) of the given shape, without a model."""
    return UnitLayout(shapes=[LayerShape(ffn, kv, kv)] * layers, ffn_costs=[3 * hidden] * layers,
                      kv_costs=[4 * head_dim * hidden] * layers, group_size=1)


def model_layout(spec: str) -> UnitLayout:
    from grasprune.method.budget import meta_model

    return layout_of(ModelAdapter(meta_model(spec)))


def time_projections(layout: UnitLayout, aligns: list[int], keep: float, calls: int, rounds: int,
                     device: str) -> dict[int, float]:
    """Median seconds per ``project`` call for each alignment."""
    probs = torch.sigmoid(torch.randn(layout.num_units, generator=torch.Generator().manual_seed(0)) / 1.5)
    probs = probs.to(device)
    budget = layout.budget(keep)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for align in aligns:  # warm-up: builds and caches each alignment's chunk layout on the device
        project(probs, layout, budget, align)
    per_round = max(1, calls // rounds)
    samples: dict[int, list[float]] = {align: [] for align in aligns}
    for _ in range(rounds):
        for align in aligns:
            sync()
            started = time.perf_counter()
            for _ in range(per_round):
                project(probs, layout, budget, align)
            sync()
            samples[align].append((time.perf_counter() - started) / per_round)
    return {align: statistics.median(times) for align, times in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.align_projection", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--model", default="smollm2-135m", help="a model spec (its config only is read)")
    where.add_argument("--shape", help="layers,ffn,kv_groups,hidden,head_dim of a Llama-style layout instead")
    parser.add_argument("--aligns", default="1,32,64,256")
    parser.add_argument("--keep-ratio", type=float, default=0.7)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", help="JSON file to write (default: print only)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layout = shaped_layout(*map(int, args.shape.split(","))) if args.shape else model_layout(args.model)
    aligns = [int(a) for a in args.aligns.split(",")]
    seconds = time_projections(layout, aligns, args.keep_ratio, args.calls, args.rounds, args.device)
    result = {
        "setting": {"layout": args.shape or args.model, "units": layout.num_units, "layers": layout.num_layers,
                    "keep_ratio": args.keep_ratio, "calls": args.calls, "rounds": args.rounds,
                    "device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},  # other processes on the machine
        "per_call_us": {str(a): round(s * 1e6, 1) for a, s in seconds.items()},
        "ratio_to_align_1": {str(a): round(s / seconds[1], 3) for a, s in seconds.items()} if 1 in seconds else {},
    }
    if args.out:
        write_json_atomic(Path(args.out), result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
