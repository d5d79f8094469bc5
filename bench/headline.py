"""The README's results table: a few headline numbers, each computed from a result file under
bench/results and linked to it. ``python -m bench.report`` writes it between the README's markers and
``--check`` fails when it is stale, as for docs/results.md. Standard library only.

A row whose file is absent is left out: the table never shows a number that no file holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

START, END = "<!-- bench.report: headline start -->", "<!-- bench.report: headline end -->"
SEEDED = "grasprune (guided)"


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _study(results: Path, name: str) -> tuple[Path, dict | None]:
    """A study's summary.json (``bench.study report`` writes it) and its contents, None if absent."""
    path = results / f"study-{name}" / "summary.json"
    return path, _load(path)


def _link(path: Path, results: Path) -> str:
    inside = path.relative_to(results).as_posix()
    return f"[`{inside}`](bench/results/{inside})"


def _ppl(value: float) -> str:
    return f"{value:,.2f}"


def _seeded(point: dict) -> str:
    """A GRASPrune point: the mean, and over several seeds the lowest and highest."""
    ppl = point["metrics"]["wikitext2"]
    if ppl["n"] < 2:
        return f"{_ppl(ppl['mean'])} (1 seed)"
    return f"{_ppl(ppl['mean'])} ({_ppl(ppl['min'])}–{_ppl(ppl['max'])}, {ppl['n']} seeds)"


def keep_rows(results: Path) -> list[list[str]]:
    """WikiText-2 perplexity at keep 0.7 and 0.5: dense, GRASPrune, the best baseline. GRASPrune's figure is
    the robustness bench's (today's defaults over seeds and thread counts) where it has the ratio, else the
    keep study's over its seeds."""
    path, summary = _study(results, "keep")
    if summary is None:
        return []
    robust_path = results / ROBUSTNESS
    robust = {row["keep_ratio"]: row for row in _load(robust_path) or [] if row["tag"] == "default"}
    rows = []
    for keep in (0.7, 0.5):
        at = [p for p in summary["points"] if p["x"] == keep and "wikitext2" in p["metrics"]]
        ours = [p for p in at if p["group"] == SEEDED]
        others = [p for p in at if p["group"] != SEEDED]
        if not ours or not others:
            continue
        best = min(others, key=lambda p: p["metrics"]["wikitext2"]["mean"])
        figure = _spread(robust[keep]) if keep in robust else _seeded(ours[0])
        cell = (f"dense {_ppl(summary['dense']['wikitext2'])} · **GRASPrune {figure}** · "
                f"best baseline ({best['group']}) {_ppl(best['metrics']['wikitext2']['mean'])}")
        links = [_link(robust_path, results)] if keep in robust else []
        commands = ["`python -m bench.robustness grid`"] if keep in robust else []
        rows.append([f"WikiText-2 perplexity at keep {keep}{_protocol(summary)}", cell,
                     ", ".join([*links, _link(path, results)]), ", ".join([*commands, f"`{summary['command']}`"])])
    return rows


ROBUSTNESS = Path("robustness") / "summary.json"


def _spread(row: dict) -> str:
    """The default prune's mean over seeds and thread counts, with its lowest and highest run."""
    seeds = sorted({p["seed"] for p in row["points"]})
    threads = sorted({p["threads"] for p in row["points"]})
    return (f"{_ppl(row['mean'])} ({_ppl(row['min'])}–{_ppl(row['max'])}, ×{row['ratio']:.2f} over {row['n']} runs: "
            f"seeds {', '.join(map(str, seeds))} × threads {', '.join(map(str, threads))}, "
            f"{' and '.join(row['machines'])})")


def _protocol(summary: dict) -> str:
    """The model and evaluation windows the study's setting records (not assumed: a rerun may change them)."""
    found = re.search(r"model (\S+), eval seqlen (\d+), first (\d+) windows", summary.get("setting", ""))
    return f" ({found[1]}, {found[3]} windows of {found[2]})" if found else ""


def heal_rows(results: Path) -> list[list[str]]:
    """A row per keep ratio: each method's checkpoint before healing and at every mark (the newest file
    measuring that method at that ratio)."""
    found: dict[tuple[float, str], tuple[Path, dict]] = {}
    for path in sorted(results.glob("heal-*/heal*.json")):
        data = _load(path) or {}
        if data.get("conditions", {}).get("marks_steps"):  # marked by steps: not "by minutes of CPU"
            continue
        for row in data.get("rows", []):
            found[(row["keep_ratio"], row["method"])] = (path, row)
    rows = []
    for keep in sorted({k for k, _ in found}, reverse=True):
        methods = sorted((m for k, m in found if k == keep), key=lambda m: (m != "grasprune", m))
        cells = [_healed(method, found[(keep, method)][1]) for method in methods]
        links = dict.fromkeys(_link(found[(keep, m)][0], results) for m in methods)
        rows.append([f"`grasprune heal` (LoRA) at keep {keep}, WikiText-2 perplexity by minutes of CPU",
                     "; ".join(cells),
                     ", ".join(links), "`python -m bench.heal --checkpoints DIR --marks 5,15,30`"])
    return rows


def _healed(method: str, row: dict) -> str:
    """Before healing, then every mark (minutes of CPU training), the lowest in bold: healing longer is not
    always better, and the table should show it."""
    points = row["points"]
    best = min(points[1:], key=lambda p: p["wikitext2"])
    marks = [f"**{_ppl(p['wikitext2'])}**" if p is best else _ppl(p["wikitext2"]) for p in points[1:]]
    name = "GRASPrune" if method == "grasprune" else f"{method} + LoRA (LLM-Pruner style)"
    steps = " → ".join(f"{mark} ({p['minutes']:.0f} min)" for mark, p in zip(marks, points[1:], strict=True))
    drop = 100 * (1 - best["wikitext2"] / points[0]["wikitext2"])
    return f"{name} {_ppl(points[0]['wikitext2'])} → {steps}: {drop:.0f}% lower at best"


def kv_rows(results: Path) -> list[list[str]]:
    """KV-cache share and decode speed-up at keep 0.5, at the shortest and longest context."""
    path, summary = _study(results, "kvcache")
    if summary is None:
        return []
    dense = {p["x"]: p for p in summary["points"] if p["group"] == "dense"}
    pruned = sorted((p for p in summary["points"] if p["group"] != "dense" and p["x"] in dense),
                    key=lambda p: p["x"])
    if not pruned:
        return []
    share = pruned[-1]["metrics"]["kv_cache_mib"]["mean"] / dense[pruned[-1]["x"]]["metrics"]["kv_cache_mib"]["mean"]
    speeds = ", ".join(f"**{p['metrics']['decode_speedup']['mean']:.2f}×** at {p['x']:,} tokens"
                       for p in (pruned[0], pruned[-1]))
    cell = f"KV cache {100 * share:.0f}% of dense; decode {speeds} (CPU, batch 1)"
    return [["Keep 0.5 against dense at long context", cell, _link(path, results), f"`{summary['command']}`"]]


def overhead_rows(results: Path) -> list[list[str]]:
    """A gate-training step against a plain forward+backward of the same block."""
    cells, links = [], []
    speed = _load(results / "speed.json")
    if speed and speed.get("overhead"):
        cells.append(f"**{speed['overhead']['ratio']:.2f}×** (CPU, SmolLM2-135M)")
        links.append(_link(results / "speed.json", results))
    gpu = _load(results / "gpu.json")
    if gpu and gpu.get("gate_training"):
        cells.append(f"**{gpu['gate_training']['ratio']:.2f}×** ({gpu['setting'].get('gpu', 'GPU')}: "
                     f"{gpu['setting']['model']})")
        links.append(_link(results / "gpu.json", results))
    if not cells:
        return []
    return [["Gate-training step against a plain forward+backward", ", ".join(cells), ", ".join(links),
             "`python -m bench.speed`, `bash bench/gpu.sh`"]]


def calibration_rows(results: Path) -> list[list[str]]:
    """Keep-0.5 perplexity on each domain against the gate-training blocks, calibrated in and out of domain."""
    path, summary = _study(results, "calibration")
    if summary is None:
        return []
    at = {(p["group"], p["x"]): p for p in summary["points"]}
    sizes = sorted({x for _, x in at})
    cells = []
    for domain, other in (("wikitext2", "c4"), ("c4", "wikitext2")):
        own = [at[(domain, x)]["metrics"][domain] for x in sizes if (domain, x) in at]
        if len(own) != len(sizes) or (other, sizes[-1]) not in at:
            return []
        curve = " → ".join(_ppl(m["mean"]) for m in own)
        away = at[(other, sizes[-1])]["metrics"][domain]["mean"]
        cells.append(f"{_NAMES[domain]} {curve} (calibrated on {_NAMES[other]}: {_ppl(away)})")
    seeds = min(p["metrics"]["wikitext2"]["n"] for p in at.values())
    name = (f"Keep-0.5 perplexity by gate-training blocks ({', '.join(map(str, sizes))}), calibrated on the "
            f"domain evaluated, mean of {seeds} seeds")
    return [[name, "; ".join(cells), _link(path, results), f"`{summary['command']}`"]]


_NAMES = {"wikitext2": "WikiText-2", "c4": "C4"}

ROWS: tuple[Callable[[Path], list[list[str]]], ...] = (keep_rows, heal_rows, calibration_rows, kv_rows, overhead_rows)


def table(results: Path) -> str:
    rows = [row for build in ROWS for row in build(results)]
    lines = ["| measured | result | file | command |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    note = ("Generated by `python -m bench.report` from the files it links (every table, machine and "
            "protocol: [docs/results.md](docs/results.md)).")
    return "\n".join([*lines, "", note])


def readme_with_table(readme: str, results: Path) -> str:
    """The README text with the table between its markers replaced (unchanged where it has no markers)."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        return readme
    return readme[: start + len(START)] + "\n" + table(results) + "\n" + readme[end:]
