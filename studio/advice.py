"""What to do next after a run, whatever its perplexity: each step with what it measured here, read from the
benchmarks' files (``studio.results_view``): a heal's gain at the nearest keep ratio, what the CLI's full
settings reach at this keep ratio, and what more calibration blocks bought. Nothing is measured here."""

from __future__ import annotations

from pathlib import Path

from grasprune.config import CPU_DEFAULTS, DEFAULT_VARIANT, PruneConfig

from .results_view import heal_rows, read_json, results_folder, robustness_rows


def next_steps(config: PruneConfig, folder: Path | None = None) -> list[str]:
    """Markdown bullets, the most useful first; the heal step is always there (with a number where one was
    measured)."""
    folder = folder or results_folder()
    steps = [_heal_step(config.keep_ratio, folder)]
    full = _full_settings_step(config, folder)
    if full:
        steps.append(full)
    more = _calibration_step(config, folder)
    if more:
        steps.append(more)
    return steps


def _heal_step(keep: float, folder: Path) -> str:
    rows = [r for r in heal_rows(folder) if r.get("method") == "grasprune" and len(r.get("points", [])) > 1]
    text = "**Heal it** on the Heal page (a short LoRA fine-tune merged into the checkpoint, `grasprune heal`)"
    if not rows:
        return text + "."
    row = min(rows, key=lambda r: abs(r["keep_ratio"] - keep))
    start = row["points"][0]
    best = min(row["points"][1:], key=lambda p: p["wikitext2"])
    return (f"{text}: here a GRASPrune checkpoint at keep {row['keep_ratio']:g} went from WikiText-2 "
            f"{start['wikitext2']:.2f} to {best['wikitext2']:.2f} after {best['minutes']:.0f} minutes of CPU "
            f"(`{row['source']}`, docs/heal.md).")


def _full_settings_step(config: PruneConfig, folder: Path) -> str | None:
    """Where the run used less gate training than the CLI's defaults: what those reach at its keep ratio."""
    blocks, epochs = config.calib_samples or CPU_DEFAULTS["calib_samples"], config.epochs or CPU_DEFAULTS["epochs"]
    if blocks * epochs >= CPU_DEFAULTS["calib_samples"] * CPU_DEFAULTS["epochs"] and config.variant == DEFAULT_VARIANT:
        return None
    row = next((r for r in robustness_rows(folder) if r["model"] == config.model
                and abs(r["keep ratio"] - config.keep_ratio) < 1e-9), None)
    text = (f"**Run the full settings** (`grasprune prune` defaults: the `{DEFAULT_VARIANT}` variant, "
            f"{CPU_DEFAULTS['calib_samples']} blocks of {CPU_DEFAULTS['block_len']} tokens, "
            f"{CPU_DEFAULTS['epochs']} epochs; this run: {blocks} blocks, {epochs} epoch{'s' * (epochs != 1)})")
    if row is None:
        return text + "."
    return (f"{text}: at keep {config.keep_ratio:g} they measured WikiText-2 {row['mean']:.2f} on average "
            f"({row['min']:.2f}–{row['max']:.2f} over {row['runs']} runs).")


def _calibration_step(config: PruneConfig, folder: Path) -> str | None:
    """What more gate-training blocks bought in the calibration study (WikiText-2, calibrated in domain)."""
    summary = read_json(folder / "study-calibration" / "summary.json") or {}
    points = sorted((p for p in summary.get("points", []) if p.get("group") == "wikitext2"
                     and "wikitext2" in p.get("metrics", {})), key=lambda p: p["x"])
    blocks = config.calib_samples or CPU_DEFAULTS["calib_samples"]
    more = [p for p in points if p["x"] > blocks]
    here = next((p for p in points if p["x"] == blocks), None)
    if not more or here is None:
        return None
    best = more[-1]
    return (f"**Calibrate on more blocks** (`--calib-samples {best['x']:g}`, {best['x'] / blocks:g}× the gate-training "
            f"time): the calibration study measured WikiText-2 {best['metrics']['wikitext2']['mean']:.2f} with "
            f"{best['x']:g} blocks against {here['metrics']['wikitext2']['mean']:.2f} with {blocks} at keep 0.5 "
            "(3 seeds, docs/studies.md).")
