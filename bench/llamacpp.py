"""llama.cpp speed of pruned GGUFs: prefill and decode tokens/s, dense against pruned, against the ideal.

    python -m bench.llamacpp [--keep 0.8,0.7,0.5] [--types f16,q8_0] [--threads 2] [--repeats 7]
                             [--checkpoints DIR ...] [--work DIR] [--out bench/results/llamacpp-DATE]

The embedded SmolLM2-135M, pruned at each keep ratio, and the dense model are written as ``deci`` GGUFs
by grasprune's exporter (the dense one is the model sliced at a mask that keeps everything, so both go
through the same code path and the same llama.cpp graph). By default each pruned model is the one-shot
magnitude mask under the budget, projected as a real run projects it: speed depends on the widths kept,
not on which units; ``--checkpoints`` measures real prunes instead. All GGUFs are loaded in one process
(llama-cpp-python) and measured interleaved, the order rotating each repeat: prefill of a
``--prompt``-token WikiText-2 window, then ``--decode`` single-token steps after it, timed by llama.cpp's
own counters (``llama_perf_context``: the time inside ``llama_decode``). Medians over ``--repeats``.

The ideal speed-up is what the arithmetic allows. Decode reads every weight once per token (the output
projection included: tied embeddings are read in full as the output matrix) and the KV cache up to the
context: ideal = dense bytes / pruned bytes, from the GGUF files' own tensor sizes. Prefill computes
logits for the last token only: ideal = dense / pruned multiply-adds per token (the layers' matrices and
attention over the average causal context). % of ideal = measured speed-up / ideal speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gguf
import torch

from bench.common import DENSE, RESULTS, cpu_name, csv, describe
from grasprune.atomic import write_json_atomic, write_text_atomic
from grasprune.serving.gguf_export import export_gguf

KV_BYTES = 2  # llama.cpp's default f16 KV cache


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", type=csv(float), default=[0.8, 0.7, 0.5], help="keep ratios (magnitude masks)")
    p.add_argument("--align", type=int, default=1,
                   help="project the masks with FFN widths in multiples of N (prune's --align); 1 = off")
    p.add_argument("--checkpoints", nargs="*", type=Path, default=None, metavar="DIR",
                   help="real pruned checkpoints to measure instead of magnitude masks")
    p.add_argument("--types", type=csv(), default=["f16", "q8_0"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--prompt", type=int, default=128, help="prefill tokens")
    p.add_argument("--decode", type=int, default=64, help="decoded tokens after the prompt")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for checkpoints and GGUFs, reused by the next run (default: a temp dir)")
    p.add_argument("--out", type=Path, default=RESULTS / f"llamacpp-{time.strftime('%Y-%m-%d', time.gmtime())}")
    return p.parse_args(argv)


def sliced_checkpoints(keeps: list[float], work: Path, align: int = 1) -> dict[str, Path]:
    """The dense model and a magnitude-mask prune per keep ratio, saved as checkpoints (keep 1.0 = dense);
    ``align`` N > 1 projects FFN widths in multiples of N."""
    from grasprune.method.adapters import ModelAdapter
    from grasprune.method.baselines import magnitude_scores
    from grasprune.method.export import save_pruned
    from grasprune.method.models import load_model
    from grasprune.method.units import layout_of, project
    from grasprune.runs.pipeline import layer_report, parameter_report

    model, tokenizer = load_model(DENSE, dtype=torch.float32)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    scores = magnitude_scores(adapter, layout)
    total = sum(p.numel() for p in model.parameters())
    folders = {}
    for keep in [1.0, *keeps]:
        aligned = align > 1 and keep < 1.0
        mask = project(scores, layout, layout.budget(keep), **({"align": align} if aligned else {}))
        report = {"base_model": DENSE, "keep_ratio": keep, "params": parameter_report(layout, mask, total),
                  "layers": layer_report(layout, mask), "mask": "magnitude (one-shot)"}
        folder = work / (f"keep{keep:g}-align{align}" if aligned else f"keep{keep:g}")
        if not folder.exists():
            save_pruned(folder, adapter, layout, mask, torch.ones(layout.num_units), tokenizer, report)
        folders["dense" if keep == 1.0 else f"keep {keep:g}" + (f" (align {align})" if aligned else "")] = folder
    return folders


def gguf_cost(path: Path, context: float) -> dict:
    """Bytes read and multiply-adds per token of a GGUF (see the module docstring)."""
    reader = gguf.GGUFReader(path)
    meta = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer")}
    tensors = {t.name: t for t in reader.tensors}
    head_dim = meta["deci.attention.key_length"]
    kv_heads, q_heads = meta["deci.attention.head_count_kv"], meta["deci.attention.head_count"]
    output = tensors.get("output.weight", tensors["token_embd.weight"])
    layers = [t for name, t in tensors.items() if name.startswith("blk.") or name == "output_norm.weight"]
    weight_bytes = sum(int(t.n_bytes) for t in layers) + int(output.n_bytes)
    kv_bytes = sum(2 * kv * head_dim * KV_BYTES * context for kv in kv_heads)
    matrix_macs = sum(int(t.n_elements) for t in layers if len(t.shape) == 2)
    attention_macs = sum(2 * q * head_dim * context / 2 for q in q_heads)  # QK^T and AV, causal average
    return {"decode_bytes": weight_bytes + kv_bytes, "weight_bytes": weight_bytes, "kv_bytes": kv_bytes,
            "prefill_macs": matrix_macs + attention_macs, "file_bytes": path.stat().st_size}


def measure(paths: dict[str, Path], tokens: list[int], args) -> dict[str, dict]:
    """Median prefill and decode tokens/s of every GGUF, measured interleaved in one process."""
    import llama_cpp

    models = {name: llama_cpp.Llama(str(path), n_ctx=args.prompt + args.decode, n_batch=args.prompt,
                                    n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
              for name, path in paths.items()}
    prompt, steps = tokens[: args.prompt], tokens[args.prompt: args.prompt + args.decode]
    times = {name: {"prefill": [], "decode": []} for name in models}
    names = list(models)
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:
            llm = models[name]
            llm.reset()
            llama_cpp.llama_perf_context_reset(llm.ctx)
            llm.eval(prompt)
            llama_cpp.llama_synchronize(llm.ctx)  # llama.cpp books a step's time when it synchronizes,
            for token in steps:                   # as reading its logits would
                llm.eval([token])
                llama_cpp.llama_synchronize(llm.ctx)
            perf = llama_cpp.llama_perf_context(llm.ctx)
            if repeat:
                times[name]["prefill"].append(perf.n_p_eval / perf.t_p_eval_ms * 1000)
                times[name]["decode"].append(perf.n_eval / perf.t_eval_ms * 1000)
        print(f"repeat {repeat}/{args.repeats} done", file=sys.stderr)
    return {name: {kind: statistics.median(values) for kind, values in kinds.items()} | {"samples": kinds}
            for name, kinds in times.items()}


def table(rows: list[dict], conditions: dict) -> str:
    lines = [f"# llama.cpp speed of pruned SmolLM2-135M GGUFs\n\n{describe(conditions)}\n",
             ("| type | model | file MB | prefill tok/s | decode tok/s | prefill speed-up (ideal, % of ideal) "
              "| decode speed-up (ideal, % of ideal) |"),
             "|---|---|---:|---:|---:|---|---|"]
    for row in rows:
        speed = (f"{row['prefill_speedup']:.2f}× ({row['prefill_ideal']:.2f}×, {row['prefill_pct']:.0f}%) | "
                 f"{row['decode_speedup']:.2f}× ({row['decode_ideal']:.2f}×, {row['decode_pct']:.0f}%)"
                 if row["model"] != "dense" else "1.00× | 1.00×")
        lines.append(f"| {row['type']} | {row['model']} | {row['file_bytes'] / 1e6:.1f} | {row['prefill']:.0f} | "
                     f"{row['decode']:.1f} | {speed} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import llama_cpp

    from grasprune.evaluation.perplexity import evaluation_tokens

    with tempfile.TemporaryDirectory(prefix="llamacpp-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        checkpoints = sliced_checkpoints(args.keep, work, args.align)
        if args.checkpoints:
            checkpoints = {"dense": checkpoints["dense"]} | {
                f"keep {json.loads((c / 'grasprune.json').read_text())['keep_ratio']:g} (run)": c
                for c in args.checkpoints}
        from grasprune.method.export import load_pruned

        _, tokenizer = load_pruned(checkpoints["dense"])
        tokens = evaluation_tokens("wikitext2", tokenizer)[: args.prompt + args.decode].tolist()
        paths = {}
        for gguf_type in args.types:
            for name, folder in checkpoints.items():
                out = work / f"gguf-{gguf_type}-{folder.name}"
                if not out.is_dir():  # a --work folder keeps its GGUFs for the next run
                    export_gguf(folder, out, gguf_type)
                paths[(gguf_type, name)] = next(out.glob("*.gguf"))
        speeds = measure({f"{t}/{n}": p for (t, n), p in paths.items()}, tokens, args)
        rows = []
        for (gguf_type, name), path in paths.items():
            decode_cost = gguf_cost(path, args.prompt + args.decode / 2)
            prefill_cost = gguf_cost(path, args.prompt)
            rows.append({"type": gguf_type, "model": name, **speeds[f"{gguf_type}/{name}"],
                         "file_bytes": decode_cost["file_bytes"], "decode_bytes": decode_cost["decode_bytes"],
                         "kv_bytes": decode_cost["kv_bytes"], "prefill_macs": prefill_cost["prefill_macs"]})
    for row in rows:
        dense = next(r for r in rows if r["type"] == row["type"] and r["model"] == "dense")
        for kind, cost in (("prefill", "prefill_macs"), ("decode", "decode_bytes")):
            row[f"{kind}_speedup"] = row[kind] / dense[kind]
            row[f"{kind}_ideal"] = dense[cost] / row[cost]
            row[f"{kind}_pct"] = 100 * row[f"{kind}_speedup"] / row[f"{kind}_ideal"]
    masks = "real runs" if args.checkpoints else "one-shot magnitude, projected" + (
        f" with FFN widths in multiples of {args.align}" if args.align > 1 else "")
    conditions = {"model": DENSE, "masks": masks,
                  "threads": args.threads, "prompt": args.prompt, "decoded": args.decode, "repeats": args.repeats,
                  "cpu": cpu_name(), "cpus": os.cpu_count(), "llama-cpp-python": llama_cpp.__version__,
                  "date": time.strftime("%Y-%m-%d", time.gmtime())}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (f"llamacpp-{args.threads}-thread{'s' if args.threads > 1 else ''}"
                        + (f"-align{args.align}" if args.align > 1 else ""))
    write_json_atomic(stem.with_suffix(".json"), {"conditions": conditions, "rows": rows})
    write_text_atomic(stem.with_suffix(".md"), table(rows, conditions))
    print(table(rows, conditions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
