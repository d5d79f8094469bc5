"""The studies' tables from their summary.json (standard library only: ``bench.report`` renders them too)."""

from __future__ import annotations


def metric_order(summary: dict) -> list[str]:
    """WikiText-2 first (the paper's headline set), then the others by name."""
    return sorted({m for p in summary["points"] for m in p["metrics"]}, key=lambda m: (m != "wikitext2", m))


def cell(stats: dict | None, digits: int = 2) -> str:
    """``mean`` for one run, ``mean (min-max)`` over several seeds."""
    if not stats:
        return ""
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"


def seeds(point: dict) -> str:
    return str(len(point["seeds"])) if point["seeds"] else ""


def perplexity_table(summary: dict) -> list[str]:
    """Keep sweep or calibration study: a row per (method or domain, x), perplexity per evaluation set."""
    metrics = metric_order(summary)
    keep = summary["study"] == "keep"
    lines = [f"| {'method' if keep else 'calibrated on'} | {'keep' if keep else 'gate-training blocks'} | seeds | "
             "parameters (M) | % prunable removed | " + " | ".join(f"{m} ppl, mean (min-max)" for m in metrics) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(metrics)]
    for p in sorted(summary["points"], key=lambda p: (p["group"], -p["x"] if keep else p["x"])):
        lines.append(f"| {p['group']} | {p['x']:g} | {seeds(p) if p['group'] != 'dense' else ''} | "
                     f"{p['params_after']['mean'] / 1e6:.1f} | {p['removed_pct_of_prunable']['mean']:.1f} | "
                     + " | ".join(cell(p["metrics"].get(m)) for m in metrics) + " |")
    return lines


def kvcache_table(summary: dict) -> list[str]:
    lines = [("| model | seeds | context (tokens) | KV cache (MiB) | decode tokens/s | decode speed-up vs dense "
             "| prefill (s) |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for p in sorted(summary["points"], key=lambda p: (p["x"], p["group"] != "dense", p["group"])):
        m = p["metrics"]
        lines.append(f"| {p['group']} | {seeds(p)} | {p['x']} | {cell(m['kv_cache_mib'], 1)} | "
                     f"{cell(m['decode_tokens_per_s'], 1)} | {cell(m['decode_speedup'], 2)} | {cell(m['prefill_s'], 1)} |")
    return lines


def table(summary: dict) -> list[str]:
    """The study's table, preceded by the dense figures where the study has them."""
    dense = summary.get("dense")
    lines = ["Dense: " + ", ".join(f"{m} {v:.2f}" for m, v in sorted(dense.items())), ""] if dense else []
    return lines + (kvcache_table(summary) if summary["study"] == "kvcache" else perplexity_table(summary))


def markdown(summary: dict) -> str:
    """The study as a page: title, the command that makes it, the setting, the table."""
    lines = [f"# {summary['title']}", "", f"`{summary['command']}` · {summary['setting']}", "", *table(summary)]
    return "\n".join(lines) + "\n"
