"""Perplexity of pruned checkpoints after minutes of LoRA healing (``grasprune heal``'s loop).

    python -m bench.heal --checkpoints DIR [DIR ...] [--marks 5,15,30 | --mark-steps 250,750,1500]
                         [--holdout none|next] [--distill 0] [--threads 2] [--windows 64]
                         [--out bench/results/heal-DATE]

Each checkpoint is measured before healing, then healed with ``HealConfig``'s defaults (LoRA rank 8 on
every attention and MLP linear, lr 2e-4, 256 blocks of 256 tokens of the calibration text) and measured
again each time the training's own wall time passes a mark (the evaluations are not counted in it). The
adapters are evaluated unmerged (merging gives the same function: tests/test_heal.py). It measures the
training's trajectory, so without the held-out step selection of ``grasprune heal`` (``--holdout none``):
the command merges the step of the lowest held-out loss instead of the last one. ``--holdout next`` measures
that too: at each mark, besides the adapters of the last step, the adapters of the best held-out step so
far (what ``grasprune heal --minutes M`` would merge) are evaluated, in the point's ``selected``.

Marks in minutes depend on the machine's speed that day (the same checkpoint made 294 steps in 5 minutes
one day and 422 the next); ``--mark-steps`` marks by training steps instead, the same on any machine, so
runs of different days (or a busy machine) compare exactly.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.common import RESULTS, csv, set_threads, setting
from bench.report import heal_marks, heal_row
from grasprune.atomic import write_json_atomic, write_text_atomic
from grasprune.evaluation.perplexity import perplexity
from grasprune.method.export import load_pruned
from grasprune.method.heal import (
    HealConfig,
    HealState,
    adapter_tensors,
    dense_teacher,
    train_adapters,
    with_lora,
)
from grasprune.method.heal_holdout import BestAdapters, heal_blocks

DEFAULT_MARKS = [5.0, 15.0, 30.0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    marks = p.add_mutually_exclusive_group()
    marks.add_argument("--marks", type=csv(float), default=None, help="minutes of training (default 5,15,30)")
    marks.add_argument("--mark-steps", type=csv(int), default=None,
                       help="training steps instead of minutes (the same on any machine)")
    p.add_argument("--holdout", choices=("none", "next"), default="none",
                   help="next: also evaluate the best held-out step so far at each mark (what grasprune heal merges)")
    p.add_argument("--distill", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS / f"heal-{time.strftime('%Y-%m-%d', time.gmtime())}")
    args = p.parse_args(argv)
    if args.marks is None and args.mark_steps is None:
        args.marks = DEFAULT_MARKS
    if sorted(args.marks or args.mark_steps) != list(args.marks or args.mark_steps):
        p.error("marks must be in increasing order")
    return args


def measure(folder: Path, args: argparse.Namespace) -> dict:
    cfg = HealConfig(steps=10**9, distill=args.distill, holdout=args.holdout)
    model, tokenizer = load_pruned(folder, dtype=torch.float32)
    ppl = lambda m: round(perplexity(m.eval(), tokenizer, "wikitext2", args.seqlen, args.windows).ppl, 3)
    points = [{"minutes": 0.0, "steps": 0, "wikitext2": ppl(model)}]
    print(f"{folder.name}: before healing {points[0]['wikitext2']}", flush=True)
    adapted = with_lora(model, cfg)
    params = adapter_tensors(adapted)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
    blocks, held = heal_blocks(cfg, tokenizer)  # held-out blocks only with --holdout next
    best = None if held is None else BestAdapters(held, cfg.holdout_every)
    teacher = dense_teacher(folder) if cfg.distill > 0 else None
    step, elapsed = 0, 0.0
    with tempfile.TemporaryDirectory() as scratch:
        state = HealState(Path(scratch), cfg)
        for mark in args.marks or args.mark_steps:
            if args.marks:
                cfg.minutes = mark
            else:
                cfg.steps = mark
            _, done = train_adapters(adapted, blocks, teacher, optimizer, params, state, cfg, step, elapsed,
                                     lambda *a, **k: None, None, best=best)
            step, elapsed = done["steps"], done["elapsed_s"]
            points.append({"minutes": round(elapsed / 60, 2), "steps": step, "wikitext2": ppl(adapted)})
            if best is not None:
                points[-1]["selected"] = {"step": best.best_step, "wikitext2": selected_ppl(adapted, params, best, ppl)}
            print(f"{folder.name}: {points[-1]}", flush=True)
    report = json.loads((folder / "grasprune.json").read_text())
    return {"checkpoint": str(folder), "method": report.get("method"), "keep_ratio": report.get("keep_ratio"),
            "variant": report.get("config", {}).get("variant"), "settings": cfg.identity(), "points": points,
            **({"holdout": best.summary()} if best is not None else {})}


def selected_ppl(adapted, params: dict, best: BestAdapters, ppl) -> float:
    """Perplexity with the best held-out step's adapters, then the last step's put back to train on."""
    current = {name: p.detach().clone() for name, p in params.items()}
    best.restore_best(params)
    value = ppl(adapted)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(current[name])
    return value


def table(rows: list[dict], conditions: dict) -> str:
    by_steps = conditions.get("marks_steps") is not None
    caption = (f"{conditions['cpu']}, {conditions['threads']} threads, seqlen {conditions['seqlen']}, "
               f"{conditions['windows']} windows; " + ("marks in training steps" if by_steps else
                                                       "minutes of training (evaluations not counted)"))
    marks = heal_marks(conditions)
    lines = ["# WikiText-2 perplexity after LoRA healing", "", caption, "",
             "| checkpoint | " + " | ".join(marks) + " |", "|---|" + "---:|" * len(marks)]
    lines += ["| " + " | ".join(heal_row(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    rows = [measure(folder.resolve(), args) for folder in args.checkpoints]
    conditions = setting("pruned checkpoints", "fp32", seqlen=args.seqlen, windows=args.windows,
                         marks_min=args.marks, marks_steps=args.mark_steps, holdout=args.holdout,
                         distill=args.distill)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "heal.json", {"conditions": conditions, "rows": rows})
    write_text_atomic(args.out / "heal.md", table(rows, conditions))
    print(table(rows, conditions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
