"""The studies of issue 20: how GRASPrune behaves beyond one keep ratio, one calibration set and one context.

    python -m bench.study keep        [--seeds 0,1,2] [--keep-ratios 0.9,0.8,...,0.2] [--threads N]
    python -m bench.study calibration [--seeds 0,1,2] [--samples 16,64,256] [--domains wikitext2,c4]
    python -m bench.study kvcache     [--contexts 512,2048,8192] [--checkpoints DIR ...]
    python -m bench.study report

``keep`` and ``calibration`` are grids of ``bench.quality`` (the same protocol and code: one real
``prune_run`` per entry, resumable, entries already measured skipped), each in its own results folder;
``kvcache`` is ``bench.kvcache``; ``report`` redraws every study's ``summary.json``, ``study.md`` and
plot from the entries (``bench.study_report``). Every GRASPrune point is measured once per seed:
single runs move by several points from the projection's rounding alone, so the reports give the
mean and the spread (min-max) over seeds.

The keep sweep runs all keep ratios for seed 0 (GRASPrune and the two best baselines of
``bench/results/quality.md``, taylor and wanda-sp with our scale calibration), then seeds 1 and 2 for
GRASPrune, so a stopped sweep leaves whole curves behind. The calibration study prunes at keep 0.5 with
16, 64 or 256 gate-training blocks from WikiText-2 (validation, first half; scales on the second half)
or from C4 (the 2,000-document sample, rows 50-75%; scales on rows 75-100%), and evaluates every
checkpoint on both WikiText-2 test and C4 (its first 64 windows come from the sample's first rows, which
no calibration touches). The package bundles 256 of those documents, too few for 256 C4 blocks: point
``$GRASPRUNE_DATA`` at a folder whose ``c4-sample/`` holds the whole sample (``grasprune.data``), or run
``--domains wikitext2`` (or ``--samples 16,64``); a domain with too little text stops with a one-line error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import quality, study_report
from .common import RESULTS, csv

KEEP_RATIOS = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
BASELINES = ["taylor", "wanda-sp"]
CALIBRATION = {  # domain: (gate-training data, scale-calibration data)
    "wikitext2": (quality.CALIB, quality.RESCALE),
    "c4": ("c4#lines=50%:75%", "c4#lines=75%:100%"),
}
FOLDERS = {"keep": RESULTS / "study-keep", "calibration": RESULTS / "study-calibration"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.study", description=__doc__.splitlines()[0])
    p.add_argument("study", choices=("keep", "calibration", "kvcache", "report"))
    p.add_argument("--seeds", type=csv(int), default=[0, 1, 2])
    p.add_argument("--keep-ratios", type=csv(float), default=KEEP_RATIOS)
    p.add_argument("--baselines", type=csv(), default=BASELINES)
    p.add_argument("--samples", type=csv(int), default=[16, 64, 256])
    p.add_argument("--domains", type=csv(), default=list(CALIBRATION))
    p.add_argument("--model", default=None, help="model to prune (default: the embedded SmolLM2-135M)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results/study-<name>)")
    p.add_argument("--runs-dir", type=Path, default=None, help="runs folder (default: runs/bench-study-<name>)")
    args, rest = p.parse_known_args(argv)
    unknown = [d for d in args.domains if d not in CALIBRATION]
    if unknown:
        p.error(f"unknown calibration domain {', '.join(unknown)}: pass {' or '.join(CALIBRATION)}")
    args.extra = rest  # passed on to bench.quality / bench.kvcache as they are (e.g. --limit-windows 8)
    return args


def common(args: argparse.Namespace, name: str) -> list[str]:
    out = args.out or FOLDERS[name]
    runs = args.runs_dir or Path(f"runs/bench-study-{name}")
    argv = ["--variants", "default", "--rescale", "on", "--out", str(out), "--runs-dir", str(runs)]
    argv += ["--model", args.model] if args.model else []
    argv += ["--threads", str(args.threads)] if args.threads else []
    return argv + args.extra


def keep_sweep(args: argparse.Namespace) -> None:
    """Seed 0 for GRASPrune and the baselines, then the other seeds for GRASPrune; the keep-0.5
    checkpoints stay for the KV-cache study."""
    ratios = ",".join(map(str, args.keep_ratios))
    argv = common(args, "keep") + ["--keep-ratios", ratios, "--datasets", "wikitext2",
                                   "--keep-checkpoints", "grasprune", "--keep-checkpoints-at", "0.5"]
    write = study_report.writer("keep")
    first, rest = args.seeds[:1], args.seeds[1:]
    quality.main([*argv, "--methods", ",".join(["grasprune", *args.baselines]), "--seeds", _ints(first)], write)
    if rest:
        quality.main([*argv, "--methods", "grasprune", "--seeds", _ints(rest)], write)


def calibration_study(args: argparse.Namespace) -> None:
    """Seed by seed, each domain at each sample count, all at keep 0.5, evaluated on both domains."""
    write = study_report.writer("calibration")
    for seed in args.seeds:
        for domain in args.domains:
            calib, rescale = CALIBRATION[domain]
            for samples in args.samples:
                quality.main(common(args, "calibration") + [
                    "--methods", "grasprune", "--keep-ratios", "0.5", "--seeds", str(seed),
                    "--calib-data", calib, "--rescale-data", rescale, "--calib-samples", str(samples),
                    "--datasets", "wikitext2,c4", "--keep-checkpoints", "none"], write)


def _ints(values: list[int]) -> str:
    return ",".join(map(str, values))


def write_all(results: Path) -> None:
    """Redraw every study found under ``results`` from its entries (here, not in study_report: the KV
    study's report reads study_report, so study_report calling it back would be an import cycle)."""
    from . import kvcache

    for study in ("keep", "calibration"):
        path = results / study_report.FOLDER[study] / "quality.json"
        if path.is_file():
            entries = json.loads(path.read_text())["entries"]
            if entries:
                study_report.write_study(study, entries, path.parent)
    kv = results / study_report.FOLDER["kvcache"] / "kvcache.json"
    if kv.is_file():
        kvcache.write_reports(json.loads(kv.read_text()), kv.parent)


def main(argv: list[str] | None = None) -> int:
    return run_study(parse_args(argv))


def run_study(args: argparse.Namespace) -> int:
    if args.study == "keep":
        keep_sweep(args)
    elif args.study == "calibration":
        calibration_study(args)
    elif args.study == "kvcache":
        from . import kvcache

        passed = ["--threads", str(args.threads)] if args.threads else []
        passed += ["--model", args.model] if args.model else []
        return kvcache.main(args.extra + passed + (["--out", str(args.out)] if args.out else []))
    else:
        write_all(args.out or RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
