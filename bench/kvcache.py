"""KV-cache bytes and decode speed at long context, dense against pruned (issue 20's KV study).

    python -m bench.kvcache [--checkpoints DIR ...] [--contexts 512,2048,8192] [--steps 16] [--rounds 3]

For each context length N every model prefills the same first N tokens of WikiText-2 test once (timed,
one run), then decodes ``--steps`` greedy tokens from that cache ``--rounds`` times, the cache cropped
back to N after each, the models in a rotating order within every round so that a change in the
machine's load hits all alike. Reported per model and context: the KV cache's bytes after the prefill
(measured on the cache's tensors, and the expected per-layer KV heads × head_dim × 2 × element size × N),
the prefill time, and the decode speed (median over rounds) and its ratio to the dense model's (the
median of the per-round ratios). fp32, eager, DynamicCache, batch 1. A context that with the decoded
tokens would pass the model's ``max_position_embeddings`` is shortened to fit, and says so.

Default checkpoints: the keep-0.5 GRASPrune checkpoints that ``python -m bench.study keep`` kept (one
per seed), so the pruned row is a mean over seeds like every other GRASPrune point.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

import torch

from grasprune.atomic import write_json_atomic, write_text_atomic
from grasprune.evaluation.perplexity import evaluation_tokens
from grasprune.method.models import load_model

from .common import DENSE, RESULTS, csv, describe, set_threads, setting
from .speed import _report
from .study_tables import markdown
from .timing import kv_bytes_per_token

OUT = RESULTS / "study-kvcache"
STUDY_CHECKPOINTS = Path("runs/bench-study-keep/checkpoints")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.kvcache", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DENSE, help="the dense model")
    p.add_argument("--checkpoints", nargs="*", type=Path, default=None,
                   help=f"pruned checkpoints (default: {STUDY_CHECKPOINTS}/grasprune-keep0.5-*)")
    p.add_argument("--contexts", type=csv(int), default=[512, 2048, 8192])
    p.add_argument("--steps", type=int, default=16, help="greedy tokens decoded per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.checkpoints is None:
        args.checkpoints = sorted(STUDY_CHECKPOINTS.glob("grasprune-keep0.5-*"))
    missing = [str(c) for c in args.checkpoints if not (c / "grasprune.json").is_file()]
    if missing:
        p.error(f"not a pruned checkpoint: {', '.join(missing)} (pass folders written by grasprune prune)")
    if not args.checkpoints:
        p.error("no pruned checkpoint: run `python -m bench.study keep` first or pass --checkpoints DIR ...")
    return args


def cache_bytes(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)


@torch.inference_mode()
def prefill(model, ids: torch.Tensor) -> tuple:
    """The cache and the first greedy token after the prompt, and the prefill's seconds."""
    started = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    return out.past_key_values, out.logits[:, -1:].argmax(-1), time.perf_counter() - started


@torch.inference_mode()
def decode(model, cache, token: torch.Tensor, steps: int) -> float:
    """Seconds of ``steps`` greedy decode steps from ``cache``, which is cropped back afterwards."""
    length = cache.get_seq_length()
    started = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    seconds = time.perf_counter() - started
    cache.crop(length - cache.get_seq_length())  # negative: that many tokens off the end
    return seconds


def measure_context(models: dict, ids: torch.Tensor, args: argparse.Namespace) -> dict[str, dict]:
    """Every model at one context: prefill once, then ``rounds`` interleaved decodes."""
    state, rows = {}, {}
    for name, model in models.items():
        cache, token, seconds = prefill(model, ids)
        state[name] = (cache, token)
        rows[name] = {"context": ids.shape[1], "prefill_s": round(seconds, 3), "kv_bytes": cache_bytes(cache),
                      "kv_bytes_expected": kv_bytes_per_token(model) * ids.shape[1], "decode_s": []}
    names = list(models)
    for turn in range(args.rounds):
        for name in names[turn % len(names):] + names[: turn % len(names)]:
            cache, token = state[name]
            rows[name]["decode_s"].append(round(decode(models[name], cache, token, args.steps), 4))
    del state
    gc.collect()
    return rows


def speeds(rows: dict[str, dict], steps: int, dense: str) -> None:
    """Median tokens/s per model and the median over rounds of its speed over the dense model's."""
    for row in rows.values():
        row["decode_tokens_per_s"] = round(steps / statistics.median(row["decode_s"]), 2)
        row["decode_speedup"] = round(statistics.median(
            d / s for d, s in zip(rows[dense]["decode_s"], row["decode_s"], strict=True)), 3)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    dense_model, tokenizer = load_model(args.model)
    models = {"dense": dense_model}
    labels = {"dense": {"model": args.model, "keep_ratio": 1.0, "seed": None, "method": "dense"}}
    for folder in args.checkpoints:
        report = _report(str(folder))
        name = folder.name
        models[name] = load_model(str(folder))[0].eval()
        config = report.get("config", {})
        labels[name] = {"model": str(folder), "keep_ratio": report.get("keep_ratio"), "method": report.get("method"),
                        "variant": config.get("variant"), "seed": config.get("seed")}
    limit = dense_model.config.max_position_embeddings - args.steps - 1
    tokens = evaluation_tokens("wikitext2", tokenizer)
    rows = []
    for context in args.contexts:
        length = min(context, limit, tokens.numel())
        print(f"[bench.kvcache] context {length}", flush=True)
        measured = measure_context(models, tokens[:length][None], args)
        speeds(measured, args.steps, "dense")
        rows += [{**labels[name], "name": name, "requested_context": context, **row} for name, row in measured.items()]
    results = {"setting": setting(args.model, "float32", steps=args.steps, rounds=args.rounds, cache="DynamicCache",
                                  batch=1), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "kvcache.json", results)
    write_reports(results, args.out)
    print(f"[bench.kvcache] wrote {args.out / 'kvcache.json'}", flush=True)
    return 0


def group(row: dict) -> str:
    if row["method"] == "dense":
        return "dense"
    return f"{row['method']} ({row['variant']}) keep {row['keep_ratio']:g}" if row.get("variant") else row["name"]


def summarise(results: dict) -> dict:
    """The study's points: per (dense or pruned group, context) the mean and spread over seeds."""
    from .study_report import COMMANDS, TITLES, spread

    groups: dict[tuple, list[dict]] = {}
    for row in results["rows"]:
        groups.setdefault((group(row), row["context"]), []).append(row)
    points = [{"group": name, "x": context, "seeds": sorted(r["seed"] for r in rows if r["seed"] is not None),
               "metrics": {"kv_cache_mib": spread([r["kv_bytes"] / 2**20 for r in rows]),
                           "decode_tokens_per_s": spread([r["decode_tokens_per_s"] for r in rows]),
                           "decode_speedup": spread([r["decode_speedup"] for r in rows]),
                           "prefill_s": spread([r["prefill_s"] for r in rows])}}
              for (name, context), rows in sorted(groups.items())]
    return {"study": "kvcache", "title": TITLES["kvcache"], "command": COMMANDS["kvcache"], "points": points,
            "dense": None, "setting": describe(results["setting"])}


def plot(summary: dict, path: Path) -> Path | None:
    from .quality_report import save_figure
    from .study_report import _errorbar, _pyplot

    plt = _pyplot()
    if plt is None or not summary["points"]:
        return None
    panels = (("kv_cache_mib", "KV cache after prefill (MiB)"), ("decode_tokens_per_s", "decode tokens/s"))
    fig, axes = plt.subplots(1, len(panels), figsize=(12.4, 4.6), squeeze=False)
    for ax, (metric, title) in zip(axes[0], panels, strict=True):
        for name in dict.fromkeys(p["group"] for p in summary["points"]):
            style = {"linewidth": 2.5, "color": "black"} if name != "dense" else {"color": "grey", "linestyle": "--"}
            _errorbar(ax, [p for p in summary["points"] if p["group"] == name], lambda p: p["x"], metric,
                      label=name, **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens, log 2)")
        ax.set_ylabel(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{summary['title']}\n{summary['setting']}", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return save_figure(fig, plt, path)


def write_reports(results: dict, folder: Path) -> dict:
    summary = summarise(results)
    write_json_atomic(folder / "summary.json", summary)
    write_text_atomic(folder / "study.md", markdown(summary))
    plot(summary, folder / "kvcache.png")
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
