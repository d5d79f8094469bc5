"""Zero-shot accuracy of the dense embedded model and pruned checkpoints on all seven full tasks.

    python -m bench.zeroshot --pruned runs/keep70/export runs/keep50/export [--limit N]

Writes ``bench/results/zeroshot.json`` (every model's ``evaluate_zeroshot`` result) and
``bench/results/zeroshot.md`` (one table: every task, both averages, the item counts).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from grasprune.cli.zeroshot import check_task_files
from grasprune.evaluation.zeroshot import evaluate_zeroshot
from grasprune.evaluation.zeroshot_tasks import ACC_NORM_TASKS, TASKS
from grasprune.method.models import load_model

RESULTS = Path(__file__).resolve().parent / "results"
DENSE = "smollm2-135m"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.zeroshot", description=__doc__.splitlines()[0])
    parser.add_argument("--pruned", nargs="*", default=[], metavar="DIR", help="pruned checkpoint folders")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N items per task (default: all, from GRASPRUNE_DATA or the Hugging Face Hub; "
                        "the first 200 ship with grasprune)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for zeroshot.json and zeroshot.md")
    return parser.parse_args(argv)


def markdown_table(results: dict[str, dict]) -> str:
    """Models as rows; each task's headline metric (acc_norm where lm-eval has it) in percent."""
    header = [f"{t} ({'acc_norm' if t in ACC_NORM_TASKS else 'acc'})" for t in TASKS]
    lines = [
        "| model | " + " | ".join(header) + " | avg5 | avg7 |",
        "|---" * (len(TASKS) + 3) + "|",
    ]
    for label, result in results.items():
        cells = []
        for task in TASKS:
            m = result["tasks"][task]
            cells.append(f"{100 * m.get('acc_norm', m['acc']):.2f}")
        averages = [f"{100 * result[k]:.2f}" for k in ("avg5", "avg7")]
        lines.append(f"| {label} | " + " | ".join(cells + averages) + " |")
    counts = next(iter(results.values()))["tasks"]
    lines.append("| items | " + " | ".join(str(counts[t]["n"]) for t in TASKS) + " | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_task_files(list(TASKS), args.limit)  # before any model loads: offline, only 200 items per task ship
    results, meta = {}, {}
    for spec in [DENSE, *args.pruned]:
        label = "dense" if spec == DENSE else spec
        model, tokenizer = load_model(spec, dtype=torch.float32, device=args.device)
        start = time.perf_counter()
        results[label] = evaluate_zeroshot(model, tokenizer, list(TASKS), args.limit, args.batch_size)
        meta[label] = {"model": spec, "seconds": round(time.perf_counter() - start, 1)}
        del model
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"limit": args.limit, "device": args.device, "models": meta, "results": results}
    (args.out / "zeroshot.json").write_text(json.dumps(payload, indent=2) + "\n")
    scope = "full sets" if args.limit is None else f"first {args.limit} items per task"
    note = (
        f"Zero-shot accuracy (%, 0-shot, lm-evaluation-harness conventions, {scope}). "
        "HellaSwag is the llama.cpp text format (see grasprune/zeroshot_tasks.py).\n\n"
    )
    (args.out / "zeroshot.md").write_text(note + markdown_table(results) + "\n")
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
