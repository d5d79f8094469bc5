"""``grasprune heal``: LoRA recovery of a pruned checkpoint, merged into a new checkpoint folder."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
from pathlib import Path

from grasprune.cli.options import argument_spec, flag_of
from grasprune.cli.signals import stop_on_signals
from grasprune.config import HealConfig
from grasprune.errors import UserError
from grasprune.events import Emit, EventLog


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("heal", help="LoRA recovery of a pruned checkpoint (merged: same format and shapes)")
    p.add_argument("dir", metavar="CHECKPOINT_DIR", help="a pruned checkpoint folder (with grasprune.json)")
    p.add_argument("--out", required=True, help="the healed checkpoint folder to write")
    for field in dataclasses.fields(HealConfig):  # flags, types and help from HealConfig's fields
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        p.add_argument(flag_of(field), **{**argument_spec(field), "default": default})
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--restart", action="store_true", help="discard a stopped heal's saved state and start over")
    p.add_argument("--events", metavar="FILE", help="append the progress to FILE as JSON lines, one event each "
                   "(phase; step with loss and training seconds; stopped; done; error): what the studio reads")
    return p


def run(args) -> int:
    from grasprune.errors import Stopped
    from grasprune.method.heal import heal

    cfg = HealConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(HealConfig)})
    log = event_log(args.events)
    emit = progress_printer(cfg) if log is None else both(progress_printer(cfg), log.emit)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        report = heal(args.dir, args.out, cfg, emit=emit, stop=stop, overwrite=args.overwrite, restart=args.restart)
        if cfg.eval_datasets:
            from grasprune.evaluation.checkpoint_metrics import measure_checkpoint

            report = measure_checkpoint(Path(args.out), cfg.eval_datasets, cfg.eval_seqlen, cfg.eval_windows, emit)
    except Stopped as err:
        print(f"{err}: run the same command again to resume", file=sys.stderr)
        return 3
    except Exception as err:
        if log is not None:  # the reader of the file learns why the process ended
            log.emit("error", message=str(err).splitlines()[0] if str(err) else type(err).__name__,
                     kind=type(err).__name__)
        raise
    done = report["heal"]
    merged = "" if done["merged_step"] == done["steps"] else f", merged step {done['merged_step']} (lowest held-out loss)"
    print(f"healed {done['steps']} steps in {done['elapsed_s']:.0f}s{merged}: {args.out}")
    for metric in report.get("metrics", {}).values():
        print(f"{metric['dataset']} perplexity {metric['ppl']:.2f} (seqlen {metric['seqlen']}, {metric['windows']} "
              "windows)")
    return 0


def event_log(path: str | None) -> EventLog | None:
    if path is None:
        return None
    if Path(path).is_dir():
        raise UserError(f"--events {path} is a folder: name a file to append the progress to")
    try:
        return EventLog(path)
    except OSError as err:
        raise UserError(f"cannot write --events {path}: {err.strerror}") from err


def both(first: Emit, second: Emit) -> Emit:
    def emit(kind: str, **fields) -> None:
        first(kind, **fields)
        second(kind, **fields)

    return emit


def progress_printer(cfg: HealConfig):
    every = max(1, cfg.steps // 20)

    def emit(kind: str, **fields) -> None:
        if kind == "phase" and fields.get("resumed_at"):
            print(f"resuming at step {fields['resumed_at']} of {fields['total']}")
        if kind == "step" and (fields["step"] % every == 0 or fields["step"] == fields["total"]):
            print(f"step {fields['step']}/{fields['total']}  loss {fields['loss']:.4f}  {fields['elapsed_s']:.0f}s",
                  flush=True)
        if kind == "holdout":
            print(f"held-out loss {fields['loss']:.4f} at step {fields['step']}  (best: step {fields['best_step']}, "
                  f"{fields['best_loss']:.4f})", flush=True)

    return emit
