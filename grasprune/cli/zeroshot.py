"""``grasprune zeroshot``: lm-eval-style zero-shot accuracy of one model."""

from __future__ import annotations

import argparse
import json

from grasprune.errors import UserError
from grasprune.evaluation.zeroshot_tasks import TASKS, check_task_names, load_task


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "zeroshot",
        help="zero-shot accuracy as lm-evaluation-harness scores it",
        description="Zero-shot accuracy (0-shot, lm-evaluation-harness conventions) on local task files.",
    )
    parser.add_argument("--model", required=True, help="smollm2-135m, a hub id, a folder or a .gguf file")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {','.join(TASKS)}")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="score only the first N items of each task (default: all, which needs GRASPRUNE_DATA or the "
        "Hugging Face Hub: only the first 200 ship with grasprune)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="requests per forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--source", choices=("local", "hf"), default="local", help="local files or HF datasets"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def parse_tasks(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserError(f"no task given: pass --tasks with some of {','.join(TASKS)}")
    check_task_names(names)
    return list(dict.fromkeys(names))


def check_task_files(tasks: list[str], limit: int | None = None) -> None:
    """Read every task's first ``limit`` items before the model loads, so a malformed file or a set
    that is not at hand fails fast, as a user error."""
    for name in tasks:
        try:
            load_task(name, limit)
        except ValueError as exc:  # the message names the file and line
            raise UserError(str(exc)) from None


def format_table(result: dict) -> str:
    """Per-task acc / acc_norm / items, then the two averages (in percent)."""
    lines = [f"{'task':<15}{'acc':>8}{'acc_norm':>10}{'items':>8}"]
    for name, m in result["tasks"].items():
        norm = f"{100 * m['acc_norm']:.2f}" if "acc_norm" in m else "-"
        lines.append(f"{name:<15}{100 * m['acc']:>8.2f}{norm:>10}{m['n']:>8}")
    for key, label in (("avg5", "avg5 (first five, acc_norm where it exists)"), ("avg7", "avg7 (all seven)")):
        value = result[key]
        lines.append(f"{label}: {'-' if value is None else f'{100 * value:.2f}'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    tasks = parse_tasks(args.tasks)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.source == "local":
        check_task_files(tasks, args.limit)
    import torch

    from grasprune.evaluation.zeroshot import evaluate_zeroshot
    from grasprune.method.models import load_model

    model, tokenizer = load_model(args.model, dtype=torch.float32, device=args.device)
    result = evaluate_zeroshot(
        model,
        tokenizer,
        tasks,
        limit=args.limit,
        batch_size=args.batch_size,
        progress=True,
        source=args.source,
    )
    print(json.dumps(result) if args.json else format_table(result))
    return 0
