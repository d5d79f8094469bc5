"""One command, one quality: the default prune over seeds, thread counts and backbone precisions.

    python -m bench.robustness grid    [--keep-ratios 0.5,0.7] [--seeds 0,1,2] [--threads 1,2] [--dtypes auto]
                                       [--set KEY=VALUE ...] [--tag NAME]
    python -m bench.robustness trace   --keep-ratio 0.5 --seed 0 --threads 1 --out FILE [--set KEY=VALUE ...]
    python -m bench.robustness compare TRACE_A TRACE_B [--out FILE.json]
    python -m bench.robustness report

``grid`` runs ``grasprune prune``'s defaults (a ``PruneConfig`` with only the keep ratio, the seed, the
backbone dtype and the evaluation set: WikiText-2, 64 windows of 512) once per point, each with
``torch.set_num_threads`` at the point's thread count, and appends every result to
``bench/results/robustness/robustness.json`` (resumable: a point already there with the same resolved
settings is skipped, so a change of defaults measures anew). ``--set`` changes a ``PruneConfig`` field for
a candidate (``--set lr=0.005``); ``--tag`` names the candidate in the report. ``report`` writes
``summary.json`` (per tag and keep ratio: mean, min, max, max/min of the perplexity, mean seconds per run)
and ``robustness.md``. ``trace`` and ``compare`` are ``bench.robustness_trace``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from grasprune.atomic import write_json_atomic, write_text_atomic
from grasprune.config import PruneConfig
from grasprune.events import read_events
from grasprune.runs.pipeline import prune_run
from grasprune.runs.store import create_run
from grasprune.scaleout.allocator import keep_freed_memory

from . import report, robustness_trace
from .common import DENSE, RESULTS, csv, setting
from .quality import add_entry, done_settings, load_results

FOLDER = RESULTS / "robustness"
RUNS = Path("runs/bench-robustness")
DEFAULT_TAG = "default"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.robustness", description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("grid", "trace", "compare", "report"))
    p.add_argument("traces", nargs="*", type=Path, help="compare: two trace files")
    p.add_argument("--keep-ratios", type=csv(float), default=[0.5, 0.7])
    p.add_argument("--keep-ratio", type=float, default=0.5, help="trace: the keep ratio")
    p.add_argument("--seeds", type=csv(int), default=[0, 1, 2])
    p.add_argument("--seed", type=int, default=0, help="trace: the seed")
    p.add_argument("--threads", type=csv(int), default=[1, 2])
    p.add_argument("--dtypes", type=csv(), default=["auto"], help="backbone precisions (auto, bf16, fp32)")
    p.add_argument("--model", default=DENSE)
    p.add_argument("--windows", type=int, default=64, help="WikiText-2 windows")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per WikiText-2 window")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a PruneConfig field for a candidate (JSON value, e.g. lr=0.005)")
    p.add_argument("--perturb", type=float, default=0.0, help="trace: noise added to the initial scores")
    p.add_argument("--tag", default=DEFAULT_TAG, help="the candidate's name in the report")
    p.add_argument("--out", type=Path, default=None, help="results folder (grid) or trace file (trace)")
    p.add_argument("--runs-dir", type=Path, default=RUNS)
    return p.parse_args(argv)


def overrides(pairs: list[str]) -> dict:
    fields = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            fields[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            fields[key.replace("-", "_")] = value
    return fields


def config_for(args: argparse.Namespace, keep: float, seed: int, dtype: str) -> PruneConfig:
    """The CLI's default prune at this point: only what the grid varies (and ``--set``) is set."""
    return PruneConfig(model=args.model, keep_ratio=keep, seed=seed, dtype=dtype, device="cpu",
                       eval_datasets=["wikitext2"], eval_seqlen=args.seqlen, eval_windows=args.windows,
                       eval_dense=False, **overrides(args.overrides))


def identity(config: PruneConfig, threads: int, tag: str) -> dict:
    """A point's identity: the resolved settings (so a change of defaults is a new point), threads, tag."""
    resolved = config.resolved().to_dict()
    return {"tag": tag, "threads": threads, **{k: v for k, v in resolved.items() if k != "experimental"}}


def run_point(config: PruneConfig, runs_dir: Path) -> dict:
    """One real prune; its checkpoint is deleted after evaluation (the grid keeps numbers only)."""
    out = (runs_dir / "checkpoints" / f"{time.time_ns()}").resolve()
    run = create_run(config, root=runs_dir.resolve(), out=out)
    report = prune_run(run, overwrite=True)
    shutil.rmtree(out, ignore_errors=True)
    return {"ppl": report["metrics"]["ppl_wikitext2"]["ppl"], "timing": report["timing"],
            "mask_bits": mask_bits(report), "run": str(run.folder)}


def mask_bits(report: dict) -> str:
    """The kept units as one hex string, a bit per unit in layout order (each layer's FFN channels, then its
    KV groups): a few kB per run where the per-layer index lists take a hundred."""
    bits = []
    for layer, ffn, kv in zip(report["layers"], report["mask"]["ffn"], report["mask"]["kv"], strict=True):
        for kept, width in ((set(ffn), layer["ffn_channels_before"]), (set(kv), layer["kv_groups_before"])):
            bits += [unit in kept for unit in range(width)]
    bits += [False] * (-len(bits) % 8)
    return bytes(int("".join("1" if b else "0" for b in bits[i:i + 8]), 2) for i in range(0, len(bits), 8)).hex()


def grid(args: argparse.Namespace) -> None:
    out = args.out or FOLDER
    json_path = out / "robustness.json"
    keep_freed_memory()  # as `grasprune prune` does, so the times are the CLI's
    for keep in args.keep_ratios:
        for seed in args.seeds:
            for threads in args.threads:
                for dtype in args.dtypes:
                    config = config_for(args, keep, seed, dtype)
                    settings = identity(config, threads, args.tag)
                    if settings in done_settings(json_path):
                        continue
                    torch.set_num_threads(threads)
                    print(f"[bench.robustness] {args.tag} keep={keep} seed={seed} threads={threads} dtype={dtype}",
                          flush=True)
                    started = time.perf_counter()
                    point = run_point(config, args.runs_dir)
                    conditions = setting(config.model, settings["dtype"])
                    add_entry(json_path, {"settings": settings, **point,
                                          "wall_s": round(time.perf_counter() - started, 2), "setting": conditions})
                    print(f"[bench.robustness]   ppl {point['ppl']:.2f} in {time.perf_counter() - started:.0f} s",
                          flush=True)
    write_reports(out)


def summarise(entries: list[dict]) -> list[dict]:
    """Per tag, model and keep ratio: the perplexity's mean, min, max and max/min over every point, the mask
    overlap of the least similar pair, and the mean seconds per run."""
    groups: dict[tuple, list[dict]] = {}
    for entry in entries:
        s = entry["settings"]
        groups.setdefault((s["tag"], s["model"], s["keep_ratio"]), []).append(entry)
    rows = []
    for (tag, model, keep), members in sorted(groups.items()):
        ppl = [m["ppl"] for m in members]
        rows.append({
            "tag": tag, "model": model, "keep_ratio": keep, "n": len(ppl), "mean": statistics.fmean(ppl), "min": min(ppl),
            "max": max(ppl), "ratio": max(ppl) / min(ppl), "mean_s": statistics.fmean(m["wall_s"] for m in members),
            "min_overlap": min_overlap([kept_units(m["mask_bits"]) for m in members]),
            "machines": sorted({m["setting"]["cpu"] for m in members}),
            "points": [{"seed": m["settings"]["seed"], "threads": m["settings"]["threads"],
                        "dtype": m["settings"]["dtype"], "ppl": m["ppl"], "wall_s": m["wall_s"]} for m in members],
        })
    return rows


def kept_units(bits: str) -> set[int]:
    """The positions of the kept units in a ``mask_bits`` string."""
    return {i * 8 + j for i, byte in enumerate(bytes.fromhex(bits)) for j in range(8) if byte >> (7 - j) & 1}


def min_overlap(sets: list[set[int]]) -> float | None:
    """The smallest share of kept units two of the masks have in common (1.0: all the same mask)."""
    pairs = [len(a & b) / max(len(a), 1) for i, a in enumerate(sets) for b in sets[i + 1:]]
    return min(pairs) if pairs else None


def markdown(rows: list[dict], entries: list[dict]) -> str:
    """The summary as ``bench.report`` draws it in docs/results.md (one row formatter), then every run."""
    lines = ["# Robustness: the default prune over seeds and thread counts", "",
             ("WikiText-2 test perplexity (64 windows of 512) of `grasprune prune --keep-ratio R --seed S` at "
              "each thread count (`torch.set_num_threads`). `python -m bench.robustness grid`."), "",
             *report.table(["candidate", "model", *report.ROBUSTNESS_HEADER],
                           [[r["tag"], r["model"], *report.robustness_row(r)] for r in rows]),
             "Per run:", "",
             *report.table(["candidate", "keep", "seed", "threads", "dtype", "perplexity", "seconds"],
                           [[r["tag"], str(r["keep_ratio"]), str(p["seed"]), str(p["threads"]), p["dtype"],
                             report.num(p["ppl"]), report.num(p["wall_s"], 0)] for r in rows for p in r["points"]])]
    machines = sorted({f"{e['setting']['cpu']} ({e['setting']['cpus']} cores, torch {e['setting']['torch']}, "
                       f"{e['setting']['date']})" for e in entries})
    return "\n".join([*lines, "Measured on: " + "; ".join(machines), ""])


def write_reports(out: Path) -> None:
    entries = load_results(out / "robustness.json")["entries"]
    rows = summarise(entries)
    write_json_atomic(out / "summary.json", rows)
    write_text_atomic(out / "robustness.md", markdown(rows, entries))


def trace(args: argparse.Namespace) -> None:
    config = config_for(args, args.keep_ratio, args.seed, args.dtypes[0])
    torch.set_num_threads(args.threads[0])
    keep_freed_memory()
    steps: list = []
    with robustness_trace.recording(steps, args.perturb):
        point = run_point(config, args.runs_dir)
    losses = [e["loss"] for e in read_events(Path(point["run"], "events.jsonl"))
              if e["type"] == "step" and e.get("phase") == "gate_training"]
    meta = {"keep": args.keep_ratio, "seed": args.seed, "threads": args.threads[0], "ppl": point["ppl"],
            "timing": point["timing"], "overrides": args.overrides, "perturb": args.perturb}
    out = args.out or Path(f"runs/trace/keep{args.keep_ratio}-seed{args.seed}-t{args.threads[0]}.safetensors")
    robustness_trace.save_trace(out, steps, losses, meta)
    print(f"[bench.robustness] trace {out}: ppl {point['ppl']:.2f}, {len(steps)} steps, timing {point['timing']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "grid":
        grid(args)
    elif args.mode == "trace":
        trace(args)
    elif args.mode == "compare":
        if len(args.traces) != 2:
            raise SystemExit("compare takes two trace files")
        result = robustness_trace.compare(*args.traces)
        if args.out:
            write_json_atomic(args.out, {"a": str(args.traces[0]), "b": str(args.traces[1]), **result})
    else:
        write_reports(args.out or FOLDER)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
