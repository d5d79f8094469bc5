"""speed.md: the overhead, the pruning stages and the inference table, each with its setting."""

from __future__ import annotations

from .common import describe
from .quality_report import STAGES

OVERHEAD_LIMIT = 1.10
DECODE_TARGET = 0.90
STAGE_ORDER = tuple(key for key, _ in STAGES)


def _setting(conditions: dict) -> str:
    keep = ("model", "dtype", "device", "threads", "omp_wait_policy", "cpu", "torch", "date")
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
            f"Ratio **{overhead['ratio']:.3f}×** ({ok} the {OVERHEAD_LIMIT:.2f}× limit)"
            + (f"; median of the per-round ratios {overhead['paired_ratio']:.3f}×." if "paired_ratio" in overhead
               else "."), "",
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
            (f"Setting: {_setting(first['setting'])}; eager (the model's own forward, DynamicCache), batch 1; "
            f"{first['prompts']} prompts of {first['prompt_len']} WikiText-2 test tokens, {first['new_tokens']} "
            f"greedy tokens each; all models loaded in one process and measured interleaved "
            f"({first.get('interleaved_runs', first['prompts'])} runs per model, the order rotating). Tokens/s: "
            "median over the runs; speed-up: median of the ratios of runs of the same prompt measured side by side. "
            "Ideal speed-up: dense / pruned parameters read per token (embedding lookup not counted, lm_head "
            "counted). Peak RSS and KV bytes: each model in its own process."), "",
            ("| model | keep | params | prefill tok/s | decode tok/s | decode speed-up | ideal | share of ideal "
            "| peak RSS MiB (delta) | KV bytes/token (measured) |"),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {_name(r)} | {r['keep_ratio']:.2f} | {r['params'] / 1e6:.1f} M | {r['prefill_tokens_per_s']:.0f} | "
                f"{r['decode_tokens_per_s']:.1f} | {r['decode_speedup']:.3f}× | {r['ideal_speedup']:.3f}× | "
                f"{_share(r)} | {r['peak_rss_bytes'] / 2**20:.0f} "
                f"({r['peak_rss_delta_bytes'] / 2**20:.0f}) | {r['kv_cache_bytes_per_token']} "
                f"({r['kv_cache_bytes_per_token_measured']:.0f}) |"
            )
        lines.append("")
    settings = results.get("decode_settings") or []
    splits = [b for b in settings if b.get("step_split")]
    if splits:
        lines += [
            "### Where a decode step's time goes (eager, batch 1)", "",
            ("Weight matmuls: every `nn.Linear` of one decode step (lm_head included) on a one-token input, "
            "nothing else, timed interleaved in the same process (median). The rest (norms, rotary, attention, "
            "KV-cache update, sampling, Python and dispatch) is the same sequence of operators for both models."), "",
            "| threads | OMP wait | model | keep | eager step ms | weight matmuls ms | rest ms | matmul speed-up | ideal |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for block, r in ((b, r) for b in splits for r in b["step_split"]):
            lines.append(f"| {block.get('threads', '')} | {block.get('omp_wait_policy', 'default')} | "
                         f"{r['model']} | {r['keep_ratio']:.2f} | {r['eager_step_ms']:.1f} | "
                         f"{r['weight_matmuls_ms']:.1f} | {r['rest_ms']:.1f} | {r['weight_matmuls_speedup']:.3f}× | "
                         f"{r['ideal_speedup']:.3f}× |")
        lines.append("")
    if len(settings) > 1:
        lines += [
            "## Decode speed-up per setting", "",
            (f"Setting: {_setting(settings[0]['setting'])} (threads per row); the same prompts as above. Each "
            "setting (threads, eager or compiled, batch) is one interleaved measurement of its models, "
            f"{settings[-1]['runs_per_model']} runs per model; compiled = StaticCache and the decode step through "
            "`torch.compile(fullgraph=True, dynamic=False)` (prefill eager), for dense and pruned alike; batch B = "
            "B prompts decoded together (tokens/s count all B rows); warm-up = the first, untimed run (compilation "
            "included). OMP wait: `OMP_WAIT_POLICY` of the measuring process (default: unset). Load: the machine's "
            "1-minute load average before and after the setting (2 cores, shared)."),
            "",
            ("| threads | OMP wait | setting | load | model | keep | decode tok/s | decode speed-up | ideal "
             "| share of ideal | warm-up s |"),
            "|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for block in settings:
            label = f"{'compiled' if block['compile'] else 'eager'}, batch {block['batch']}"
            load = "→".join(f"{x:.1f}" for x in block.get("load_average_1min", []))
            for r in block["rows"]:
                lines.append(
                    f"| {block.get('threads', '')} | {block.get('omp_wait_policy', 'default')} | {label} | {load} | "
                    f"{_name(r)} | {r['keep_ratio']:.2f} | {r['decode_tokens_per_s']:.1f} | "
                    f"{r['decode_speedup']:.3f}× | {r['ideal_speedup']:.3f}× | {_share(r)} | {r['warmup_s']:.1f} |")
        lines.append("")
    verdict = decode_verdict(results)
    if verdict:
        lines += [verdict, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _name(row: dict) -> str:
    return "dense" if row["method"] == "dense" else row["method"]


def _share(row: dict) -> str:
    if row["method"] == "dense":
        return "100%"
    below = "" if row["decode_share_of_ideal"] >= DECODE_TARGET else " (below 90%)"
    return f"{100 * row['decode_share_of_ideal']:.0f}%{below}"


def decode_verdict(results: dict) -> str:
    """One sentence per keep-0.5 model: in which measured settings its decode reaches 90% of ideal."""
    out = []
    settings = results.get("decode_settings") or []
    for row in results.get("inference") or []:
        if row["method"] == "dense" or abs(row["keep_ratio"] - 0.5) > 1e-9:
            continue
        met, missed = [], []
        for block in settings:
            threads = block.get("threads", "?")
            label = (f"{threads} thread{'' if threads == 1 else 's'} "
                     f"({block.get('omp_wait_policy', 'default')} OMP wait) "
                     f"{'compiled' if block['compile'] else 'eager'} batch {block['batch']}")
            mine = next(r for r in block["rows"] if r["model"] == row["model"])
            (met if mine["decode_share_of_ideal"] >= DECODE_TARGET else missed).append(
                f"{label} {100 * mine['decode_share_of_ideal']:.0f}%")
        out.append(f"**Keep 0.5 ({row['model']}), 90% of the ideal decode speed-up:** "
                   f"met in {', '.join(met) or 'no setting'}; not met in {', '.join(missed) or 'no setting'}.")
    return "\n\n".join(out)
