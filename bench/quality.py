"""GRASPrune against the baselines: perplexity at each keep ratio, same budget, projection and export.

    python -m bench.quality [--methods grasprune,random,magnitude,wanda-sp,flap,taylor]
                            [--keep-ratios 0.8,0.7,0.5] [--rescale both|on|off] [--limit-windows 64]
                            [--variants default,paper]

Every entry is one real ``prune_run`` (the library call behind ``grasprune prune``). Baselines are run
one-shot (``rescale_epochs=0``, as published) and with our scale calibration (``rescale_epochs=1``);
GRASPrune always with its scale calibration, once per gate-training variant (the default and the
authors' ``paper`` procedure); a baseline's scale calibration is the ``distill`` variant's, which the
default shares. ``quality.json`` is rewritten atomically after every entry, and entries already there
with the same settings are skipped, so the grid can be filled in over several sessions. ``quality.md``
(table, who wins) and ``quality.png`` are redrawn each time.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from grasprune.atomic import write_json_atomic, write_text_atomic
from grasprune.config import DEFAULT_VARIANT, EXPERIMENTAL_VARIANTS, METHODS, VARIANTS, PruneConfig
from grasprune.evaluation.perplexity import perplexity
from grasprune.method.models import load_model
from grasprune.runs.pipeline import count_parameters, prune_run
from grasprune.runs.store import Run, create_run, list_runs
from grasprune.scaleout.allocator import keep_freed_memory

from .common import DENSE, RESULTS, csv, describe, set_threads, setting
from .quality_report import markdown, plot

CALIB = "wikitext-2-tokenized/valid.txt#lines=0:50%"
RESCALE = "wikitext-2-tokenized/valid.txt#lines=50%:100%"
RESCALE_CHOICES = {"off": (0,), "on": (1,), "both": (0, 1)}
# a baseline's "+scales" calibration: the distillation-mixed loss (rescale_distill 0.5) of the `distill`
# variant, which the default `guided` shares (the variants differ in gate training only), so the
# baseline rows measured under either default stay valid
BASELINE_SCALES_VARIANT = "distill"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    p.add_argument("--methods", type=csv(), default=list(METHODS),
                   help=f"pruning methods among {', '.join(METHODS)} (the dense model is always measured)")
    p.add_argument("--keep-ratios", type=csv(float), default=[0.8, 0.7, 0.5])
    p.add_argument("--variants", type=csv(), default=["default", "paper"],
                   help=f"GRASPrune gate-training variants ('default' = {DEFAULT_VARIANT}; one of {', '.join(VARIANTS)})")
    p.add_argument("--rescale", choices=sorted(RESCALE_CHOICES), default="both",
                   help="baselines one-shot (off), with our scale calibration (on), or both")
    p.add_argument("--model", default=DENSE)
    p.add_argument("--calib-data", default=CALIB)
    p.add_argument("--rescale-data", default=RESCALE)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--block-len", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rescale-samples", type=int, default=64)
    p.add_argument("--seeds", "--seed", type=csv(int), default=[0],
                   help="seeds of every pruned entry (0,1,2 runs each entry three times, all keep ratios for "
                        "one seed before the next seed)")
    p.add_argument("--dtype", default="auto", help="training dtype (auto: bf16 where the CPU has bf16 matmul)")
    p.add_argument("--datasets", type=csv(), default=["wikitext2", "ptb"])
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--limit-windows", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/bench-quality"))
    p.add_argument("--keep-checkpoints", choices=("grasprune", "all", "none"), default="grasprune",
                   help="which exported checkpoints to keep for bench.speed (others are deleted after evaluation)")
    p.add_argument("--keep-checkpoints-at", type=csv(float), default=None,
                   help="keep checkpoints only at these keep ratios (default: every ratio)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    unknown += [v for v in args.variants if v != "default" and v not in VARIANTS]
    if unknown:
        p.error(f"unknown method or variant {', '.join(unknown)}: methods are {', '.join(METHODS)}; "
                f"variants 'default', {', '.join(VARIANTS)} (the dense model is always measured)")
    return args


def planned(args: argparse.Namespace) -> list[dict]:
    """The settings of every entry to have, dense first: each is the entry's identity in quality.json."""
    evaluation = {"datasets": args.datasets, "seqlen": args.seqlen, "windows": args.limit_windows}
    grid = [{"model": args.model, "method": "dense", **evaluation}]
    variants = [DEFAULT_VARIANT if v == "default" else v for v in args.variants]
    for seed in args.seeds:
        for keep in args.keep_ratios:
            for method in args.methods:
                for rescale in (1,) if method == "grasprune" else RESCALE_CHOICES[args.rescale]:
                    entry = {
                        "model": args.model, "method": method, "keep_ratio": keep, "rescale_epochs": rescale,
                        "calib_data": args.calib_data, "rescale_data": args.rescale_data,
                        "calib_samples": args.calib_samples, "block_len": args.block_len, "epochs": args.epochs,
                        "rescale_samples": args.rescale_samples, "seed": seed, "dtype": args.dtype,
                        **evaluation,
                    }
                    if method != "grasprune":  # the variant matters only to the scale calibration
                        grid.append({**entry, "variant": BASELINE_SCALES_VARIANT} if rescale else entry)
                        continue
                    grid += [{**entry, "variant": variant, **projection_identity(variant)}
                             for variant in dict.fromkeys(variants)]
    return grid


def projection_identity(variant: str) -> dict:
    """The projection rule in an entry's identity where it is not ours (spread ties, minimum inside the
    budget): ``paper``'s rows measured before it took the authors' rule stay apart from the new ones."""
    rule = {name: VARIANTS[variant][name] for name in ("tie_break", "layer_minimum")}
    return {} if rule == {"tie_break": "spread", "layer_minimum": "inside"} else rule


def label(settings: dict) -> str:
    """The entry's row name; seeds other than 0 are named (seed 0's rows keep their old names)."""
    if settings["method"] == "dense":
        return "dense"
    seed = f" seed {settings['seed']}" if settings.get("seed") else ""
    if settings["method"] == "grasprune":
        return f"grasprune ({settings['variant']}){seed}"
    return settings["method"] + (" +scales" if settings["rescale_epochs"] else " one-shot") + seed


def checkpoint_name(settings: dict) -> str:
    """The entry's checkpoint folder: unique per method, keep ratio, scales, variant and seed."""
    name = f"{settings['method']}-keep{settings['keep_ratio']}-rescale{settings['rescale_epochs']}"
    if settings["method"] == "grasprune":
        name += f"-{settings['variant']}"
    return name + (f"-seed{settings['seed']}" if settings["seed"] else "")


def keeps_checkpoint(settings: dict, args: argparse.Namespace) -> bool:
    if args.keep_checkpoints == "none" or (args.keep_checkpoints == "grasprune" and settings["method"] != "grasprune"):
        return False
    return args.keep_checkpoints_at is None or settings["keep_ratio"] in args.keep_checkpoints_at


def dense_entry(settings: dict) -> dict:
    started = time.perf_counter()
    model, tokenizer = load_model(settings["model"])
    metrics = {d: perplexity(model, tokenizer, d, settings["seqlen"], settings["windows"]).ppl
               for d in settings["datasets"]}
    total = count_parameters(model)
    return {"params": {"total_before": total, "total_after": total, "removed_pct_of_prunable": 0.0,
                       "removed_pct_of_total": 0.0},
            "metrics": metrics, "timing": {"eval_s": round(time.perf_counter() - started, 2)},
            "eval_dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "checkpoint": None}


def pruned_entry(settings: dict, args: argparse.Namespace) -> dict:
    config = PruneConfig(
        model=settings["model"], keep_ratio=settings["keep_ratio"], method=settings["method"],
        calib_data=settings["calib_data"], calib_samples=settings["calib_samples"],
        block_len=settings["block_len"], epochs=settings["epochs"], rescale_data=settings["rescale_data"],
        rescale_samples=settings["rescale_samples"], rescale_epochs=settings["rescale_epochs"],
        variant=settings.get("variant", DEFAULT_VARIANT),
        experimental=settings.get("variant") in EXPERIMENTAL_VARIANTS,  # the grid may compare those too
        seed=settings["seed"], device="cpu", dtype=settings["dtype"], eval_datasets=settings["datasets"],
        eval_seqlen=settings["seqlen"], eval_windows=settings["windows"],
        eval_dense=False,  # the grid's own dense entry measures it, timed on its own row
    )
    out = (args.runs_dir / "checkpoints" / checkpoint_name(settings)).resolve()
    run = unfinished_run(config, args.runs_dir.resolve(), out)
    resumed = run is not None
    run = run or create_run(config, root=args.runs_dir.resolve(), out=out)
    report = prune_run(run, overwrite=True)
    eval_dtype = json.loads((out / "config.json").read_text()).get("dtype")
    if not keeps_checkpoint(settings, args):
        shutil.rmtree(out)
        out = None
    return {"params": report["params"], "metrics": {d: m["ppl"] for d, m in (
                (k.removeprefix("ppl_"), v) for k, v in report["metrics"].items())},
            "timing": report["timing"], "train_dtype": report["calibration"]["dtype"], "eval_dtype": eval_dtype,
            "run": str(run.folder), "checkpoint": str(out) if out else None, "resumed": resumed}


def unfinished_run(config: PruneConfig, runs_dir: Path, out: Path) -> Run | None:
    """The interrupted run of this very entry, if the grid was stopped in the middle of one: it resumes
    from its last checkpoint (at most ``checkpoint_every`` steps lost) instead of starting over."""
    for run in list_runs(runs_dir):
        if (run.report() is None and run.status().get("status") != "running" and run.output_dir() == out
                and run.config().to_dict() == config.to_dict()):
            return run
    return None


def load_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"entries": []}


@contextmanager
def locked(json_path: Path) -> Iterator[None]:
    """Exclusive use of a results file: two bench.quality processes may fill one grid side by side
    (say, one variant each at one thread), and each re-reads the file under this lock before it adds
    an entry, so neither overwrites the other's."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with open(json_path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


Reports = Callable[[list[dict], Path], None]


def add_entry(json_path: Path, entry: dict, reports: Path | None = None, write: Reports | None = None) -> None:
    """Append ``entry`` to the results file as it is now on disk, and redraw the reports in ``reports``
    from all its entries (under the same lock, so the last report drawn holds every entry)."""
    with locked(json_path):
        results = load_results(json_path)
        results["entries"].append(entry)
        write_json_atomic(json_path, results)
        if reports is not None:
            (write or write_reports)(results["entries"], reports)


def done_settings(json_path: Path) -> list[dict]:
    with locked(json_path):
        return [entry["settings"] for entry in load_results(json_path)["entries"]]


def main(argv: list[str] | None = None, write: Reports | None = None) -> int:
    """Fill the grid; ``write`` draws the reports from the entries (default: quality.md and quality.png)."""
    args = parse_args(argv)
    write = write or write_reports
    set_threads(args.threads)
    keep_freed_memory()  # as `grasprune prune` does, so the stage times are the CLI's
    json_path = args.out / "quality.json"
    for settings in planned(args):
        if settings in done_settings(json_path):
            continue
        print(f"[bench.quality] {label(settings)} keep={settings.get('keep_ratio', 1.0)}", flush=True)
        started = time.perf_counter()
        entry = dense_entry(settings) if settings["method"] == "dense" else pruned_entry(settings, args)
        conditions = setting(settings["model"], entry["eval_dtype"], train_dtype=entry.get("train_dtype"))
        add_entry(json_path, {"settings": settings, "label": label(settings), **entry,
                              "wall_s": round(time.perf_counter() - started, 2), "setting": conditions}, args.out, write)
        print(f"[bench.quality]   {entry['metrics']} ({describe(conditions)})", flush=True)
    with locked(json_path):
        entries = load_results(json_path)["entries"]
        if entries:
            write(entries, args.out)
    return 0


def write_reports(entries: list[dict], out: Path) -> None:
    write_text_atomic(out / "quality.md", markdown(entries))
    plot(entries, out / "quality.png")


if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(main())
