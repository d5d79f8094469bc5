"""The field's importance criteria, scored on the same units as GRASPrune, for the same projection.

Every baseline returns one score per unit (flat ``UnitLayout`` order, higher = kept first); the
pipeline projects those scores exactly as it projects GRASPrune's gate probabilities, under the same
budget, so only the criterion differs. Costs are never divided into a score.

What a unit's weights are (the units GRASPrune gates, ``method/units.py``): FFN channel ``j`` = row ``j`` of ``gate_proj`` and
``up_proj`` and column ``j`` of ``down_proj``; KV group ``g`` = the rows of its ``G`` query heads in
``q_proj``, of its head in ``k_proj`` and ``v_proj``, and the ``o_proj`` columns of its query heads.
Biases go with their rows.

Scales differ between FFN channels and KV groups (a KV group holds ``(2G+2)·dh/3`` times as many
weights), so each baseline allocates the budget as its publication does:

- ``random``, ``magnitude``, ``taylor`` (LLM-Pruner, Ma et al. 2023, ``hf_prune.py`` with its
  default local pruning) and ``wanda-sp`` (FLAP's repository, ``prune_wanda_sp``) prune every layer
  by the same ratio, heads and channels separately. Here the raw criterion is turned into the
  unit's rank within its layer and kind, as a fraction in (0, 1]: ranked globally, that keeps the
  same share of every layer's FFN channels and of every layer's KV groups, the criterion choosing
  which ones. (LLM-Pruner also leaves its first and last layers unpruned by hand; we do not.)
- ``flap`` (An et al. 2024, structure ``AL-AM``, FLAP's default) ranks all units globally after
  standardising its metric per kind over all layers; that standardised score is ranked as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from grasprune.errors import UserError
from grasprune.method.adapters import ModelAdapter
from grasprune.method.train import block_loss
from grasprune.method.units import FFN, UnitLayout

BASELINES = ("random", "magnitude", "wanda-sp", "flap", "taylor")
# The work of each criterion per calibration token, in forward passes of the model (a backward pass
# costs about two): the ones that read weights only run none. The pipeline's progress and the run-time
# estimate (``estimate.py``) both use it.
CALIBRATION_PASSES = {"random": 0, "magnitude": 0, "wanda-sp": 1, "flap": 1, "taylor": 3}

ROW, COL = 0, 1  # the weight dimension that indexes a unit's slice of a linear
FFN_PARTS = (("gate", ROW), ("up", ROW), ("down", COL))
KV_PARTS = (("q", ROW), ("k", ROW), ("v", ROW), ("o", COL))
# stat(layer, name, linear, axis) -> one value per row (axis ROW) or column (axis COL), or None
SliceStat = Callable[[int, str, nn.Linear, int], "torch.Tensor | None"]
LogitsSink = Callable[[torch.Tensor, torch.Tensor], None]  # (block ids, logits of shape (1, L, V))
Progress = Callable[[int, int], None]  # (blocks done, blocks in all), after each calibration block


def unit_importance(
    method: str,
    model: nn.Module,
    adapter: ModelAdapter,
    layout: UnitLayout,
    blocks: torch.Tensor,
    seed: int = 0,
    on_logits: LogitsSink | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """One float32 score per unit (higher = more important) by baseline ``method``.

    ``blocks`` are calibration token ids, shape (N, L); each is run with batch 1. Only ``taylor``
    computes gradients, and it leaves every parameter's ``requires_grad`` as it found it.
    ``on_logits(block, logits)`` sees the dense model's logits of every block the criterion runs
    (``wanda-sp`` and ``flap``), so a caller can reuse that forward pass. ``progress(done, total)`` is
    called after each block of the criteria that run blocks (``CALIBRATION_PASSES`` > 0).
    """
    if method not in BASELINES:
        raise UserError(f"unknown baseline '{method}': choose one of {', '.join(BASELINES)}")
    if method == "flap":
        return flap_scores(adapter, layout, input_statistics(model, adapter, blocks, on_logits, progress=progress))
    raw = {
        "random": lambda: random_scores(layout, seed),
        "magnitude": lambda: magnitude_scores(adapter, layout),
        "wanda-sp": lambda: wanda_sp_scores(adapter, layout, input_statistics(model, adapter, blocks, on_logits,
                                                                              with_mean=False, progress=progress)),
        "taylor": lambda: taylor_scores(model, adapter, layout, blocks, progress),
    }[method]()
    return rank_within_layer(raw, layout)


def per_unit(adapter: ModelAdapter, layout: UnitLayout, stat: SliceStat) -> torch.Tensor:
    """Sum a per-row / per-column statistic of each layer's linears into one value per unit.

    ``stat`` is asked for every (layer, linear) pair of ``FFN_PARTS`` and ``KV_PARTS``; its vector
    is cut into the layer's units in order (a KV group's query rows and ``o_proj`` columns are
    ``G·dh`` consecutive slices, its K and V rows ``dh``) and summed per unit, in float64.
    """
    parts = []
    for i, (view, shape) in enumerate(zip(adapter.views, layout.shapes, strict=True)):
        for names, count in ((FFN_PARTS, shape.ffn_channels), (KV_PARTS, shape.kv_groups)):
            total = torch.zeros(count, dtype=torch.float64)
            for name, axis in names:
                value = stat(i, name, getattr(view, name), axis)
                if value is not None:
                    total += value.detach().to("cpu", torch.float64).reshape(count, -1).sum(-1)
            parts.append(total)
    return torch.cat(parts)


def weight_slices(weight_stat: torch.Tensor, axis: int, bias_stat: torch.Tensor | None = None) -> torch.Tensor:
    """An element-wise statistic of a weight summed per row or per column; a row's bias term added."""
    sums = weight_stat.sum(dim=1 - axis)
    return sums + bias_stat if axis == ROW and bias_stat is not None else sums


def rank_within_layer(raw: torch.Tensor, layout: UnitLayout) -> torch.Tensor:
    """Each unit's rank among its layer's units of its kind, as ``(rank + 1) / n`` (ties by index).

    Projected globally, these keep the same share of every (layer, kind): the per-layer uniform
    ratio of the published local methods, the raw criterion choosing the units.
    """
    ranks = []
    for part in torch.split(raw.double(), layout.sizes):
        order = torch.argsort(part, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(part.numel())
        ranks.append((rank + 1).double() / part.numel())
    return torch.cat(ranks).float()


def random_scores(layout: UnitLayout, seed: int) -> torch.Tensor:
    """Uniform random scores from ``seed`` (LLM-Pruner's ``random`` pruner)."""
    return torch.rand(layout.num_units, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@torch.no_grad()
def magnitude_scores(adapter: ModelAdapter, layout: UnitLayout) -> torch.Tensor:
    """Squared L2 norm of all the unit's weights and biases (LLM-Pruner's ``l2`` MagnitudeImportance:
    ``sum |w|^2`` per slice, summed over the coupled linears)."""

    def stat(i, name, linear, axis):
        bias = None if linear.bias is None else linear.bias.float().pow(2)
        return weight_slices(linear.weight.float().pow(2), axis, bias)

    return per_unit(adapter, layout, stat)


@dataclass
class InputStats:
    """Per-column sums of a linear's inputs over every calibration token (float64)."""

    total: torch.Tensor
    squares: torch.Tensor
    count: int

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def variance(self) -> torch.Tensor:
        """Sample variance over tokens (FLAP's fluctuation ``fluc_inp``)."""
        return (self.squares - self.total.pow(2) / self.count) / max(self.count - 1, 1)

    @property
    def norm(self) -> torch.Tensor:
        """L2 norm over tokens (Wanda's ``||X_j||``)."""
        return self.squares.sqrt()


@torch.no_grad()
def input_statistics(
    model: nn.Module, adapter: ModelAdapter, blocks: torch.Tensor, on_logits: LogitsSink | None = None,
    with_mean: bool = True, progress: Progress | None = None,
) -> list[dict[str, InputStats]]:
    """Per layer, the column statistics of the inputs of ``down_proj`` and ``o_proj`` over ``blocks``.
    ``with_mean=False`` skips the column sums (their ``total`` stays zero), for a criterion that needs
    only the norms: a fifth less work in a pass that runs a float64 reduction per linear and token."""
    stats: list[dict[str, InputStats]] = [{} for _ in adapter.views]

    def hook(i: int, name: str):
        def record(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            if name not in stats[i]:
                zeros = torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device)
                stats[i][name] = InputStats(zeros, zeros.clone(), 0)
            entry = stats[i][name]
            if with_mean:
                entry.total += x.sum(0)
            entry.squares += x.pow(2).sum(0)
            entry.count += x.shape[0]

        return record

    handles = [
        linear.register_forward_pre_hook(hook(i, name))
        for i, view in enumerate(adapter.views)
        for name, linear in (("down", view.down), ("o", view.o))
    ]
    device = next(model.parameters()).device
    try:
        for done, block in enumerate(blocks, 1):
            logits = model(input_ids=block.unsqueeze(0).to(device), use_cache=False).logits
            if on_logits is not None:
                on_logits(block, logits)
            if progress is not None:
                progress(done, blocks.shape[0])
    finally:
        for handle in handles:
            handle.remove()
    return stats


@torch.no_grad()
def wanda_sp_scores(adapter: ModelAdapter, layout: UnitLayout, stats: list[dict[str, InputStats]]) -> torch.Tensor:
    """Wanda-sp (FLAP's ``prune_wanda_sp``): ``|W_ij| · ||X_j||`` over the output linear's columns.

    FFN channel ``j``: summed over column ``j`` of ``down_proj`` with ``X`` its input; KV group: summed
    over the ``o_proj`` columns of its query heads with ``X`` the ``o_proj`` input. The unit's input
    linears (gate/up, q/k/v) do not enter, as in the published code. (FLAP averages over rows where we
    sum: the same order within a layer, which is all the uniform allocation uses.)
    """

    def stat(i, name, linear, axis):
        if axis != COL:
            return None
        norm = stats[i][name].norm.to(linear.weight.device)
        return weight_slices(linear.weight.double().abs() * norm[None, :], COL)

    return per_unit(adapter, layout, stat)


@torch.no_grad()
def flap_scores(adapter: ModelAdapter, layout: UnitLayout, stats: list[dict[str, InputStats]]) -> torch.Tensor:
    """FLAP's WIFV metric with its ``AL-AM`` global structure.

    Per input column ``c`` of ``down_proj`` / ``o_proj``: ``Var_tokens(X_c) · ||W_:,c||²``. Those
    values are standardised per kind over all layers (all FFN channels together; all ``o_proj``
    columns together), then a KV group takes the mean over its ``G·dh`` columns (FLAP: per head, the
    mean over ``head_dim``). FLAP's bias compensation is separate: see ``flap_bias_compensation``.
    """
    columns = [
        {name: stats[i][name].variance.cpu() * getattr(view, name).weight.double().pow(2).sum(0).cpu()
         for name in ("down", "o")}
        for i, view in enumerate(adapter.views)
    ]
    moments = {}
    for name in ("down", "o"):
        values = torch.cat([c[name] for c in columns])
        moments[name] = (values.mean(), values.std().clamp_min(1e-30))

    def stat(i, name, linear, axis):
        if axis != COL:
            return None
        mean, std = moments[name]
        return (columns[i][name] - mean) / std

    summed = per_unit(adapter, layout, stat)
    columns_per_unit = torch.where(layout.kind == FFN, 1, layout.group_size * adapter.head_dim)
    return (summed / columns_per_unit).float()


@torch.no_grad()
def flap_bias_compensation(
    adapter: ModelAdapter, layout: UnitLayout, mask: torch.Tensor, stats: list[dict[str, InputStats]]
) -> list[str]:
    """FLAP's bias compensation, in place: ``b += W[:, pruned] @ mean(X[:, pruned])`` for ``down_proj``
    and ``o_proj``, so each pruned input column contributes its calibration mean instead of zero.

    Exact through our export only where the linear already has a bias (``mlp_bias`` /
    ``attention_bias`` Llama checkpoints): slicing keeps ``down_proj`` / ``o_proj`` biases as they
    are. Llama-family models without those biases (SmolLM2, LLaMA-2, Mistral, Qwen2's ``o_proj``) get
    no compensation: our export adds no parameters. Returns the names of the compensated linears.
    """
    names = {module: name for name, module in adapter.model.named_modules()}
    done = []
    for i, (view, (ffn, kv)) in enumerate(zip(adapter.views, layout.split(mask.cpu()), strict=True)):
        column_kept = {"down": ffn, "o": kv.repeat_interleave(layout.group_size * adapter.head_dim)}
        for name, kept in column_kept.items():
            linear = getattr(view, name)
            pruned = kept < 0.5
            if linear.bias is None or not pruned.any():
                continue
            mean = stats[i][name].mean.cpu()[pruned]
            shift = linear.weight.detach().cpu().double()[:, pruned] @ mean
            linear.bias.add_(shift.to(linear.bias.device, linear.bias.dtype))
            done.append(names[linear])
    return done


def taylor_scores(
    model: nn.Module, adapter: ModelAdapter, layout: UnitLayout, blocks: torch.Tensor, progress: Progress | None = None
) -> torch.Tensor:
    """LLM-Pruner's element-wise first-order Taylor importance (``taylor=param_first``):
    ``sum |w · dL/dw|`` over the unit's weights and biases, ``L`` the mean next-token loss over the
    calibration blocks (the gradient of the whole calibration batch, as LLM-Pruner takes it).

    Memory: each backward's weight gradient is folded into one float32 buffer per prunable linear by
    a post-accumulate hook and freed at once; embeddings and norms get no gradient at all.
    """
    linears = [getattr(view, name) for view in adapter.views for name, _ in FFN_PARTS + KV_PARTS]
    params = [p for linear in linears for p in linear.parameters(recurse=False)]
    before = {p: p.requires_grad for p in model.parameters()}
    sums = {p: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params}

    def fold(param):
        sums[param].add_(param.grad.float())
        param.grad = None

    model.requires_grad_(False)
    handles = []
    try:
        for p in params:
            p.requires_grad_(True)
            handles.append(p.register_post_accumulate_grad_hook(fold))
        for done, block in enumerate(blocks, 1):
            (block_loss(model, block) / blocks.shape[0]).backward()
            if progress is not None:
                progress(done, blocks.shape[0])
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in before.items():
            p.requires_grad_(flag)
            p.grad = None

    with torch.no_grad():
        def stat(i, name, linear, axis):
            salience = (linear.weight.float() * sums.pop(linear.weight)).abs()
            bias = None if linear.bias is None else (linear.bias.float() * sums.pop(linear.bias)).abs()
            return weight_slices(salience, axis, bias)

        return per_unit(adapter, layout, stat)
