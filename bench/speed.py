"""What GRASPrune costs and what it buys: gate-training overhead, pruning time, pruned-vs-dense inference.

    python -m bench.speed [--checkpoints DIR ...] [--quality bench/results/quality.json]

(a) one gate-training step against one plain forward+backward of the same frozen model on the same
block, interleaved in one process; (b) each pruning stage's wall time, read from quality.json;
(c) dense and each pruned checkpoint: peak RSS and KV-cache bytes per token, each model in its own
process; prefill and greedy-decode tokens/s of all models loaded in one process and measured
interleaved (the same prompts decoded by every model in turn, the order rotating), so that the ratios
come from one run; next to the ideal speed-up (dense / pruned parameters read per token). The main
setting is eager batch 1 (the model's own forward, DynamicCache) at ``--threads``; ``--batch-sizes`` adds
batches of prompts decoded together, ``--compile`` batch 1 with a StaticCache and a torch.compile'd decode
step, ``--decode-threads`` other thread counts, ``--omp-wait-policies`` other OpenMP wait policies (each in
its own process), for every model alike. The weight matmuls of one decode step alone are timed too, interleaved, to
split a step into what pruning shrinks and what it does not. Checkpoints default to the GRASPrune ones
bench.quality kept. Writes ``speed.json`` and ``speed.md``; sections skipped with ``--skip`` keep their
old results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from grasprune.atomic import write_json_atomic, write_text_atomic
from grasprune.config import torch_dtype
from grasprune.data import calibration_blocks
from grasprune.evaluation.perplexity import evaluation_tokens
from grasprune.method.adapters import ModelAdapter
from grasprune.method.models import load_model
from grasprune.method.units import layout_of
from grasprune.scaleout.allocator import keep_freed_memory

from .common import DENSE, RESULTS, csv, set_threads, setting
from .speed_report import markdown
from .timing import (
    GreedyDecoder,
    decode_rows,
    gate_training_step,
    interleaved_decode,
    interleaved_times,
    kv_bytes_per_token,
    overhead_summary,
    params_read_per_token,
    peak_rss_bytes,
    plain_step,
    sync_for,
    weight_matmuls,
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
    p.add_argument("--batch-sizes", type=csv(int), default=[1, 4],
                   help="prompts decoded together; batch 1 is always measured, a batch larger than --prompts is skipped")
    p.add_argument("--compile", action="store_true",
                   help="also measure batch 1 with a StaticCache and a torch.compile'd decode step")
    p.add_argument("--decode-rounds", type=int, default=3, help="interleaved passes over the prompts per setting")
    p.add_argument("--decode-threads", type=csv(int), default=None,
                   help="thread counts to repeat the decode settings with (after --threads, the main one)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--omp-wait-policies", type=csv(), default=["default"],
                   help="OpenMP wait policies to repeat the decode settings under, each in its own process: default "
                        "(OMP_WAIT_POLICY unset), passive, active; the first is the main one, the others measure "
                        "eager batch 1 only")
    p.add_argument("--measure-one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--measure-decode", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def gate_overhead(args: argparse.Namespace) -> dict:
    keep_freed_memory()  # as `grasprune prune` does (the decode measurements run in their own processes)
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


def _prompts(tokenizer, args: argparse.Namespace) -> torch.Tensor:
    tokens = evaluation_tokens("wikitext2", tokenizer)
    return tokens[: args.prompts * args.prompt_len].view(args.prompts, args.prompt_len)


def _report(spec: str) -> dict:
    folder = Path(spec)
    return json.loads((folder / "grasprune.json").read_text()) if (folder / "grasprune.json").is_file() else {}


def measure_one(spec: str, args: argparse.Namespace) -> dict:
    """Memory figures of one model (run in its own process, so its peak RSS is its own): loaded, then the
    first prompt prefilled and decoded once."""
    before = peak_rss_bytes()["rss_bytes"]
    model, tokenizer = load_model(spec, dtype=torch_dtype(args.infer_dtype))
    done = GreedyDecoder(model, 1, args.prompt_len, args.new_tokens)(_prompts(tokenizer, args)[:1])
    memory = peak_rss_bytes()
    report = _report(spec)
    return {"model": spec, "keep_ratio": report.get("keep_ratio", 1.0), "method": report.get("method", "dense"),
            "params": sum(p.numel() for p in model.parameters()),
            "params_read_per_token": params_read_per_token(model),
            "kv_cache_bytes_per_token": kv_bytes_per_token(model),
            "kv_cache_bytes_per_token_measured": done["kv_cache_bytes_per_token_measured"],
            "peak_rss_bytes": memory["peak_rss_bytes"], "peak_rss_delta_bytes": memory["peak_rss_bytes"] - before,
            "setting": setting(spec, args.infer_dtype)}


def memory_rows(specs: list[str], args: argparse.Namespace) -> list[dict]:
    rows = []
    for spec in specs:
        command = [sys.executable, "-m", "bench.speed", "--measure-one", spec, "--infer-dtype", args.infer_dtype,
                   "--prompts", "1", "--prompt-len", str(args.prompt_len),
                   "--new-tokens", str(args.new_tokens), "--threads", str(torch.get_num_threads())]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False,
                              env=policy_env(args.omp_wait_policies[0]))
        if done.returncode != 0:
            raise RuntimeError(f"measuring {spec} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def decode_settings(memory: list[dict], args: argparse.Namespace) -> list[dict]:
    """Every (threads, compile, batch) setting, the models interleaved within it. The first is the main one
    (``--threads``, eager, batch 1) and measures every model; the others measure the dense model and the
    checkpoints of the lowest keep-ratio. Each batch size decodes as many tokens per model as batch 1."""
    specs = [m["model"] for m in memory]
    loaded = {spec: load_model(spec, dtype=torch_dtype(args.infer_dtype)) for spec in specs}
    models = {spec: model for spec, (model, _) in loaded.items()}
    prompts = _prompts(loaded[specs[0]][1], args)
    lowest = min(m["keep_ratio"] for m in memory)
    few = [spec for spec, m in zip(specs, memory, strict=True) if spec == specs[0] or m["keep_ratio"] == lowest]
    batches = [1] + sorted({b for b in args.batch_sizes if b != 1 and b <= args.prompts})
    threads = list(dict.fromkeys([torch.get_num_threads(), *(args.decode_threads or [])]))
    settings = [(t, compiled, b) for t in threads for compiled in (False, True) if compiled <= args.compile
                for b in (batches if not compiled else [1])]
    dense_reads = memory[0]["params_read_per_token"]
    by_spec = dict(zip(specs, memory, strict=True))
    out, eager_tokens = [], {}
    for t, compiled, batch in settings:
        torch.set_num_threads(t)
        names = specs if not out else few
        policy = os.environ.get("OMP_WAIT_POLICY", "default")
        print(f"[bench.speed] decode ({policy} OMP wait): {t} threads, {'compile' if compiled else 'eager'}, "
              f"batch {batch}", file=sys.stderr, flush=True)
        if compiled:
            torch._dynamo.reset()  # kernels compiled for this thread count
        load = os.getloadavg()[0]
        runs = interleaved_decode({n: models[n] for n in names}, prompts, args.new_tokens, batch, compiled,
                                  args.decode_rounds * batch)
        rows = decode_rows(runs, batch, args.prompt_len, args.new_tokens, reference=specs[0])
        for spec in names:
            row, mem = rows[spec], by_spec[spec]
            row.update(model=spec, method=mem["method"], keep_ratio=mem["keep_ratio"],
                       ideal_speedup=round(dense_reads / mem["params_read_per_token"], 4))
            row["decode_share_of_ideal"] = round(row["decode_speedup"] / row["ideal_speedup"], 4)
            if (compiled, batch) == (False, 1):
                eager_tokens.setdefault(spec, row["first_tokens"])
            elif batch == 1:
                same = sum(a == b for a, b in zip(row["first_tokens"], eager_tokens[spec], strict=True))
                row["greedy_tokens_equal_to_eager"] = f"{same}/{len(row['first_tokens'])}"
        for spec in names:
            del rows[spec]["first_tokens"]
        out.append({"threads": t, "compile": compiled, "batch": batch, "runs_per_model": len(rows[specs[0]]["decode_s"]),
                    "prompts": args.prompts, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                    "cache": "StaticCache" if compiled else "DynamicCache",
                    "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
                    "setting": setting(specs[0], args.infer_dtype, compile=compiled, batch=batch),
                    "rows": [rows[spec] for spec in names]})
        if (compiled, batch) == (False, 1):
            out[-1]["step_split"] = step_split({n: models[n] for n in names}, out[-1]["rows"], args)
    torch.set_num_threads(threads[0])
    return out


def step_split(models: dict, eager_rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Per model: the eager batch-1 decode step against its weight matmuls alone (timed interleaved)."""
    matmuls = interleaved_times({spec: weight_matmuls(model) for spec, model in models.items()},
                                args.repeats, args.warmup, sync_for("cpu"))
    dense_s = statistics.median(next(iter(matmuls.values())))
    split = []
    for row in eager_rows:
        step_s, matmul_s = 1 / row["decode_tokens_per_s"], statistics.median(matmuls[row["model"]])
        split.append({"model": row["model"], "keep_ratio": row["keep_ratio"], "eager_step_ms": round(1e3 * step_s, 3),
                      "weight_matmuls_ms": round(1e3 * matmul_s, 3), "rest_ms": round(1e3 * (step_s - matmul_s), 3),
                      "weight_matmuls_speedup": round(dense_s / matmul_s, 4), "ideal_speedup": row["ideal_speedup"]})
    return split


def policy_env(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return env if policy == "default" else {**env, "OMP_WAIT_POLICY": policy.upper()}


def inference(args: argparse.Namespace) -> dict:
    checkpoints = args.checkpoints if args.checkpoints is not None else default_checkpoints(args.quality)
    specs = [args.model, *map(str, checkpoints)]
    memory = memory_rows(specs, args)
    settings = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "memory.json"
        path.write_text(json.dumps(memory))
        for i, policy in enumerate(args.omp_wait_policies):
            # the other policies: eager batch 1 only
            argv = args.argv if i == 0 else [a for a in args.argv if a != "--compile"] + ["--batch-sizes", "1"]
            command = [sys.executable, "-m", "bench.speed", *argv, "--measure-decode", str(path),
                       "--threads", str(torch.get_num_threads())]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO, check=False,
                                  env=policy_env(policy))
            if done.returncode != 0:
                raise RuntimeError(f"measuring decode speed (OMP wait policy {policy}) failed")
            blocks = json.loads(done.stdout.strip().splitlines()[-1])
            for block in blocks:
                block["omp_wait_policy"] = policy
                block["setting"]["omp_wait_policy"] = policy
            settings += blocks
    rows = []
    for mem, eager in zip(memory, settings[0]["rows"], strict=True):
        rows.append({**mem, **{k: eager[k] for k in ("decode_tokens_per_s", "prefill_tokens_per_s", "decode_speedup",
                                                     "prefill_speedup", "ideal_speedup", "decode_share_of_ideal")},
                     "setting": {**mem["setting"], "omp_wait_policy": args.omp_wait_policies[0]},
                     "prompts": args.prompts, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                     "batch": 1, "compile": False, "interleaved_runs": settings[0]["runs_per_model"]})
    return {"inference": rows, "decode_settings": settings}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    set_threads(args.threads)
    if args.measure_one:
        print(json.dumps(measure_one(args.measure_one, args)))
        return 0
    if args.measure_decode:
        print(json.dumps(decode_settings(json.loads(args.measure_decode.read_text()), args)))
        return 0
    path = args.out / "speed.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    measure = {"overhead": lambda: {"overhead": gate_overhead(args)},
               "stages": lambda: {"stages": pruning_stages(args.quality)}, "inference": lambda: inference(args)}
    for section in SECTIONS:
        if section not in args.skip:
            print(f"[bench.speed] {section}", flush=True)
            results.update(measure[section]())
            write_json_atomic(path, results)
    write_text_atomic(args.out / "speed.md", markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
