"""docs/results.md from the result files under bench/results: one section per benchmark, one table per
machine, each table with the file it came from and the command that produces it.

    python -m bench.report           # write docs/results.md and the README's table (atomically)
    python -m bench.report --check   # exit 1 if either is not what this would write now

Standard library only (no torch): the page is rebuilt from the JSON files alone, so a result that is
not in a file cannot appear in it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the studies' tables as part of bench
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import headline, study_tables

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
NOT_RECORDED = "machine not recorded"
GIB = 2**30
MIB = 2**20
ALIGN_PRUNE_COMMAND = ("grasprune prune --model {model} --keep-ratio {keep} --align N --device {device} "
                       "--eval-windows {windows} --eval-seqlen {seqlen}")

# Commands of the one-off runs (their NOTE.md says the same); the first matching pattern wins, and a file
# matching none gets its benchmark's command from bench/README.md's table.
COMMANDS = {
    "heal-2026-12-07-taylor-0.7/heal.json": (
        "grasprune prune --model smollm2-135m --keep-ratio 0.7 --method taylor --eval none --no-eval-dense --out DIR "
        "&& python -m bench.heal --checkpoints DIR --marks 5,15,30 --out bench/results/heal-2026-12-07-taylor-0.7"),
    "heal-2026-12-07-taylor-0.5/heal.json": (
        "grasprune prune --model smollm2-135m --keep-ratio 0.5 --method taylor --eval none --no-eval-dense --out DIR "
        "&& python -m bench.heal --checkpoints DIR --marks 5,15,30 --out bench/results/heal-2026-12-07-taylor-0.5"),
    "heal-2026-12-07-guided-0.5/heal.json": (
        "grasprune prune --model smollm2-135m --keep-ratio 0.5 --eval none --no-eval-dense --out DIR && "
        "python -m bench.heal --checkpoints DIR --marks 5,15,30 --out bench/results/heal-2026-12-07-guided-0.5"),
    "heal-2026-12-07/heal.json": (
        "grasprune prune --model smollm2-135m --keep-ratio 0.7 --eval none --no-eval-dense --out DIR && "
        "python -m bench.heal --checkpoints DIR --marks 5,15,30"),
    "heal-*/heal.json": (
        "grasprune prune --model smollm2-135m --keep-ratio 0.5 --eval none --no-eval-dense --out DIR && "
        "python -m bench.heal --checkpoints DIR --marks 5,15"),
    "heal-*/heal-taylor.json": (
        "grasprune prune --model smollm2-135m --keep-ratio 0.5 --method taylor --eval none --no-eval-dense --out DIR "
        "&& python -m bench.heal --checkpoints DIR --marks 5 (files renamed heal-taylor.*)"),
    "allocator-*/quality.json": (
        "python -m bench.quality --methods grasprune --variants default,paper --keep-ratios 0.7,0.5,0.8 "
        "--datasets wikitext2,ptb --threads 2 --keep-checkpoints none --out DIR"),
    "timing-*/quality.json": (
        "python -m bench.quality --methods grasprune --variants default,paper --keep-ratios 0.7,0.5,0.8 "
        "--datasets wikitext2 --threads 2 --keep-checkpoints none --out DIR"),
    "paper-size/quality.json": (
        "python -m bench.quality --methods grasprune --keep-ratios 0.5 --variants V --threads 1 "
        "--calib-data wikitext-2-tokenized/valid.txt --calib-samples 512 --block-len 512 --epochs 4 "
        "--rescale-samples 64 --runs-dir runs/bench-paper-size --out bench/results/paper-size "
        "(V = paper, then default)"),
    "decode-*/eager-2-and-1-threads.json": (
        "python -m bench.speed --skip overhead,stages --threads 2 --decode-threads 1 --batch-sizes 1 "
        "--decode-rounds 2 --checkpoints DIR08 DIR07 DIR05"),
    "decode-*/compiled-1-thread.json": (
        "python -m bench.speed --skip overhead,stages --threads 1 --compile --batch-sizes 1 --decode-rounds 2 "
        "--checkpoints DIR05"),
    "llamacpp-*/llamacpp-1-thread.json": "python -m bench.llamacpp --threads 1",
    "llamacpp-*/llamacpp-1-thread-align64.json": "python -m bench.llamacpp --threads 1 --align 64 --keep 0.7,0.5",
}


# --- reading and formatting ------------------------------------------------------------------------

def load(path: Path) -> dict:
    return json.loads(path.read_text())


def rel(path: Path, results: Path) -> str:
    """The file as the repository names it: bench/results/<path inside the results folder>."""
    return "bench/results/" + path.relative_to(results).as_posix()


def command_for(path: Path, results: Path, default: str) -> str:
    inside = path.relative_to(results).as_posix()
    return next((cmd for pattern, cmd in COMMANDS.items() if fnmatch.fnmatch(inside, pattern)), default)


def num(value, digits: int = 2, suffix: str = "") -> str:
    """A number with thousands separators, or an en dash where the file has none."""
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def pct(share: float | None, digits: int = 0) -> str:
    return "–" if share is None else f"{100 * share:.{digits}f}%"


def times(value: float | None) -> str:
    return num(value, 3, "×")


def name_of(model: str) -> str:
    """A checkpoint path's last component (the folder name says keep ratio and variant)."""
    return model.rstrip("/").rsplit("/", 1)[-1]


def machine(setting: dict | None) -> str:
    """The machine a setting records: its GPU if any, else its CPU (with the core count)."""
    setting = setting or {}
    cpu = setting.get("cpu")
    if not cpu:
        return NOT_RECORDED
    host = f"{cpu}, {setting['cpus']} cores" if setting.get("cpus") else cpu
    return f"{setting['gpu']} (host {host})" if setting.get("gpu") else host


def group(items: Iterable, key: Callable) -> dict[str, list]:
    """Items by key, in the order the keys first appear."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def head(title: str, text: str) -> list[str]:
    """A section heading and its paragraph (written wrapped in the source, one line in the page)."""
    return [f"## {title}", "", " ".join(text.split()), ""]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def caption(where: str, path: Path, results: Path, command: str, extra: str = "") -> list[str]:
    name = rel(path, results)
    text = f"**{where}** · [`{name}`](../{name}) · `{command}`"
    return [text + (f" · {extra}" if extra else ""), ""]


def block(where: str, path: Path, results: Path, command: str, header: list[str], rows: list[list[str]],
          extra: str = "") -> list[str]:
    return caption(where, path, results, command, extra) + table(header, rows)


def files(results: Path, *patterns: str) -> list[Path]:
    """The matching files, those directly in the results folder first."""
    found = {p for pattern in patterns for p in results.glob(pattern)}
    return sorted(found, key=lambda p: (p.parent != results, p.relative_to(results).as_posix()))


# --- perplexity (bench.quality) --------------------------------------------------------------------

QUALITY_HEADER = ["method", "keep", "threads", "removed of prunable", "removed of all", "params",
                  "WikiText-2 ppl", "PTB ppl", "ranking s", "gate training s", "scale calibration s", "date"]


def earlier_paper(settings: dict) -> bool:
    """A ``paper`` entry that records no tie-break ran with the spread tie-break and the minimum inside."""
    return settings.get("variant") == "paper" and "tie_break" not in settings


def quality_label(entry: dict) -> str:
    marks = [" (spread, inside)" if earlier_paper(entry["settings"]) else "",
             " (resumed)" if entry.get("resumed") else ""]
    return entry["label"] + "".join(marks)


def quality_row(entry: dict) -> list[str]:
    s, p, m, t = entry["settings"], entry["params"], entry["metrics"], entry.get("timing", {})
    setting = entry.get("setting", {})
    return [quality_label(entry), num(s.get("keep_ratio", 1.0)), str(setting.get("threads", "–")),
            num(p.get("removed_pct_of_prunable"), 2, "%"), num(p.get("removed_pct_of_total"), 2, "%"),
            num(p.get("total_after"), 0), num(m.get("wikitext2")), num(m.get("ptb")),
            num(t.get("importance_s"), 1), num(t.get("gate_training_s"), 1), num(t.get("rescale_s"), 1),
            setting.get("date", "–")]


def quality_sort(entry: dict) -> tuple:
    return (-entry["settings"].get("keep_ratio", 1.0), entry["label"])


def protocol(entries: list[dict]) -> str:
    """The calibration and evaluation settings the file's pruned entries share (or 'mixed')."""
    found = {(s.get("calib_samples"), s.get("block_len"), s.get("epochs"), s.get("rescale_samples"),
              s.get("seed"), s.get("seqlen"), s.get("windows"))
             for s in (e["settings"] for e in entries) if "calib_samples" in s}
    if len(found) != 1:
        return "protocol: mixed (see the JSON)"
    samples, block_len, epochs, rescale, seed, seqlen, windows = found.pop()
    return (f"calibration {samples} × {block_len} tokens, {epochs} epochs; scale calibration {rescale} "
            f"blocks; seed {seed}; evaluation seqlen {seqlen}, first {windows} windows")


def quality_blocks(path: Path, results: Path) -> list[str]:
    entries = load(path)["entries"]
    command = command_for(path, results, "python -m bench.quality")
    lines: list[str] = []
    for where, rows in group(entries, lambda e: machine(e.get("setting"))).items():
        rows = [quality_row(e) for e in sorted(rows, key=quality_sort)]
        lines += block(where, path, results, command, QUALITY_HEADER, rows, protocol(entries))
    return lines + plot(path.with_suffix(".png"), results)


def plot(png: Path, results: Path) -> list[str]:
    """The plot ``bench.quality`` drew beside its file, if there is one."""
    if not png.is_file():
        return []
    return [f"![Perplexity against parameters removed, `{rel(png, results)}`](../{rel(png, results)})", ""]


def section_quality(results: Path) -> list[str]:
    lines = head("Perplexity (`bench.quality`)", """
        Embedded SmolLM2-135M; every method under the same budget, projection, export and fp32 evaluation
        of the exported checkpoint (protocol in [bench/README.md](../bench/README.md)). *ranking s*: a
        baseline's one-shot scoring; *(resumed)*: the run was resumed from a checkpoint, so the stage in
        progress is timed from the resume; *(spread, inside)*: a `paper` entry whose settings record no
        tie-break, measured with the spread tie-break and the layer minimum inside the budget (`--variant
        paper --tie-break spread --layer-minimum inside`), not with the authors' index tie-break and
        minimum after the budget that `--variant paper` uses. `bench.speed` copies these stage times into
        `speed.json` (`stages`).""")
    for path in files(results, "quality.json", "*/quality.json"):
        if not path.parent.name.startswith("study-"):  # the studies' grids: their own section, over seeds
            lines += quality_blocks(path, results)
    return lines


# --- zero-shot (bench.zeroshot) --------------------------------------------------------------------

def zeroshot_metric(task: dict) -> str:
    return num(100 * task.get("acc_norm", task["acc"]))


def items(n: int) -> list[str]:
    """The item count and the largest standard error of an accuracy over that many items."""
    return [str(n), num(100 * (0.25 / n) ** 0.5, 1)]


def zeroshot_rows(data: dict, tasks: list[str]) -> list[list[str]]:
    return [[f"`{name_of(model)}`", *(zeroshot_metric(r["tasks"][t]) for t in tasks), num(100 * r["avg5"]),
             num(100 * r["avg7"]), *items(r["tasks"][tasks[0]]["n"])] for model, r in data["results"].items()]


def section_zeroshot(results: Path) -> list[str]:
    lines = head("Zero-shot accuracy (`bench.zeroshot`)", """
        Accuracy in %, 0-shot, lm-evaluation-harness conventions (`acc_norm` where the task has it, else
        `acc`); *avg5* is GRASPrune's average, *avg7* LLM-Pruner's; *± at most*: one standard error of an
        accuracy over that many items (at 50%).""")
    for path in files(results, "zeroshot.json"):
        data = load(path)
        tasks = list(next(iter(data["results"].values()))["tasks"])
        header = ["model", *tasks, "avg5", "avg7", "items per task", "± at most"]
        command = f"python -m bench.zeroshot --pruned DIR ... --limit {data['limit']}"
        extra = f"device {data.get('device', '–')}"
        lines += block(NOT_RECORDED, path, results, command, header, zeroshot_rows(data, tasks), extra)
    return lines


# --- speed (bench.speed and the decode-* runs) -----------------------------------------------------

def speed_files(results: Path) -> list[Path]:
    return files(results, "speed.json", "decode-*/*.json")


def overhead_row(o: dict) -> list[str]:
    s = o["setting"]
    return [str(o["block_len"]), num(o["keep_ratio"]), str(s["threads"]), s["dtype"],
            num(o["gate_step_median_s"], 4), num(o["plain_step_median_s"], 4), times(o["ratio"]),
            times(o.get("paired_ratio")), str(o["repeats"]), s.get("date", "–")]


def section_overhead(results: Path) -> list[str]:
    lines = head("Gate-training overhead (`bench.speed`)", """
        Median time of a gate-training step (projection, straight-through gates, gated forward, backward,
        AdamW) against a plain forward+backward of the same block, measured interleaved; *per-round
        ratio*: the median of the ratios of each round, which cancels drift between rounds.""")
    header = ["block", "keep", "threads", "dtype", "gate step s", "plain step s", "ratio", "per-round ratio",
              "repeats", "date"]
    for path in files(results, "speed.json"):
        o = load(path).get("overhead")
        if o:
            lines += block(machine(o["setting"]), path, results, "python -m bench.speed", header,
                           [overhead_row(o)])
    return lines


INFERENCE_HEADER = ["model", "keep", "threads", "params", "prefill tok/s", "decode tok/s", "decode speed-up",
                    "ideal", "share of ideal", "peak RSS MiB", "KV bytes/token", "date"]


def inference_row(r: dict) -> list[str]:
    s = r["setting"]
    return [f"`{name_of(r['model'])}`", num(r["keep_ratio"]), str(s["threads"]), num(r["params"], 0),
            num(r["prefill_tokens_per_s"], 1), num(r["decode_tokens_per_s"], 1), times(r["decode_speedup"]),
            times(r["ideal_speedup"]), pct(r["decode_share_of_ideal"]), num(r["peak_rss_bytes"] / MIB, 0),
            num(r["kv_cache_bytes_per_token"], 0), s.get("date", "–")]


def section_inference(results: Path) -> list[str]:
    lines = head("Pruned vs dense inference (`bench.speed`)", """
        Eager, batch 1, fp32; every model in one process, measured interleaved. *Ideal*: dense / pruned
        parameters read per token; *share of ideal*: measured speed-up / ideal. Peak RSS: each model in its
        own process.""")
    for path in speed_files(results):
        rows = load(path).get("inference", [])
        command = command_for(path, results, "python -m bench.speed")
        for where, part in group(rows, lambda r: machine(r["setting"])).items():
            lines += block(where, path, results, command, INFERENCE_HEADER, [inference_row(r) for r in part])
    return lines


DECODE_HEADER = ["threads", "setting", "batch", "load before→after", "model", "keep", "decode tok/s",
                 "decode speed-up", "ideal", "share of ideal", "date"]


def decode_rows(d: dict) -> list[list[str]]:
    kind = "compiled (StaticCache)" if d["compile"] else "eager (DynamicCache)"
    load_avg = "→".join(num(x, 1) for x in d.get("load_average_1min", [])) or "–"
    return [[str(d["threads"]), kind, str(d["batch"]), load_avg, f"`{name_of(r['model'])}`",
             num(r["keep_ratio"]), num(r["decode_tokens_per_s"], 1), times(r["decode_speedup"]),
             times(r["ideal_speedup"]), pct(r["decode_share_of_ideal"]), d["setting"].get("date", "–")]
            for r in d["rows"]]


def section_decode(results: Path) -> list[str]:
    lines = head("Decode speed-up per setting (`bench.speed`)", """
        Each setting (threads, eager or compiled decode step, batch) is one interleaved measurement of its
        models; *load*: the machine's 1-minute load average before and after.""")
    for path in speed_files(results):
        settings = load(path).get("decode_settings", [])
        command = command_for(path, results, "python -m bench.speed")
        for where, part in group(settings, lambda d: machine(d["setting"])).items():
            rows = [row for d in part for row in decode_rows(d)]
            lines += block(where, path, results, command, DECODE_HEADER, rows)
    return lines


SPLIT_HEADER = ["threads", "model", "keep", "eager step ms", "weight matmuls ms", "rest ms",
                "matmul speed-up", "ideal"]


def split_rows(d: dict) -> list[list[str]]:
    return [[str(d["threads"]), f"`{name_of(r['model'])}`", num(r["keep_ratio"]), num(r["eager_step_ms"], 1),
             num(r["weight_matmuls_ms"], 1), num(r["rest_ms"], 1), times(r["weight_matmuls_speedup"]),
             times(r["ideal_speedup"])] for r in d.get("step_split", [])]


def section_split(results: Path) -> list[str]:
    lines = head("Where an eager decode step's time goes (`bench.speed`)", """
        *Weight matmuls*: every `nn.Linear` of one decode step on a one-token input; *rest*: norms, rotary,
        attention, cache update, sampling and dispatch (milliseconds).""")
    for path in speed_files(results):
        settings = [d for d in load(path).get("decode_settings", []) if d.get("step_split")]
        command = command_for(path, results, "python -m bench.speed")
        for where, part in group(settings, lambda d: machine(d["setting"])).items():
            rows = [r for d in part for r in split_rows(d)]
            lines += block(where, path, results, command, SPLIT_HEADER, rows)
    return lines


# --- GPU (bench/gpu.sh, bench/gpu_fsdp.sh) ---------------------------------------------------------

def gpu_versions(s: dict) -> str:
    return f"torch {s.get('torch', '–')}, CUDA {s.get('cuda', '–')}, {s.get('dtype', '–')}"


def section_gpu(results: Path) -> list[str]:
    lines = head("GPU: LLaMA-2-7B shape (`bench/gpu.sh`)", """
        Random bf16 weights in the LLaMA-2-7B shape; gate-training step against a plain forward+backward
        (interleaved), and eager batch-1 decode at keep 0.5.""")
    for path in files(results, "gpu.json"):
        data = load(path)
        lines += gpu_training(path, results, data) + gpu_decode(path, results, data)
    return lines


def gpu_training(path: Path, results: Path, data: dict) -> list[str]:
    g, s = data["gate_training"], data["setting"]
    header = ["model", "block", "gate step s", "plain step s", "ratio", "repeats",
              f"{g['projected_paper_steps']:,} steps, projected s", "peak memory GiB", "date"]
    row = [s["model"], str(g["block_len"]), num(g["gate_step_median_s"], 4), num(g["plain_step_median_s"], 4),
           times(g["ratio"]), str(g["repeats"]), num(g["projected_paper_s"], 1),
           num(g["peak_memory_bytes"] / GIB), s.get("date", "–")]
    return block(machine(s), path, results, "bash bench/gpu.sh", header, [row], gpu_versions(s))


def gpu_decode(path: Path, results: Path, data: dict) -> list[str]:
    d, s = data["decode"], data["setting"]
    dense, pruned = d["dense"], d["pruned"]
    header = ["keep", "dense decode tok/s", "pruned decode tok/s", "speed-up", "ideal", "share of ideal",
              "dense prefill tok/s", "pruned prefill tok/s", "KV bytes/token dense → pruned", "date"]
    kv = f"{dense['kv_cache_bytes_per_token']:,} → {pruned['kv_cache_bytes_per_token']:,}"
    row = [num(d["keep_ratio"]), num(dense["decode_tokens_per_s"]), num(pruned["decode_tokens_per_s"]),
           times(d["decode_speedup"]), times(d["ideal_speedup"]), pct(d["share_of_ideal"]),
           num(dense["prefill_tokens_per_s"], 1), num(pruned["prefill_tokens_per_s"], 1), kv,
           s.get("date", "–")]
    extra = f"{dense['prompts']} prompts × {dense['new_tokens']} new tokens"
    return block(machine(s), path, results, "bash bench/gpu.sh", header, [row], extra)


def section_fsdp(results: Path) -> list[str]:
    lines = head("FSDP gate training (`bench/gpu_fsdp.sh`)", """
        Measured: one rank of FSDP at the LLaMA-2-7B shape (random bf16 weights). Computed (not measured):
        memory per GPU and time at 13B and 70B shapes on 8 GPUs, from the measured row (`bench/gpu_fsdp.py`
        says how).""")
    for path in files(results, "gpu_fsdp.json"):
        data = load(path)
        lines += fsdp_measured(path, results, data) + fsdp_computed(path, results, data)
    return lines


def fsdp_measured(path: Path, results: Path, data: dict) -> list[str]:
    m, s = data["measured"], data["setting"]
    header = ["model", "GPUs", "block", "weights GiB", "plain step s", "FSDP step s", "FSDP / plain",
              "peak memory GiB", "2,048 block passes s", "date"]
    row = [s["model"], str(m["gpus"]), str(m["block_len"]), num(m["weights_bytes"] / GIB),
           num(m["plain_step_s"], 3), num(m["fsdp_step_s"], 3), times(m["fsdp_overhead"]),
           num(m["fsdp_peak_bytes"] / GIB), num(m["paper_block_passes_s"], 1), s.get("date", "–")]
    return block(machine(s), path, results, "bash bench/gpu_fsdp.sh", header, [row], gpu_versions(s))


def fsdp_row(name: str, c: dict) -> list[str]:
    step = f"{num(c['step_s_overlapped'], 3)} – {num(c['step_s_serial'], 3)}"
    passes = " – ".join(num(x, 1) for x in c["paper_block_passes_s"])
    return [name, str(c["gpus"]), str(c["global_batch_blocks"]), str(c["steps"]),
            num(c["memory_per_gpu_bytes"] / GIB), step, passes]


def fsdp_computed(path: Path, results: Path, data: dict) -> list[str]:
    header = ["model", "GPUs", "global batch (blocks)", "steps", "memory per GPU GiB",
              "step s (overlapped – serial)", "2,048 block passes s"]
    rows = [fsdp_row(name, c) for name, c in data["computed"].items()]
    extra = f"all-gathers at {num(data.get('assumptions', {}).get('allgather_gbps'), 0)} GB/s"
    where = f"computed from the measured row ({machine(data['setting'])})"
    return block(where, path, results, "bash bench/gpu_fsdp.sh", header, rows, extra)


# --- llama.cpp (bench.llamacpp) --------------------------------------------------------------------

LLAMACPP_HEADER = ["type", "model", "file MB", "prefill tok/s", "decode tok/s", "prefill speed-up (ideal, %)",
                   "decode speed-up (ideal, %)"]


def llamacpp_speedup(r: dict, kind: str) -> str:
    if r["model"] == "dense":
        return times(1.0)
    return f"{times(r[kind + '_speedup'])} ({times(r[kind + '_ideal'])}, {r[kind + '_pct']:.0f}%)"


def llamacpp_row(r: dict) -> list[str]:
    return [r["type"], r["model"], num(r["file_bytes"] / 1e6, 1), num(r["prefill"], 0), num(r["decode"], 1),
            llamacpp_speedup(r, "prefill"), llamacpp_speedup(r, "decode")]


def llamacpp_conditions(c: dict) -> str:
    return (f"masks: {c['masks']}; {c['threads']} thread(s), prompt {c['prompt']}, {c['decoded']} decoded, "
            f"{c['repeats']} repeats, llama-cpp-python {c.get('llama-cpp-python', '–')}, "
            f"{c.get('date', '–')}")


def section_llamacpp(results: Path) -> list[str]:
    lines = head("llama.cpp (`bench.llamacpp`)", """
        Dense and pruned SmolLM2-135M as `deci` GGUFs in llama.cpp, every model in one process measured
        interleaved, llama.cpp's own timers, median of the repeats. Speed-up (ideal, % of ideal): the ideal
        decode speed-up is dense / pruned bytes read per decoded token, the ideal prefill speed-up dense /
        pruned multiply-adds per token. Compare ratios across files, not tok/s.""")
    for path in files(results, "llamacpp-*/*.json"):
        data = load(path)
        command = command_for(path, results, "python -m bench.llamacpp")
        rows = [llamacpp_row(r) for r in data["rows"]]
        conditions = data["conditions"]
        lines += block(machine(conditions), path, results, command, LLAMACPP_HEADER, rows,
                       llamacpp_conditions(conditions))
    return lines


# --- aligned widths (bench.align_projection, one prune each way) -----------------------------------

def projection_command(s: dict, aligns: list[str], out: str) -> str:
    where = f"--shape {s['layout']}" if "," in s["layout"] else f"--model {s['layout']}"
    return (f"python -m bench.align_projection {where} --aligns {','.join(aligns)} --calls {s['calls']} "
            f"--rounds {s['rounds']} --threads {s['threads']} --keep-ratio {s['keep_ratio']} --out {out}")


def section_projection(results: Path) -> list[str]:
    lines = head("Budget projection time per alignment (`bench.align_projection`)", """
        One `units.project` call (run at every gate step) per `--align N`, interleaved rounds, median
        milliseconds per call.""")
    paths = files(results, "align-*/projection-*.json")
    aligns = sorted({a for p in paths for a in load(p)["per_call_us"]}, key=int)
    header = ["layout", "units", "keep", "threads", "load", *(f"align {a} ms" for a in aligns)]
    for path in paths:
        data = load(path)
        s, t = data["setting"], data["per_call_us"]
        row = [s["layout"], num(s["units"], 0), num(s["keep_ratio"]), str(s["threads"]),
               num(s.get("load_average_1min")), *(num(t[a] / 1000) if a in t else "–" for a in aligns)]
        lines += block(machine(s), path, results, projection_command(s, list(t), path.name), header, [row])
    return lines


ALIGN_HEADER = ["align", "WikiText-2 ppl", "dense ppl", "seqlen", "windows", "budget", "kept prunable",
                "of budget", "FFN widths", "KV groups kept"]


def align_row(align: str, r: dict) -> list[str]:
    widths = f"{min(r['ffn_channels']):,}–{max(r['ffn_channels']):,}"
    return [align, num(r["ppl_wikitext2"]), num(r["dense_ppl"]), str(r["seqlen"]), str(r["windows"]),
            num(r["budget"], 0), num(r["prunable_after"], 0), pct(r["prunable_after"] / r["budget"], 2),
            widths, str(sum(r["kv_groups"]))]


def align_settings(s: dict) -> str:
    return (f"variant {s['variant']}, calibration {s['calib_samples']} × {s['block_len']}, {s['epochs']} "
            f"epochs, {s['rescale_samples']} scale blocks, seed {s['seed']}, {s['dtype']}")


def section_align_prune(results: Path) -> list[str]:
    lines = head("One prune per alignment (`grasprune prune --align N`)", """
        The same prune with FFN widths free (`--align 1`) and in multiples of 64; WikiText-2 perplexity of
        the exported checkpoint. One run each, one seed.""")
    for path in files(results, "align-*/prune-*.json"):
        data = load(path)
        s = data["setting"]
        runs = {key.split("_", 1)[1]: run for key, run in data.items() if key.startswith("align_")}
        first = next(iter(runs.values()))
        command = ALIGN_PRUNE_COMMAND.format(model=s["model"], keep=s["keep_ratio"], device=s["device"],
                                             windows=first["windows"], seqlen=first["seqlen"])
        rows = [align_row(a, r) for a, r in runs.items()]
        lines += block(machine(s), path, results, command, ALIGN_HEADER, rows, align_settings(s))
    return lines


# --- studio memory (bench.memory_soak) -------------------------------------------------------------

def section_soak(results: Path) -> list[str]:
    lines = head("Studio server memory (`bench.memory_soak`)", """
        The studio server's resident memory while browser tabs poll a running job's live view; growth and
        slope are fitted after the warm-up.""")
    header = ["job", "tabs", "measured s", "RSS start MB", "RSS end MB", "growth MB", "slope MB/h",
              "page exceptions", "date"]
    for path in files(results, "memory_soak.json"):
        d = load(path)
        row = [d["job"]["model"], str(d["tabs"]), num(d["measured_s"], 0), num(d["rss_start_mb"]),
               num(d["rss_end_mb"]), num(d["growth_mb"]), num(d["slope_mb_per_hour"]),
               str(d["page_exceptions"]), str(d.get("date", "–"))]
        lines += block(NOT_RECORDED, path, results, "python -m bench.memory_soak", header, [row])
    return lines


# --- healing (bench.heal) -------------------------------------------------------------------------

def heal_row(row: dict) -> list[str]:
    name = f"{row['method']} keep {row['keep_ratio']}" + (f" ({row['variant']})" if row['method'] == 'grasprune' else "")
    return [name, *[heal_cell(p) for p in row["points"]]]


def heal_marks(conditions: dict) -> list[str]:
    """Column headers of a heal table: before healing, then each mark in minutes or in steps (--mark-steps)."""
    if conditions.get("marks_steps"):
        return ["before", *[f"{m:,} steps" for m in conditions["marks_steps"]]]
    return ["before", *[f"{m:g} min" for m in conditions["marks_min"]]]


def heal_cell(point: dict) -> str:
    """Perplexity (steps, minutes); with held-out selection (``--holdout next``) also the perplexity of the best
    held-out step so far, which is what ``grasprune heal`` would merge at that mark."""
    cell = f"{num(point['wikitext2'])} ({point['steps']} steps, {num(point['minutes'], 1)} min)"
    if "selected" in point:
        cell += f"; merged by `grasprune heal`: **{num(point['selected']['wikitext2'])}** (step {point['selected']['step']})"
    return cell


def section_heal(results: Path) -> list[str]:
    lines = head("Healing (`bench.heal`)", """
        WikiText-2 perplexity of pruned checkpoints before LoRA healing and after each mark of training
        wall time (the evaluations not counted); `grasprune heal`'s defaults (rank 8 on every attention and
        MLP linear, lr 2e-4, blocks of 256 tokens of the calibration text). Cells: perplexity (steps,
        minutes of training). Runs with `--mark-steps` mark by training steps instead (the same on any
        machine); runs with `--holdout next` also give what `grasprune heal` merges at each mark: the
        adapters of the step with the lowest held-out loss so far.""")
    for path in files(results, "heal-*/*.json"):
        data = load(path)
        c, rows = data["conditions"], data["rows"]
        marks = heal_marks(c)
        extra = f"seqlen {c['seqlen']}, {c['windows']} windows, {c['threads']} threads, distill {c['distill']}, {c['date']}"
        lines += block(machine(c), path, results, command_for(path, results, "python -m bench.heal"),
                       ["checkpoint", *marks], [heal_row(r) for r in rows], extra)
    return lines


# --- studies (bench.study) ------------------------------------------------------------------------

STUDY_PLOTS = {"keep": "keep.png", "calibration": "calibration.png", "kvcache": "kvcache.png"}


def section_studies(results: Path) -> list[str]:
    lines = head("Studies (`bench.study`)", """
        The keep sweep (GRASPrune and the two best baselines, keep 0.9 to 0.2, a Pareto plot of perplexity
        against parameters), calibration size and domain, and KV-cache size and decode speed at long
        context. Every GRASPrune point is measured once per seed: cells are the mean over seeds and, in
        brackets, the lowest and highest; *seeds* says how many are in so far (the grids fill in over
        several sessions). How each study is set up: [docs/studies.md](studies.md).""")
    for study, png in STUDY_PLOTS.items():
        path = results / f"study-{study}" / "summary.json"
        if not path.is_file():
            continue
        summary = load(path)
        lines += [f"### {summary['title']}", ""]
        lines += caption(summary["setting"], path, results, summary["command"])
        lines += [*study_tables.table(summary), ""]
        if (path.parent / png).is_file():
            name = rel(path.parent / png, results)
            lines += [f"![{summary['title']}, `{name}`](../{name})", ""]
    return lines


# --- robustness (bench.robustness) ----------------------------------------------------------------

ROBUSTNESS_HEADER = ["keep", "runs", "mean", "min", "max", "max/min", "least mask overlap", "s per run"]


def robustness_row(r: dict) -> list[str]:
    overlap = "–" if r["min_overlap"] is None else pct(r["min_overlap"], 1)
    return [str(r["keep_ratio"]), str(r["n"]), num(r["mean"]), num(r["min"]), num(r["max"]), f"×{r['ratio']:.3f}",
            overlap, num(r["mean_s"], 0)]


def section_robustness(results: Path) -> list[str]:
    lines = head("Robustness (`bench.robustness`)", """
        `grasprune prune`'s defaults once per keep ratio, seed and thread count: WikiText-2 perplexity (64
        windows of 512), the mean and the lowest and highest run, and the least share of kept units two
        runs have in common. A table per candidate (*default* is the command as shipped); what was tried
        and why: [docs/studies.md](studies.md#robustness-one-command-one-quality).""")
    path = results / "robustness" / "summary.json"
    if not path.is_file():
        return lines
    entries = load(results / "robustness" / "robustness.json")["entries"]
    for tag, rows in group(load(path), lambda r: r["tag"]).items():
        runs = [e for e in entries if e["settings"]["tag"] == tag]
        seeds = sorted({e["settings"]["seed"] for e in runs})
        threads = sorted({e["settings"]["threads"] for e in runs})
        extra = (f"candidate {tag}, seeds {', '.join(map(str, seeds))} × threads {', '.join(map(str, threads))}, "
                 f"backbone {', '.join(sorted({e['settings']['dtype'] for e in runs}))}")
        lines += block(machine(runs[0]["setting"]), path, results, "python -m bench.robustness grid",
                       ROBUSTNESS_HEADER, [robustness_row(r) for r in rows], extra)
    return lines


# --- the page --------------------------------------------------------------------------------------

SECTIONS = [section_quality, section_zeroshot, section_overhead, section_inference, section_decode,
            section_split, section_gpu, section_fsdp, section_llamacpp, section_projection,
            section_align_prune, section_heal, section_studies, section_robustness, section_soak]
PREFACE = """
    Generated by `python -m bench.report` from the files under `bench/results/`; do not edit by hand
    (`python -m bench.report --check` fails when this page is out of date). Each table holds the rows of
    one file measured on one machine, as the file records it; tables from different machines, thread
    counts or load are not comparable in time. What each benchmark computes:
    [bench/README.md](../bench/README.md)."""


def render(results: Path = RESULTS) -> str:
    lines = ["# Results", "", " ".join(PREFACE.split()), ""]
    for section in SECTIONS:
        lines += section(results)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip("\n") + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the page or the README's table is not what would be written now")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of result files")
    parser.add_argument("--out", type=Path, default=OUT, help="Markdown file to write or check")
    parser.add_argument("--readme", type=Path, default=README,
                        help="Markdown file whose headline table (between its markers) to write or check")
    args = parser.parse_args(argv)
    wanted = {args.out: render(args.results)}
    if args.readme.is_file():
        wanted[args.readme] = headline.readme_with_table(args.readme.read_text(), args.results)
    if not args.check:
        for path, text in wanted.items():
            write_atomic(path, text)
        return 0
    stale = [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
    for path in stale:
        print(f"{path} is out of date: run python -m bench.report", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
