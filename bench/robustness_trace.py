"""Where two gate-training trajectories part: per-step masks and scores of one prune, and their comparison.

    python -m bench.robustness trace --keep-ratio 0.5 --seed 0 --threads 1 --out runs/trace/t1.safetensors
    python -m bench.robustness compare runs/trace/t1.safetensors runs/trace/t2.safetensors

``trace`` runs the CLI's default prune (``prune_run``, every default untouched unless ``--set`` changes it)
and records, at every gate-training step, the scores the projection saw and the mask it made (with
``--perturb EPS`` from initial scores nudged by noise of size EPS). It wraps
``grasprune.method.train.ste_factors`` for the length of the run: a diagnostic, not a product path.
``compare`` prints, per step, how many units the two masks disagree on, both losses, and how crowded the
budget line is (units whose score is within one Adam step, ``lr``, of the line); then the first step
where the masks differ, and which units start it.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from grasprune.atomic import write_atomic
from grasprune.method import train
from grasprune.runs import pipeline


@contextmanager
def recording(steps: list[tuple[torch.Tensor, torch.Tensor]], perturb: float = 0.0):
    """Every gate-training projection's (scores, mask) appended to ``steps`` while inside; with ``perturb``
    > 0 the initial scores get Gaussian noise of that size (seed 0): a rounding difference of another
    machine, made on purpose."""
    original, initial = train.ste_factors, pipeline.scores_from_importance

    def perturbed(*args, **kwargs):
        scores = initial(*args, **kwargs)
        return scores + perturb * torch.randn(scores.shape, generator=torch.Generator().manual_seed(0))

    def traced(scores, *args, **kwargs):
        factors, mask = original(scores, *args, **kwargs)
        steps.append((scores.detach().float().cpu().clone(), mask.detach().bool().cpu().clone()))
        return factors, mask

    train.ste_factors = traced
    pipeline.scores_from_importance = perturbed
    try:
        yield
    finally:
        train.ste_factors, pipeline.scores_from_importance = original, initial


def save_trace(path: Path, steps: list, losses: list[float], meta: dict) -> None:
    tensors = {"scores": torch.stack([s for s, _ in steps]), "masks": torch.stack([m for _, m in steps]),
               "loss": torch.tensor(losses, dtype=torch.float64)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)}))


def line_margin(scores: torch.Tensor, mask: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The score at the budget line (midway between the lowest kept and the highest pruned score) and
    every unit's distance to it. Forced units (a layer's best) can sit below it; they are rare."""
    kept, pruned = scores[mask], scores[~mask]
    line = (float(kept.min()) + float(pruned.max())) / 2 if pruned.numel() and kept.numel() else 0.0
    return line, (scores - line).abs()


def compare(a: Path, b: Path, lr: float = 1e-2, every: int = 8) -> dict:
    """Per-step disagreement of two traces, and the units where it starts."""
    ta, tb = load_file(str(a)), load_file(str(b))
    steps = min(ta["masks"].shape[0], tb["masks"].shape[0])
    rows = []
    for t in range(steps):
        ma, mb = ta["masks"][t], tb["masks"][t]
        _, gap = line_margin(ta["scores"][t], ma)
        rows.append({
            "step": t, "mask_diff": int((ma != mb).sum()), "kept": int(ma.sum()),
            "score_diff_max": float((ta["scores"][t] - tb["scores"][t]).abs().max()),
            "near_line": int((gap < lr).sum()),
            "loss_a": float(ta["loss"][t]), "loss_b": float(tb["loss"][t]),
        })
    first = next((r["step"] for r in rows if r["mask_diff"]), None)
    start = None
    if first is not None:
        units = torch.nonzero(ta["masks"][first] != tb["masks"][first]).flatten()
        line, gap = line_margin(ta["scores"][first], ta["masks"][first])
        start = {"step": first, "units": units[:20].tolist(), "line": line,
                 "gap_to_line": gap[units][:20].tolist(),
                 "score_diff_before": float((ta["scores"][first] - tb["scores"][first]).abs().max())}
    for r in rows:
        if r["step"] % every == 0 or r["step"] == steps - 1 or r["step"] == first:
            print(f"step {r['step']:4d}  mask differs on {r['mask_diff']:5d} of {r['kept']} kept  "
                  f"max |score a - b| {r['score_diff_max']:.2e}  within lr of the line {r['near_line']:5d}  "
                  f"loss {r['loss_a']:.4f} / {r['loss_b']:.4f}")
    print(f"first differing step: {start}")
    return {"rows": rows, "start": start}
