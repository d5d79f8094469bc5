"""Prunable units, their exact parameter costs, the global budget and the budget projection.

Units are laid out flat: for every layer, its FFN channels, then its KV groups. One score per unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import LayerShape, ModelAdapter
from .errors import UserError

FFN, KV = 0, 1


@dataclass
class UnitLayout:
    """Where each unit lives and what it costs (in parameters)."""

    shapes: list[LayerShape]
    ffn_costs: list[int]  # parameters per FFN channel, per layer
    kv_costs: list[int]  # parameters per KV group, per layer
    group_size: int  # query heads per KV group

    def __post_init__(self):
        layer, kind, index, cost, sizes = [], [], [], [], []
        for i, shape in enumerate(self.shapes):
            for k, n, c in ((FFN, shape.ffn_channels, self.ffn_costs[i]), (KV, shape.kv_groups, self.kv_costs[i])):
                layer += [i] * n
                kind += [k] * n
                index += list(range(n))
                cost += [c] * n
                sizes.append(n)
        self.layer = torch.tensor(layer, dtype=torch.long)
        self.kind = torch.tensor(kind, dtype=torch.long)
        self.index = torch.tensor(index, dtype=torch.long)
        self.cost = torch.tensor(cost, dtype=torch.long)
        self.sizes = sizes  # [ffn_0, kv_0, ffn_1, kv_1, ...]: for torch.split of a flat vector
        self.group = self.layer * 2 + self.kind
        self.tie_order = _spread_tie_order(self)

    @property
    def num_units(self) -> int:
        return int(self.cost.numel())

    @property
    def num_layers(self) -> int:
        return len(self.shapes)

    @property
    def prunable_params(self) -> int:
        return int(self.cost.sum())

    def budget(self, keep_ratio: float) -> int:
        """Parameters that may be kept: ``floor(keep_ratio * P)``."""
        if not 0.0 < keep_ratio <= 1.0:
            raise UserError(f"keep ratio {keep_ratio} is outside (0, 1]: pass --keep-ratio between 0 and 1")
        return int(keep_ratio * self.prunable_params)

    def minimum_params(self) -> int:
        """Cost of the smallest mask allowed: one FFN channel and one KV group in every layer."""
        return sum(self.ffn_costs) + sum(self.kv_costs)

    def split(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer ``(ffn, kv)`` views of a flat per-unit vector."""
        parts = torch.split(flat, self.sizes)
        return [(parts[2 * i], parts[2 * i + 1]) for i in range(self.num_layers)]

    def kept_counts(self, mask: torch.Tensor) -> tuple[list[int], list[int]]:
        """Kept FFN channels and KV groups per layer."""
        counts = torch.zeros(2 * self.num_layers, dtype=torch.long).index_add_(
            0, self.group, mask.detach().to("cpu", torch.long)
        )
        return counts[0::2].tolist(), counts[1::2].tolist()

    def kept_params(self, mask: torch.Tensor) -> int:
        return int((self.cost * mask.detach().to("cpu", torch.long)).sum())

    def to_json(self) -> dict:
        return {
            "layers": [s.__dict__ for s in self.shapes],
            "ffn_costs": self.ffn_costs,
            "kv_costs": self.kv_costs,
            "group_size": self.group_size,
        }


def layout_of(adapter: ModelAdapter) -> UnitLayout:
    return UnitLayout(
        shapes=adapter.shapes(),
        ffn_costs=[adapter.ffn_channel_cost(v) for v in adapter.views],
        kv_costs=[adapter.kv_group_cost(v) for v in adapter.views],
        group_size=adapter.group_size,
    )


def _spread_tie_order(layout: UnitLayout) -> torch.Tensor:
    """The deliberate tie-break: among equal probabilities, units are interleaved across layers and
    kinds by their relative position in their layer (0, 1/n, 2/n, ...), so a tied ranking keeps about
    the same fraction of every layer instead of whole layers in index order."""
    sizes = torch.tensor(layout.sizes, dtype=torch.float64)[layout.group]
    relative = layout.index.to(torch.float64) / sizes
    return torch.argsort(relative, stable=True)  # units are laid out by group, so equal positions stay in group order


def rank(probs: torch.Tensor, layout: UnitLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection's ranking: unit ids by probability, highest first (ties broken by
    ``layout.tie_order``), and per unit whether it is its layer's best FFN channel or best KV group
    (the units ``project`` reserves)."""
    device = probs.device
    tie = layout.tie_order.to(device)
    order = tie[torch.sort(-probs.detach()[tie], stable=True).indices]
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=device)
    group = layout.group.to(device)
    best = torch.full((2 * layout.num_layers,), order.numel(), device=device, dtype=torch.long)
    best = best.scatter_reduce(0, group, position, reduce="amin")
    return order, position == best[group]


def project(probs: torch.Tensor, layout: UnitLayout, budget: int) -> torch.Tensor:
    """The hard, budget-feasible mask (float 0/1) for gate probabilities ``probs``.

    Every layer first gets its best FFN channel and best KV group (their cost reserved inside the
    budget); the other units, ranked by probability (ties broken by ``layout.tie_order``), are kept
    while the cumulative cost stays within what is left: the longest feasible prefix.
    """
    reserved = layout.minimum_params()
    if reserved > budget:
        raise UserError(
            f"budget of {budget:,} parameters cannot keep one FFN channel and one KV group per layer "
            f"({reserved:,} needed): raise --keep-ratio to at least {reserved / layout.prunable_params:.4f}"
        )
    order, forced = rank(probs, layout)
    cost = layout.cost.to(probs.device)
    ranked_cost = torch.where(forced[order], 0, cost[order])
    fits = torch.cumsum(ranked_cost, 0) <= budget - reserved
    keep_ranked = fits | forced[order]
    mask = torch.zeros_like(probs, dtype=torch.float32)
    mask[order] = keep_ranked.to(torch.float32)
    return mask
