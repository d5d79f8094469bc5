"""The ``grasprune`` command line: argument parsing and calls into the library, nothing more."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import threading
from pathlib import Path

from grasprune.cli import cache as cli_cache
from grasprune.cli import evaluate as cli_evaluate
from grasprune.cli import heal as cli_heal
from grasprune.cli import zeroshot as cli_zeroshot
from grasprune.cli.options import add_config_options, config_overrides, number
from grasprune.cli.signals import stop_on_signals
from grasprune.config import CPU_DEFAULTS, GPU_DEFAULTS, PruneConfig
from grasprune.errors import UserError
from grasprune.formatting import megabytes
from grasprune.scaleout.allocator import keep_freed_memory
from grasprune.serving.formats import DEFAULT_GGUF_TYPE, DEFAULT_PRECISION, GGUF_TYPES, PRECISION_NAMES

EXPORT_FORMATS = ("safetensors", "gguf")


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit code 2, like every other bad input (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def add_prune_parser(sub) -> None:
    p = sub.add_parser("prune", help="prune a model under a global parameter budget")
    ratio = {"keep_ratio": [("--ratio", {"type": number(float), "dest": "ratio", "default": None,
                                        "help": "fraction of prunable parameters removed (1 - keep ratio)"})]}
    add_config_options(p, ratio)
    run = p.add_argument_group("run")
    run.add_argument("--config", help="JSON file of settings (flags override it)")
    run.add_argument("--out", help="checkpoint folder (default: <run folder>/checkpoint)")
    run.add_argument("--runs-dir", help="where run folders go (default $GRASPRUNE_RUNS or ./runs)")
    run.add_argument("--resume", metavar="RUN", help="resume a run folder or run id from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def config_from_args(args) -> PruneConfig:
    config = PruneConfig.load(args.config) if args.config else PruneConfig()
    overrides = config_overrides(args)
    if args.ratio is not None:
        overrides["keep_ratio"] = round(1.0 - args.ratio, 10)
    return dataclasses.replace(config, **overrides)


def run_prune(args) -> int:
    from grasprune.runs.ranks import follow_rank0, share_run
    from grasprune.runs.store import create_run, open_run
    from grasprune.scaleout.distributed import join_process_group

    if not join_process_group().is_main:  # under torchrun: ranks 1.. follow rank 0's run
        from grasprune.runs.pipeline import prune_run

        return follow_rank0(prune_run, stop_on_signals)
    if args.resume:
        run = open_run(args.resume, Path(args.runs_dir).resolve() if args.runs_dir else None)
        config = run.config()
    else:
        from grasprune.runs.inputs import check_inputs

        config = config_from_args(args)
        out = Path(args.out).resolve() if args.out else None
        config_defaults_note(check_inputs(config, out, args.overwrite))
        run = create_run(config, Path(args.runs_dir).resolve() if args.runs_dir else None, out)
    share_run(run)
    print(f"run folder: {run.folder}", file=sys.stderr)
    stop = threading.Event()
    stop_on_signals(stop)
    from grasprune.runs.pipeline import prune_run  # transformers and the engine: only once the input is valid
    from grasprune.runs.progress import follow_events

    with follow_events(run):
        report = prune_run(run, stop=stop, overwrite=args.overwrite or bool(args.resume))
    print_summary(report, run)
    return 0


def config_defaults_note(config: PruneConfig) -> None:
    kind = "GPU (paper settings)" if config.device.startswith("cuda") else "CPU-sized"
    defaults = GPU_DEFAULTS if config.device.startswith("cuda") else CPU_DEFAULTS
    shown = ", ".join(f"{k}={getattr(config, k)}" for k in defaults)
    print(f"settings ({kind} defaults where not given): {shown}, device={config.device}, dtype={config.dtype}",
          file=sys.stderr)


def print_summary(report: dict, run) -> None:
    from grasprune.evaluation.dense_reference import perplexity_line, quality_warning

    params = report["params"]
    print(f"kept {params['prunable_after']:,} of {params['prunable_before']:,} prunable parameters: "
          f"removed {params['removed_pct_of_prunable']:.2f}% of prunable, "
          f"{params['removed_pct_of_total']:.2f}% of all parameters "
          f"({params['total_before']:,} -> {params['total_after']:,})")
    over = params["prunable_after"] - report.get("budget", params["prunable_after"])
    if over > 0:
        print(f"note: {over:,} parameters over the budget of {report['budget']:,}: --layer-minimum after (the "
              "authors' rule, used by --variant paper) adds each layer's minimum after the budget")
    for metric in report["metrics"].values():
        print(perplexity_line(metric))
    warning = quality_warning(report)
    if warning:
        print(f"warning: {warning}")
    print("timing: " + ", ".join(f"{k} {v:.1f}s" for k, v in report["timing"].items()))
    print(f"checkpoint: {run.output_dir()}")


def add_ppl_parser(sub) -> None:
    p = sub.add_parser("ppl", help="perplexity (non-overlapping windows, as the pruning papers measure it)")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default="wikitext2", help="wikitext2 (test split), ptb (test) or a file")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--max-windows", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--allow-pickle", action="store_true")


def run_ppl(args) -> int:
    from tqdm import tqdm

    from grasprune.config import resolve_device, torch_dtype
    from grasprune.evaluation.perplexity import perplexity
    from grasprune.method.models import load_model

    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, dtype=torch_dtype(args.dtype), device=device,
                                  trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    bar = tqdm(desc=f"ppl {args.dataset}", unit="window", disable=None, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    result = perplexity(model, tokenizer, args.dataset, args.seqlen, args.max_windows, progress)
    bar.close()
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"{args.dataset} perplexity {result.ppl:.3f} (seqlen {result.seqlen}, {result.windows} windows, "
              f"{result.tokens} tokens scored)")
    return 0


def add_inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="per-layer table of what a pruned checkpoint kept")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")


def run_inspect(args) -> int:
    path = Path(args.dir).expanduser().resolve() / "grasprune.json"
    if not path.is_file():
        raise UserError(f"{args.dir} is not a GRASPrune checkpoint (no grasprune.json)")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is corrupt ({err.msg}): export the checkpoint again") from err
    if args.json:
        print(json.dumps({"params": report["params"], "layers": report["layers"]}))
        return 0
    print(f"{'layer':>5} {'ffn kept':>12} {'kv groups':>10} {'q heads':>8}")
    for layer in report["layers"]:
        print(f"{layer['layer']:>5} {layer['ffn_channels']:>6}/{layer['ffn_channels_before']:<5} "
              f"{layer['kv_groups']:>5}/{layer['kv_groups_before']:<4} {layer['q_heads']:>8}")
    params = report["params"]
    print(f"params {params['total_before']:,} -> {params['total_after']:,}: removed "
          f"{params['removed_pct_of_prunable']:.2f}% of prunable, {params['removed_pct_of_total']:.2f}% of all")
    return 0


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a pruned checkpoint as a new folder in another precision or as GGUF")
    p.add_argument("dir", metavar="CHECKPOINT_DIR", help="a pruned checkpoint folder (with grasprune.json)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default=EXPORT_FORMATS[0],
                   help="safetensors (default: a transformers folder) or gguf (a llama.cpp/Ollama file and an "
                        "Ollama Modelfile, in the --out folder)")
    p.add_argument("--dtype", choices=PRECISION_NAMES,
                   help=f"safetensors: precision of the floating weights (default {DEFAULT_PRECISION}; fp32 = "
                        "full precision)")
    p.add_argument("--type", dest="gguf_type", choices=GGUF_TYPES,
                   help=f"gguf: tensor type (default {DEFAULT_GGUF_TYPE}; q4_k_m is quantized by llama.cpp, "
                        "which llama-cpp-python provides)")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run_export(args) -> int:
    from grasprune.method.models import weights_size
    from grasprune.serving.convert import checkpoint_precision, convert_checkpoint, folder_size

    if args.format == "gguf":
        return run_export_gguf(args)
    if args.gguf_type is not None:
        raise UserError("--type is for --format gguf: pass --dtype for a safetensors export")
    args.dtype = args.dtype or DEFAULT_PRECISION
    out = convert_checkpoint(Path(args.dir), Path(args.out), args.dtype, overwrite=args.overwrite)
    source = Path(args.dir).expanduser().resolve()
    base = json.loads((out / "grasprune.json").read_text()).get("base_model")
    original = weights_size(base) if base else None
    print(f"wrote {out} ({args.dtype}): {megabytes(folder_size(out))}; the checkpoint {megabytes(folder_size(source))} "
          f"({checkpoint_precision(source)}); the original model {megabytes(original)} ({base})")
    return 0


def run_export_gguf(args) -> int:
    from grasprune.serving.convert import folder_size
    from grasprune.serving.gguf_export import export_gguf

    if args.dtype is not None:
        raise UserError("--dtype is for --format safetensors: pass --type (f16, bf16, q8_0, q4_k_m, f32) for GGUF")
    result = export_gguf(Path(args.dir), Path(args.out), args.gguf_type or DEFAULT_GGUF_TYPE, overwrite=args.overwrite)
    source = Path(args.dir).expanduser().resolve()
    types = ", ".join(f"{count} {name}" for name, count in sorted(result.tensor_types.items()))
    print(f"wrote {result.gguf_file} ({result.gguf_type}: {megabytes(result.size)}, tensors {types}) and "
          f"{result.modelfile.name}; the checkpoint {megabytes(folder_size(source))}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"run it: llama-cli -m {shlex.quote(str(result.gguf_file))} -p 'Hello'  |  Ollama: cd "
          f"{shlex.quote(str(result.folder))} && ollama create NAME -f Modelfile")
    return 0


COMMANDS = {"prune": run_prune, "ppl": run_ppl, "inspect": run_inspect, "export": run_export, "heal": cli_heal.run,
            "evaluate": cli_evaluate.run, "cache": cli_cache.run, "zeroshot": cli_zeroshot.run}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="grasprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_prune_parser(sub)
    add_ppl_parser(sub)
    add_inspect_parser(sub)
    add_export_parser(sub)
    cli_heal.register(sub)
    cli_evaluate.register(sub)
    cli_cache.register(sub)
    cli_zeroshot.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()  # a CLI process ends when its command does: see allocator.py
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        from grasprune.errors import Stopped

        if isinstance(err, Stopped):
            print(f"{err}: resume with `grasprune prune --resume <run>`", file=sys.stderr)
            return 3
        print(f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 1
