"""speed.md: the overhead, the pruning stages and the inference table, each with its setting."""

from __future__ import annotations

from .common import describe
from .quality_report import STAGES

OVERHEAD_LIMIT = 1.10
DECODE_TARGET = 0.90
STAGE_ORDER = tuple(key for key, _ in STAGES)


def _setting(conditions: dict) -> str:
    keep = ("model", "dtype", "device", "threads", "cpu", "torch", "date")
    return describe({k: conditions.get(k) for k in keep})


def markdown(results: dict) -> str:
    lines = ["# Speed", ""]
    overhead = results.get("overhead")
    if overhead:
        ok = "within" if overhead["ratio"] <= OVERHEAD_LIMIT else "**over**"
        lines += [
            "## Gate-training overhead", "",
            (f"Setting: {_setting(overhead['setting'])}, block {overhead['block_len']}, batch 1, "
            f"{overhead['repeats']} interleaved repeats."), "",
            "| step | median s |", "|---|---:|",
            (f"| GRASPrune gate step (projection, STE, gated forward, backward, AdamW) | "
            f"{overhead['gate_step_median_s']:.4f} |"),
            f"| plain forward+backward (gradient to the input embeddings) | {overhead['plain_step_median_s']:.4f} |",
            "",
            f"Ratio **{overhead['ratio']:.3f}×** ({ok} the {OVERHEAD_LIMIT:.2f}× limit).", "",
        ]
    stages = results.get("stages")
    if stages:
        seen = {k for s in stages for k in s["timing"]}
        keys = [k for k in STAGE_ORDER if k in seen] + sorted(seen - set(STAGE_ORDER))
        lines += ["## Pruning wall time per stage (bench.quality protocol)", "",
                  f"Threads {stages[0]['threads']}, training dtype {stages[0]['train_dtype']}.", "",
                  "| method | keep | " + " | ".join(k.removesuffix("_s") + " s" for k in keys) + " | total s |",
                  "|---|---:|" + "---:|" * (len(keys) + 1)]
        for s in sorted(stages, key=lambda s: (-s["keep_ratio"], s["label"])):
            cells = [f"{s['timing'][k]:.1f}" if k in s["timing"] else "" for k in keys]
            lines.append(f"| {s['label']} | {s['keep_ratio']:.2f} | " + " | ".join(cells) + f" | {s['wall_s']:.0f} |")
        lines.append("")
    rows = results.get("inference")
    if rows:
        first = rows[0]
        lines += [
            "## Pruned vs dense inference", "",
            (f"Setting: {_setting(first['setting'])}; {first['prompts']} prompts of {first['prompt_len']} "
            f"WikiText-2 test tokens, {first['new_tokens']} greedy tokens each (KV cache), batch 1. "
            "Ideal speed-up: dense / pruned parameters read per token (embedding lookup not counted, "
            "lm_head counted)."), "",
            ("| model | keep | params | prefill tok/s | decode tok/s | decode speed-up | ideal | share of ideal "
            "| peak RSS MiB (delta) | KV bytes/token (measured) |"),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            name = "dense" if r["method"] == "dense" else r["method"]
            target = "" if r["method"] == "dense" or r["decode_share_of_ideal"] >= DECODE_TARGET else " (below 90%)"
            lines.append(
                f"| {name} | {r['keep_ratio']:.2f} | {r['params'] / 1e6:.1f} M | {r['prefill_tokens_per_s']:.0f} | "
                f"{r['decode_tokens_per_s']:.1f} | {r['decode_speedup']:.3f}× | {r['ideal_speedup']:.3f}× | "
                f"{100 * r['decode_share_of_ideal']:.0f}%{target} | {r['peak_rss_bytes'] / 2**20:.0f} "
                f"({r['peak_rss_delta_bytes'] / 2**20:.0f}) | {r['kv_cache_bytes_per_token']} "
                f"({r['kv_cache_bytes_per_token_measured']:.0f}) |"
            )
    return "\n".join(lines) + "\n"
