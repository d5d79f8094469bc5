"""``grasprune evaluate``: a completed run's dense model, pruned checkpoint and healed checkpoints measured side by
side; each result is stored in the run's evaluations.json (the studio's Evaluate page runs this as a job)."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from grasprune.cli.heal import event_log
from grasprune.cli.options import comma_list, number
from grasprune.cli.signals import stop_on_signals
from grasprune.errors import UserError
from grasprune.evaluation.generation import Sampling
from grasprune.events import no_events


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="dense vs pruned (vs healed) perplexity, zero-shot accuracy and "
                              "generation of a completed run, stored in its evaluations.json")
    p.add_argument("run", metavar="RUN", help="a run id (in --runs-dir) or a run folder")
    p.add_argument("--runs-dir", default=None, help="the runs folder (default $GRASPRUNE_RUNS or ./runs)")
    p.add_argument("--healed", action="append", default=[], metavar="KEY=FOLDER",
                   help="a healed checkpoint to compare too, stored under KEY (repeatable)")
    p.add_argument("--ppl", type=comma_list, default=[], metavar="DATASETS", help="perplexity datasets, comma-separated")
    p.add_argument("--seqlen", type=number(int), default=512, help="tokens per perplexity window (default 512)")
    p.add_argument("--windows", type=number(int), default=64, help="perplexity windows per dataset (default 64)")
    p.add_argument("--zeroshot", type=comma_list, default=[], metavar="TASKS", help="zero-shot tasks, comma-separated")
    p.add_argument("--limit", type=number(int), default=200, help="zero-shot items per task (default 200)")
    p.add_argument("--generate", default=None, metavar="PROMPT", help="a prompt each model continues (greedy unless --temperature is above 0)")
    p.add_argument("--new-tokens", type=number(int), default=48, help="tokens to generate (default 48)")
    defaults = Sampling()
    p.add_argument("--temperature", type=number(float), default=defaults.temperature,
                   help="0: greedy (default); above 0: sampled, seeded by --seed")
    p.add_argument("--top-p", type=number(float), default=defaults.top_p, help="nucleus sampling (default 1)")
    p.add_argument("--repetition-penalty", type=number(float), default=defaults.repetition_penalty,
                   help=f"1: off (default {defaults.repetition_penalty:g}: small models loop without it)")
    p.add_argument("--no-repeat-ngram", type=number(int), default=defaults.no_repeat_ngram,
                   help=f"never repeat an n-gram of this size (0: off; default {defaults.no_repeat_ngram})")
    p.add_argument("--seed", type=number(int), default=defaults.seed, help="sampling seed (default 0)")
    p.add_argument("--events", metavar="FILE", help="append the progress to FILE as JSON lines (what the studio reads)")
    return p


def request_of(args: argparse.Namespace):
    from grasprune.evaluation.zeroshot_tasks import check_task_names
    from grasprune.runs.run_evaluation import Request

    if args.zeroshot:
        check_task_names(args.zeroshot)
    sampling = Sampling(args.temperature, args.top_p, args.repetition_penalty, args.no_repeat_ngram, args.seed)
    request = Request(tuple(args.ppl), args.seqlen, args.windows, tuple(args.zeroshot), args.limit,
                      args.generate or None, args.new_tokens, sampling)
    request.check()
    return request


def healed_of(pairs: list[str]) -> dict[str, Path]:
    found = {}
    for pair in pairs:
        key, sep, folder = pair.partition("=")
        if not sep or not key.strip() or not folder.strip():
            raise UserError(f"--healed {pair!r}: write KEY=FOLDER (e.g. healed-20261208-010203-a1b2c3=runs/healed)")
        path = Path(folder).expanduser().resolve()
        if not (path / "grasprune.json").is_file():
            raise UserError(f"--healed {folder} is not a GRASPrune checkpoint (no grasprune.json)")
        found[key.strip()] = path
    return found


def run(args: argparse.Namespace) -> int:
    from grasprune.errors import Stopped
    from grasprune.runs.run_evaluation import compared_models, evaluate_run
    from grasprune.runs.store import open_run

    request = request_of(args)
    healed = healed_of(args.healed)
    run_ = open_run(args.run, Path(args.runs_dir).resolve() if args.runs_dir else None)
    if run_.status().get("status") != "completed":
        raise UserError(f"run {run_.id} has not completed: evaluate a completed run")
    log = event_log(args.events)
    emit = log.emit if log is not None else no_events
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        computed = evaluate_run(run_, compared_models(run_, healed), request, emit, stop)
    except Stopped as err:
        emit("stopped", message=str(err))
        print(f"{err}: the finished results are stored; run the same command again for the rest", file=sys.stderr)
        return 3
    except Exception as err:
        emit("error", message=str(err).splitlines()[0] if str(err) else type(err).__name__, kind=type(err).__name__)
        raise
    print(f"{computed} result{'s' * (computed != 1)} computed, stored in {run_.folder / 'evaluations.json'}")
    return 0
