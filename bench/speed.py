"""What GRASPrune costs and what it buys: gate-training overhead, pruning time, pruned-vs-dense inference.

    python -m bench.speed [--checkpoints DIR ...] [--quality bench/results/quality.json]

(a) one gate-training step against one plain forward+backward of the same frozen model on the same
block, interleaved in one process; (b) each pruning stage's wall time, read from quality.json;
(c) dense and each pruned checkpoint, each in its own process: prefill and greedy-decode tokens/s,
peak RSS, KV-cache bytes per token (computed and measured), next to the ideal speed-up
(dense / pruned parameters read per token). Checkpoints default to the GRASPrune ones bench.quality
kept. Writes ``speed.json`` and ``speed.md``; sections skipped with ``--skip`` keep their old results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from grasprune.adapters import ModelAdapter
from grasprune.atomic import write_json_atomic, write_text_atomic
from grasprune.config import torch_dtype
from grasprune.data import calibration_blocks
from grasprune.evaluate import evaluation_tokens
from grasprune.models import load_model
from grasprune.units import layout_of

from .common import DENSE, RESULTS, csv, set_threads, setting
from .speed_report import markdown
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

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("overhead", "stages", "inference")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DENSE)
    p.add_argument("--checkpoints", nargs="*", type=Path, default=None, metavar="DIR")
    p.add_argument("--quality", type=Path, default=RESULTS / "quality.json")
    p.add_argument("--skip", type=csv(), default=[], help=f"sections to leave as they are: {', '.join(SECTIONS)}")
    p.add_argument("--calib-data", default="wikitext-2-tokenized/valid.txt#lines=0:50%")
    p.add_argument("--block-len", type=int, default=256)
    p.add_argument("--keep-ratio", type=float, default=0.5, help="budget of the gate-training step")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--train-dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--infer-dtype", choices=("bf16", "fp32"), default="fp32")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--measure-one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def gate_overhead(args: argparse.Namespace) -> dict:
    model, tokenizer = load_model(args.model)
    model.to(torch_dtype(args.train_dtype)).requires_grad_(False)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    block = calibration_blocks(args.calib_data, tokenizer, 1, args.block_len)[0]
    gate, gates = gate_training_step(model, adapter, layout, layout.budget(args.keep_ratio))
    plain = plain_step(model)
    try:
        times = interleaved_times({"gate_step": lambda: gate(block), "plain_step": lambda: plain(block)},
                                  args.repeats, args.warmup, sync_for("cpu"))
    finally:
        gates.remove()
    return {**overhead_summary(times), "block_len": args.block_len, "batch": 1, "keep_ratio": args.keep_ratio,
            "setting": setting(args.model, args.train_dtype)}


def pruning_stages(quality: Path) -> list[dict]:
    if not quality.is_file():
        return []
    entries = json.loads(quality.read_text())["entries"]
    return [{"label": e["label"], "keep_ratio": e["settings"]["keep_ratio"], "timing": e["timing"],
             "wall_s": e.get("wall_s"), "threads": e["setting"]["threads"], "train_dtype": e.get("train_dtype")}
            for e in entries if e["settings"]["method"] != "dense"]


def default_checkpoints(quality: Path) -> list[Path]:
    """The GRASPrune checkpoints bench.quality kept, that still exist."""
    if not quality.is_file():
        return []
    entries = json.loads(quality.read_text())["entries"]
    return [Path(e["checkpoint"]) for e in entries
            if e["settings"]["method"] == "grasprune" and e.get("checkpoint") and Path(e["checkpoint"]).is_dir()]


def measure_one(spec: str, args: argparse.Namespace) -> dict:
    """Inference figures of one model (run in its own process, so its peak RSS is its own)."""
    before = peak_rss_bytes()["rss_bytes"]
    model, tokenizer = load_model(spec, dtype=torch_dtype(args.infer_dtype))
    tokens = evaluation_tokens("wikitext2", tokenizer)
    prompts = tokens[: args.prompts * args.prompt_len].view(args.prompts, args.prompt_len)
    speed = decode_speed(model, prompts, args.new_tokens)
    memory = peak_rss_bytes()
    folder = Path(spec)
    report = json.loads((folder / "grasprune.json").read_text()) if (folder / "grasprune.json").is_file() else {}
    return {"model": spec, "keep_ratio": report.get("keep_ratio", 1.0), "method": report.get("method", "dense"),
            **speed, "params": sum(p.numel() for p in model.parameters()),
            "params_read_per_token": params_read_per_token(model),
            "kv_cache_bytes_per_token": kv_bytes_per_token(model),
            "peak_rss_bytes": memory["peak_rss_bytes"], "peak_rss_delta_bytes": memory["peak_rss_bytes"] - before,
            "setting": setting(spec, args.infer_dtype)}


def inference(args: argparse.Namespace) -> list[dict]:
    checkpoints = args.checkpoints if args.checkpoints is not None else default_checkpoints(args.quality)
    rows = []
    for spec in [args.model, *map(str, checkpoints)]:
        command = [sys.executable, "-m", "bench.speed", "--measure-one", spec, "--infer-dtype", args.infer_dtype,
                   "--prompts", str(args.prompts), "--prompt-len", str(args.prompt_len),
                   "--new-tokens", str(args.new_tokens), "--threads", str(torch.get_num_threads())]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"measuring {spec} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    dense = rows[0]
    for row in rows:
        row["ideal_speedup"] = round(dense["params_read_per_token"] / row["params_read_per_token"], 4)
        row["decode_speedup"] = round(row["decode_tokens_per_s"] / dense["decode_tokens_per_s"], 4)
        row["prefill_speedup"] = round(row["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"], 4)
        row["decode_share_of_ideal"] = round(row["decode_speedup"] / row["ideal_speedup"], 4)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.measure_one:
        print(json.dumps(measure_one(args.measure_one, args)))
        return 0
    path = args.out / "speed.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    measure = {"overhead": lambda: gate_overhead(args), "stages": lambda: pruning_stages(args.quality),
               "inference": lambda: inference(args)}
    for section in SECTIONS:
        if section not in args.skip:
            print(f"[bench.speed] {section}", flush=True)
            results[section] = measure[section]()
            write_json_atomic(path, results)
    write_text_atomic(args.out / "speed.md", markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
