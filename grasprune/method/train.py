"""Gate training with the projected straight-through estimator, and scale calibration.

Both loops are plain: one block per step (batch 1, the paper's; ``batch_blocks`` for more), next-token
loss of the frozen model with the gates applied, AdamW on the gate parameters only. The data order of
each epoch is a permutation drawn from (seed, epoch), so a resumed run sees exactly the blocks the
uninterrupted run would. Under torchrun the blocks of a step are split across the ranks
(``collectives.batch_gradient``): the same update as one process, bit for bit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from grasprune.atomic import write_atomic
from grasprune.errors import Stopped, UserError
from grasprune.events import Emit, no_events
from grasprune.method.collectives import any_rank, batch_gradient, require_same_on_all_ranks
from grasprune.method.gates import Gates
from grasprune.method.units import UnitLayout, project


@dataclass
class LoopConfig:
    epochs: int
    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.99)
    tau: float = 1.5
    seed: int = 0
    checkpoint_every: int = 16
    tau_end: float | None = None  # anneal the gate temperature linearly from tau to tau_end
    warmup: float = 0.0  # fraction of the steps with a linear learning-rate warm-up
    distill: float = 0.0  # weight of the KL divergence to the dense model's next-token distribution
    distill_topk: int = 0  # > 0: distil to the dense model's cached top-k distribution (one forward per block)
    batch_blocks: int = 1  # blocks per step: the global batch, split across the ranks under torchrun
    teacher_cache_mb: int = 2048  # full distillation: keep the dense logits of up to this many MB of blocks
    compile: bool = False  # run the gated (student) passes through torch.compile; the teacher stays eager
    align: int = 1  # the projection keeps FFN channels in multiples of this per layer (units.project)
    tie_break: str = "spread"  # the projection's order among equal probabilities (units.project)
    layer_minimum: str = "inside"  # where the projection pays each layer's minimum (units.project)
    second_moment: str = "unit"  # or "group": one second moment per layer and kind (GroupAdam)

    def tau_at(self, step: int, total: int) -> float:
        if self.tau_end is None or total <= 1:
            return self.tau
        return self.tau + (self.tau_end - self.tau) * step / (total - 1)

    def lr_at(self, step: int, total: int) -> float:
        warm = int(self.warmup * total)
        return self.lr * min(1.0, (step + 1) / warm) if warm > 0 else self.lr


def epoch_order(seed: int, epoch: int, num_blocks: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_blocks, generator=generator)


def gate_probs(scores: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.sigmoid(scores / tau)


def scores_from_importance(importance: torch.Tensor, layout: UnitLayout, tau: float) -> torch.Tensor:
    """Initial scores from a one-shot importance: each unit's percentile among the units of its kind
    becomes its initial probability (clipped to [0.02, 0.98]). Ranking within a kind makes the scales of
    FFN and KV importances irrelevant, so the first mask removes about the same share of each kind."""
    scores = torch.zeros(layout.num_units)
    for kind in (0, 1):
        members = torch.nonzero(layout.kind == kind).flatten()
        ranks = torch.argsort(torch.argsort(importance[members].float(), stable=True), stable=True).float()
        percentile = ((ranks + 0.5) / members.numel()).clamp(0.02, 0.98)
        scores[members] = tau * torch.logit(percentile)
    return scores


def ste_factors(scores: torch.Tensor, layout: UnitLayout, budget: int, tau: float, align: int = 1,
                tie_break: str = "spread", layer_minimum: str = "inside") -> tuple[torch.Tensor, torch.Tensor]:
    """``z = m + (p - p.detach())``: the hard mask forward, sigmoid gradients backward.

    The parentheses matter: ``p - p.detach()`` is exactly 0, so ``z`` is exactly the mask, where
    ``m + p - p.detach()`` rounds ``1 + p`` first and is off by up to half an ulp of 1 in fp32.
    The projection's options are ``project``'s."""
    probs = gate_probs(scores, tau)
    mask = project(probs, layout, budget, align, tie_break, layer_minimum)
    return mask + (probs - probs.detach()), mask


class TeacherCache:
    """The dense model's top-k next-token distribution per calibration block, computed once.

    Distilling to the full-vocabulary distribution costs one extra forward pass per step; this cache
    costs one per *block* (the first time it is seen, or for free when the one-shot importance pass
    over the same blocks records its logits), and the KL is taken over the teacher's top-k tokens,
    renormalised (sparse knowledge distillation, as in e.g. Raman et al. 2023, "For distillation,
    tokens are not all you need"). With k = 128 the teacher's top-k holds most of its mass on text.
    """

    def __init__(self, topk: int):
        self.topk = topk
        self.entries: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def key(block: torch.Tensor) -> bytes:
        return block.detach().cpu().numpy().tobytes()

    @torch.no_grad()
    def record(self, block: torch.Tensor, logits: torch.Tensor) -> None:
        """Keep the top-k log-probabilities (renormalised over the top k) of ``logits`` (1, L, V)."""
        top, index = torch.topk(logits[0, :-1].float(), self.topk, dim=-1)
        self.entries[self.key(block)] = (torch.log_softmax(top, -1).cpu(), index.to(torch.int32).cpu())

    def get(self, model, block: torch.Tensor, gates: Gates) -> tuple[torch.Tensor, torch.Tensor]:
        if self.key(block) not in self.entries:
            self.record(block, dense_logits(model, block, gates))
        return self.entries[self.key(block)]


@torch.no_grad()
def dense_logits(model, block: torch.Tensor, gates: Gates) -> torch.Tensor:
    """The ungated (dense) model's logits (1, L, V) for ``block``; the gates are restored after."""
    saved = gates.snapshot()
    gates.set(None)
    try:
        return model(input_ids=block.unsqueeze(0).to(model.device), use_cache=False).logits
    finally:
        gates.restore(saved)


class DenseTeacher:
    """The dense model's logits per calibration block, kept while they fit in ``limit_mb``.

    Full distillation runs the dense model once per step; over several epochs it sees each block
    again, and its logits do not change (the backbone is frozen), so keeping them saves every later
    teacher forward pass without changing a bit of the result: the logits are kept in the model's
    own precision, exactly as computed. Blocks beyond the memory limit are recomputed each time.
    """

    def __init__(self, limit_mb: int):
        self.limit = limit_mb * 2**20
        self.used = 0
        self.entries: dict[bytes, torch.Tensor] = {}

    def logits(self, model, block: torch.Tensor, gates: Gates) -> torch.Tensor:
        key = TeacherCache.key(block)
        if key in self.entries:
            return self.entries[key].to(model.device)
        return self.record(block, dense_logits(model, block, gates))

    @torch.no_grad()
    def record(self, block: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Keep the dense ``logits`` (1, L, V) of ``block`` if they fit; return them as (L - 1, V).
        An importance pass over the same blocks hands its dense forward passes here, so the first
        epoch runs no teacher forward of its own."""
        logits = logits[0, :-1]
        size = logits.numel() * logits.element_size()
        if self.used + size <= self.limit:
            self.entries[TeacherCache.key(block)] = logits.cpu()
            self.used += size
        return logits


def sparse_kl(student: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_index: torch.Tensor) -> torch.Tensor:
    """KL(teacher_topk || student) per token, averaged: the student's log-probabilities are the full
    softmax's, read at the teacher's top-k tokens."""
    teacher_logprobs = teacher_logprobs.to(student.device)
    picked = torch.gather(student, -1, teacher_index.to(student.device).long())
    return (teacher_logprobs.exp() * (teacher_logprobs - picked)).sum(-1).mean()


def block_loss(
    model, block: torch.Tensor, gates: Gates | None = None, distill: float = 0.0,
    teacher: TeacherCache | DenseTeacher | None = None, dense: tuple | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy of the gated model; with ``distill > 0``, mixed with the KL divergence
    to the ungated (dense) model's distribution: its top-k from a ``TeacherCache``, otherwise the full
    distribution (kept by a ``DenseTeacher``, or from one extra forward pass without gradients).
    ``dense`` is the teacher's ``(model, gates)`` when it is another model than ``model`` (the scale
    calibration's student is the model cut to its mask); by default ``model`` with its gates off."""
    ids = block.unsqueeze(0).to(model.device)
    dense_model, dense_gates = dense if dense is not None else (model, gates)
    if distill > 0 and gates is not None and isinstance(teacher, TeacherCache):
        cached = teacher.get(dense_model, block, dense_gates)
        student = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1].float(), -1)
        ce = torch.nn.functional.nll_loss(student, ids[0, 1:])
        loss = (1 - distill) * ce + distill * sparse_kl(student, *cached)
    elif distill > 0 and gates is not None:
        target = torch.log_softmax((teacher or DenseTeacher(0)).logits(dense_model, block, dense_gates).float(), -1)
        student = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1].float(), -1)
        ce = torch.nn.functional.nll_loss(student, ids[0, 1:])
        kl = torch.nn.functional.kl_div(student, target, log_target=True, reduction="batchmean")
        loss = (1 - distill) * ce + distill * kl
    else:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    if not torch.isfinite(loss):
        raise UserError(
            f"non-finite loss ({loss.item()}): the model or data produce NaN/inf; try --dtype fp32 or other data"
        )
    return loss


def student_model(model, cfg: LoopConfig):
    """The model the gated forward and backward passes run through: ``model`` itself, or with
    ``cfg.compile`` its ``torch.compile`` (static shapes). The gates' factors are tensors read by the
    hooks, so new factors each step reuse the compiled graph; the dense teacher keeps calling ``model``
    (gates off would be another graph to compile)."""
    return torch.compile(model, dynamic=False) if cfg.compile else model


def teacher_for(
    cfg: LoopConfig, teacher: TeacherCache | DenseTeacher | None, prefilled: bool = False
) -> TeacherCache | DenseTeacher | None:
    """What a loop distils from: the given cache (filled by an importance pass), a new top-k cache, a
    dense-logits cache when blocks come back (more than one epoch) or when an importance pass will
    fill it (``prefilled``), or none (no distillation, or the teacher runs every step)."""
    if cfg.distill <= 0:
        return None
    if teacher is not None:
        return teacher
    if cfg.distill_topk > 0:
        return TeacherCache(cfg.distill_topk)
    return DenseTeacher(cfg.teacher_cache_mb) if cfg.epochs > 1 or prefilled else None


class GroupAdam(torch.optim.Optimizer):
    """Adam with one second moment per group of units (a layer's FFN channels, a layer's KV groups), as
    Adam-mini (Zhang et al. 2024) shares it per block: a unit moves in proportion to its gradient against
    its group's, so units whose gradient is small noise stay near their start instead of taking full
    ``lr`` steps in random directions. No weight decay."""

    def __init__(self, param: torch.nn.Parameter, groups: torch.Tensor, lr: float, betas: tuple[float, float],
                 eps: float = 1e-8):
        super().__init__([param], {"lr": lr, "betas": betas, "eps": eps})
        self.groups = groups.to(param.device)
        self.count = torch.bincount(self.groups).to(param.dtype)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            (b1, b2), (param,) = group["betas"], group["params"]
            state = self.state[param]
            if not state:
                state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(param),
                             exp_avg_sq=torch.zeros_like(self.count))
            state["step"] += 1
            t = float(state["step"])
            grad = param.grad
            state["exp_avg"].mul_(b1).add_(grad, alpha=1 - b1)
            mean_square = torch.zeros_like(self.count).index_add_(0, self.groups, grad * grad) / self.count
            state["exp_avg_sq"].mul_(b2).add_(mean_square, alpha=1 - b2)
            denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt()[self.groups] + group["eps"]
            param.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - b1**t))


def gate_optimizer(param: torch.nn.Parameter, cfg: LoopConfig, groups: torch.Tensor | None = None):
    """The scores' optimizer (training and Explain's stepping share it): AdamW without weight decay, or
    GroupAdam with ``second_moment`` "group" (``groups``: each unit's layer and kind)."""
    if cfg.second_moment == "group" and groups is not None:
        return GroupAdam(param, groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.AdamW([param], lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)


class _Loop:
    """Shared step/epoch bookkeeping, checkpointing and stop handling for both training phases."""

    def __init__(self, phase, param, blocks, cfg: LoopConfig, emit: Emit, stop, checkpoint: Path | None,
                 groups: torch.Tensor | None = None):
        self.phase, self.param, self.blocks, self.cfg = phase, param, blocks, cfg
        self.emit, self.stop, self.checkpoint = emit, stop or threading.Event(), checkpoint
        self.optimizer = gate_optimizer(param, cfg, groups)
        self.per_epoch = -(-blocks.shape[0] // cfg.batch_blocks)
        self.total = cfg.epochs * self.per_epoch
        self.step = 0
        if checkpoint is not None and checkpoint.is_file():
            self._restore(checkpoint)
        require_same_on_all_ranks("calibration blocks", blocks)
        require_same_on_all_ranks(f"{phase} checkpoints", param)

    def step_blocks(self, step: int) -> torch.Tensor:
        """The global batch of ``step``: the next ``batch_blocks`` blocks of its epoch's order."""
        epoch, i = divmod(step, self.per_epoch)
        size = self.cfg.batch_blocks
        return self.blocks[epoch_order(self.cfg.seed, epoch, self.blocks.shape[0])[i * size:(i + 1) * size]]

    def run(self, step: Callable[[torch.Tensor, int], tuple[torch.Tensor, dict]]) -> None:
        """Call ``step(block, step_index) -> (loss, event fields)`` for every block of every remaining step
        (this rank's share of it), then update, emit and checkpoint; stop (checkpointed) when asked.
        Schedules depend on the step index only, so a resumed run follows them exactly."""
        start, first = time.perf_counter(), self.step
        while self.step < self.total:
            if any_rank(self.stop.is_set()):
                self.save()
                self.emit("stopped", phase=self.phase, step=self.step, total=self.total)
                raise Stopped(f"stopped during {self.phase} at step {self.step} of {self.total}")
            loss, fields = batch_gradient(self.param, self.step_blocks(self.step),
                                          lambda block: step(block, self.step))
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.lr_at(self.step, self.total)
            self.optimizer.step()
            self.step += 1
            elapsed = time.perf_counter() - start
            eta = elapsed / (self.step - first) * (self.total - self.step)
            self.emit("step", phase=self.phase, step=self.step, total=self.total, loss=round(loss, 5),
                      eta=round(eta, 1), **fields)
            if self.checkpoint is not None and self.step % self.cfg.checkpoint_every == 0:
                self.save()
        self.save()

    def save(self) -> None:
        if self.checkpoint is None:
            return
        tensors = {"param": self.param.detach().cpu().contiguous()}
        state = self.optimizer.state.get(self.param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[key] = state[key].detach().cpu().contiguous()
        meta = {"phase": self.phase, "step": str(self.step), "opt_step": str(int(state.get("step", 0)))}
        write_atomic(self.checkpoint, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def _restore(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata()
        tensors = load_file(str(path))
        with torch.no_grad():
            self.param.copy_(tensors["param"].to(self.param.device))
        self.step = int(meta["step"])
        if "exp_avg" in tensors:
            device = self.param.device
            self.optimizer.state[self.param] = {
                "step": torch.tensor(float(meta["opt_step"])),
                "exp_avg": tensors["exp_avg"].to(device),
                "exp_avg_sq": tensors["exp_avg_sq"].to(device),
            }


def train_gates(
    model,
    gates: Gates,
    layout: UnitLayout,
    blocks: torch.Tensor,
    budget: int,
    cfg: LoopConfig,
    emit: Emit = no_events,
    stop: threading.Event | None = None,
    checkpoint: Path | None = None,
    init_scores: torch.Tensor | None = None,
    teacher: TeacherCache | DenseTeacher | None = None,
) -> torch.Tensor:
    """Learn one score per unit; return the final scores (the final mask is their projection).
    ``teacher`` may hold dense logits or top-k distributions recorded earlier (by the importance pass)."""
    teacher = teacher_for(cfg, teacher)
    scores = torch.zeros(layout.num_units, device=model.device) if init_scores is None else init_scores.clone()
    scores = torch.nn.Parameter(scores.float().to(model.device))
    loop = _Loop("gate_training", scores, blocks, cfg, emit, stop, checkpoint, layout.group)
    previous = [None]
    student = student_model(model, cfg)

    def step(block, index):
        tau = cfg.tau_at(index, loop.total)
        factors, mask = ste_factors(scores, layout, budget, tau, cfg.align, cfg.tie_break, cfg.layer_minimum)
        gates.set(factors)
        loss = block_loss(student, block, gates, cfg.distill, teacher, dense=(model, gates))
        churn = 0 if previous[0] is None else int((mask != previous[0]).sum())
        previous[0] = mask
        ffn, kv = layout.kept_counts(mask)
        mean_prob = round(gate_probs(scores.detach(), tau).mean().item(), 5)
        return loss, {"ffn_kept": ffn, "kv_kept": kv, "churn": churn, "mean_prob": mean_prob}

    try:
        loop.run(step)
    finally:
        gates.set(None)
    return scores.detach()


def scale_factors(raw: torch.Tensor) -> torch.Tensor:
    """``gamma = 1 + 0.5 * tanh(r)``: starts at 1, stays in (0.5, 1.5)."""
    return 1.0 + 0.5 * torch.tanh(raw)


def calibrate_scales(
    model,
    gates: Gates,
    layout: UnitLayout,
    mask: torch.Tensor,
    blocks: torch.Tensor,
    cfg: LoopConfig,
    scale_keys: bool = True,
    emit: Emit = no_events,
    stop: threading.Event | None = None,
    checkpoint: Path | None = None,
    student: tuple | None = None,
) -> torch.Tensor:
    """Learn a scale per kept unit with the mask fixed; return gamma (1 on pruned units).

    ``student``, ``(model cut to mask, its Gates)`` from ``sliced_model``, computes the same function
    as the gated full model without the pruned units' work (the scale calibration's forward and
    backward passes shrink with the budget); the dense teacher stays ``model`` with its gates off.
    The scales keep their full-layout vector either way (pruned units get zero gradients), so a
    checkpoint resumes with or without a student."""
    teacher = teacher_for(cfg, None)
    raw = torch.nn.Parameter(torch.zeros(layout.num_units, device=model.device))
    mask = mask.to(model.device)
    kept = torch.nonzero(mask > 0.5).flatten()
    loop = _Loop("scale_calibration", raw, blocks, cfg, emit, stop, checkpoint)
    run_model, run_gates = student if student is not None else (model, gates)
    gated_model = student_model(run_model, cfg)

    def step(block, index):
        if student is None:
            factors = mask * scale_factors(raw)
            gates.set(factors, key_factors=None if scale_keys else mask)
            return block_loss(gated_model, block, gates, cfg.distill, teacher, dense=(model, gates)), {}
        factors = scale_factors(raw[kept])
        run_gates.set(factors, key_factors=None if scale_keys else torch.ones_like(factors))
        return block_loss(gated_model, block, run_gates, cfg.distill, teacher, dense=(model, gates)), {}

    try:
        loop.run(step)
    finally:
        run_gates.set(None)
    gamma = scale_factors(raw.detach())
    return torch.where(mask.bool(), gamma, torch.ones_like(gamma))
