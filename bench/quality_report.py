"""The quality table, the verdict (who has the lowest perplexity at each keep ratio) and the plot."""

from __future__ import annotations

from pathlib import Path

from .common import describe

STAGES = (("load_s", "load"), ("importance_s", "score"), ("gate_training_s", "gates"), ("rescale_s", "scales"),
          ("export_s", "export"), ("eval_s", "eval"))


def _datasets(entries: list[dict]) -> list[str]:
    return list(dict.fromkeys(d for e in entries for d in e["metrics"]))


def _conditions(entries: list[dict]) -> str:
    first = entries[0]
    settings, cond = first["settings"], first["setting"]
    pruned_entry = next((e for e in entries if e["settings"]["method"] != "dense"), None)
    pruned = pruned_entry["settings"] if pruned_entry else None
    parts = {
        "model": settings["model"], "eval": f"seqlen {settings['seqlen']}, first {settings['windows']} windows",
        "eval dtype": " / ".join(sorted({str(e.get("eval_dtype")).removeprefix("torch.") for e in entries})),
        "threads": f"{cond['threads']} (unless the row says otherwise)", "cpu": cond["cpu"],
        "torch": cond["torch"],
    }
    if pruned:
        parts["calibration"] = (f"{pruned['calib_data']} ({pruned['calib_samples']}×{pruned['block_len']} tokens, "
                                f"epochs {pruned['epochs']}), scale calibration (grasprune, +scales) on {pruned['rescale_data']} "
                                f"({pruned['rescale_samples']} blocks, 1 epoch), seed {pruned['seed']}, "
                                f"training dtype {pruned_entry.get('train_dtype') or pruned['dtype']}")
    return describe(parts)


def markdown(entries: list[dict]) -> str:
    """The table (dense first, then by keep ratio, descending) and the per-ratio verdict."""
    datasets = _datasets(entries)
    rows = sorted(entries, key=lambda e: (-e["settings"].get("keep_ratio", 2.0), e["label"]))
    lines = [
        "# Quality: GRASPrune against the baselines",
        "",
        f"Setting: {_conditions(entries)}.",
        "",
        "| method | keep | % prunable removed | % all removed | "
        + " | ".join(f"{d} ppl" for d in datasets) + " | time per stage (s) |",
        "|---|---:|---:|---:|" + "---:|" * len(datasets) + "---|",
    ]
    for e in rows:
        cells = [f"{e['metrics'][d]:.2f}" if d in e["metrics"] else "" for d in datasets]
        timing = ", ".join(f"{name} {e['timing'][key]:.0f}" for key, name in STAGES if key in e["timing"])
        if e["setting"]["threads"] != entries[0]["setting"]["threads"]:
            timing += f"; {e['setting']['threads']} thread(s)"  # bf16 sums differ by thread count: so may the mask
        if e.get("resumed"):
            timing += " (resumed: the stage in progress counts from the resume)"
        keep = e["settings"].get("keep_ratio", 1.0)
        lines.append(f"| {e['label']} | {keep:.2f} | {e['params']['removed_pct_of_prunable']:.1f} | "
                     f"{e['params']['removed_pct_of_total']:.1f} | " + " | ".join(cells) + f" | {timing} |")
    lines += ["", "## Who wins", ""] + verdict(entries, datasets)
    return "\n".join(lines) + "\n"


def verdict(entries: list[dict], datasets: list[str]) -> list[str]:
    """Per keep ratio and dataset: GRASPrune against the best baseline, with the margin; says when a
    baseline wins."""
    lines = []
    ratios = sorted({e["settings"]["keep_ratio"] for e in entries if "keep_ratio" in e["settings"]}, reverse=True)
    for keep in ratios:
        at = [e for e in entries if e["settings"].get("keep_ratio") == keep]
        baselines = [e for e in at if e["settings"]["method"] != "grasprune"]
        for ours in (e for e in at if e["settings"]["method"] == "grasprune"):
            for d in datasets:
                scored = [e for e in baselines if d in e["metrics"]]
                if d not in ours["metrics"] or not scored:
                    continue
                lines.append(f"- keep {keep:.2f}, {d}: " + _compare(ours, min(scored, key=lambda e: e["metrics"][d]), d))
    return lines or ["- no ratio has both GRASPrune and a baseline yet"]


def _compare(ours: dict, best: dict, dataset: str) -> str:
    a, b = ours["metrics"][dataset], best["metrics"][dataset]
    head = f"{ours['label']} {a:.2f} vs best baseline {b:.2f}: "
    if a < b:
        return head + f"GRASPrune lowest, {b - a:.2f} below {best['label']} ({100 * (b - a) / b:.1f}%)"
    return head + f"**baseline wins**: {best['label']} is {a - b:.2f} below GRASPrune ({100 * (a - b) / a:.1f}%)"


def plot(entries: list[dict], path: Path) -> Path | None:
    """Perplexity against % of all parameters removed, one line per method, log y, one panel per dataset."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    datasets = _datasets(entries)
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.8), squeeze=False)
    labels = list(dict.fromkeys(e["label"] for e in entries if e["settings"]["method"] != "dense"))
    for ax, d in zip(axes[0], datasets, strict=True):
        for name in labels:
            points = sorted((e["params"]["removed_pct_of_total"], e["metrics"][d])
                            for e in entries if e["label"] == name and d in e["metrics"])
            if points:
                x, y = zip(*points, strict=True)
                style = {}
                if name.startswith("grasprune"):
                    style = {"linewidth": 2.5, "color": "black" if "paper" not in name else "dimgrey"}
                    style["linestyle"] = ":" if "paper" in name else "-"
                ax.plot(x, y, marker="o", label=name, **style)
        dense = [e["metrics"][d] for e in entries if e["settings"]["method"] == "dense" and d in e["metrics"]]
        if dense:
            ax.axhline(dense[0], linestyle="--", color="grey", label="dense")
        ax.set_yscale("log")
        ax.set_xlim(0, max([e["params"]["removed_pct_of_total"] for e in entries] + [1.0]) * 1.08)
        ax.set_xlabel("% of all parameters removed")
        ax.set_ylabel(f"{d} perplexity (log)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(_conditions(entries), fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return save_figure(fig, plt, path)


def save_figure(fig, plt, path: Path) -> Path:
    """Draw ``fig`` into a temporary PNG beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
    return path
