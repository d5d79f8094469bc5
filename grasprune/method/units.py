"""Prunable units, their exact parameter costs, the global budget and the budget projection.

Units are laid out flat: for every layer, its FFN channels, then its KV groups. One score per unit.

With ``align`` N > 1 (``--align``) the projection keeps each layer's FFN channels in multiples of N, so
the checkpoint's widths suit quantisation blocks and GPU kernels: see ``project``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grasprune.config import LAYER_MINIMUMS, TIE_BREAKS, check_keep_ratio
from grasprune.errors import UserError
from grasprune.method.adapters import LayerShape, ModelAdapter

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
        self.tie_orders = {"spread": _spread_tie_order(self), "index": torch.arange(len(layer))}
        self._chunk_layouts: dict[tuple[int, str], ChunkLayout] = {}  # (align, device): see chunk_layout

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
        check_keep_ratio(keep_ratio)
        return int(keep_ratio * self.prunable_params)

    def minimum_params(self, align: int = 1) -> int:
        """Cost of the smallest mask allowed: one KV group and one FFN channel in every layer (with
        ``align`` N, one chunk of N channels: the whole FFN where it is narrower)."""
        return minimum_cost([s.ffn_channels for s in self.shapes], self.ffn_costs, self.kv_costs, align)

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


def minimum_cost(ffn_widths: list[int], ffn_costs: list[int], kv_costs: list[int], align: int = 1) -> int:
    """Parameters of the smallest mask allowed: per layer one KV group and one chunk of ``align`` FFN
    channels (the whole FFN where it is narrower)."""
    return sum(min(align, w) * c for w, c in zip(ffn_widths, ffn_costs, strict=True)) + sum(kv_costs)


def rank(probs: torch.Tensor, layout: UnitLayout, tie_break: str = "spread") -> tuple[torch.Tensor, torch.Tensor]:
    """The projection's ranking: unit ids by probability, highest first (ties broken by ``tie_break``),
    and per unit whether it is its layer's best FFN channel or best KV group (the units ``project``
    always keeps)."""
    device = probs.device
    tie = layout.tie_orders[tie_break].to(device)
    return _rank(probs.detach(), tie, layout.group.to(device), 2 * layout.num_layers)


def _rank(score: torch.Tensor, tie: torch.Tensor, group: torch.Tensor, num_groups: int):
    """Item ids by score, highest first (ties in the order ``tie``), and per item whether it is the
    first-ranked item of its group."""
    order = tie[torch.sort(-score[tie], stable=True).indices]
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=score.device)
    best = torch.full((num_groups,), order.numel(), device=score.device, dtype=torch.long)
    best = best.scatter_reduce(0, group, position, reduce="amin")
    return order, position == best[group]


def _keep_prefix(score, tie, group, cost, num_groups: int, room: int, inside: bool = True) -> torch.Tensor:
    """Per item, whether it is kept: the first-ranked of every group and the longest prefix of the
    ranking that fits ``room``. ``inside``: the first-ranked items' cost is reserved outside ``room`` (the
    prefix counts only the others); otherwise the prefix counts every item (the authors' rule) and the
    first-ranked items of groups the prefix missed are added on top."""
    order, forced = _rank(score, tie, group, num_groups)
    ranked_cost = torch.where(forced[order], 0, cost[order]) if inside else cost[order]
    fits = torch.cumsum(ranked_cost, 0) <= room
    keep = torch.empty_like(fits)
    keep[order] = fits | forced[order]
    return keep


def project(probs: torch.Tensor, layout: UnitLayout, budget: int, align: int = 1, tie_break: str = "spread",
            layer_minimum: str = "inside") -> torch.Tensor:
    """The hard mask (float 0/1) for gate probabilities ``probs``.

    Every layer keeps its best FFN channel and best KV group; the other units, ranked by probability,
    are kept while the cumulative cost stays within the budget: the longest feasible prefix.

    ``tie_break`` orders units of equal probability: ``spread`` interleaves the layers by relative
    position (``_spread_tie_order``), ``index`` takes them in unit order (layer by layer, FFN channels
    before KV groups), as the authors' sort does. ``layer_minimum`` ``inside`` reserves the per-layer
    minimum inside the budget, so the mask always meets it; ``after`` is the authors' rule: the prefix
    counts every unit against the whole budget and a layer it left without an FFN channel or a KV
    group gets its best one added, which can exceed the budget by up to that minimum.

    With ``align`` N > 1 the items are FFN chunks and KV groups (``project_aligned``): each layer keeps
    a multiple of N FFN channels, at least N, or its whole width. ``align`` 1 is the projection above.
    """
    if align < 1:
        raise UserError(f"align must be a positive number of FFN channels (got {align}): pass --align 1 (off) "
                        "or e.g. 64")
    check_choice("tie break", tie_break, TIE_BREAKS)
    check_choice("layer minimum", layer_minimum, LAYER_MINIMUMS)
    inside = layer_minimum == "inside"
    reserved = layout.minimum_params(align)
    if inside:
        check_minimum(budget, reserved, layout.prunable_params, align)
    room = budget - reserved if inside else budget
    if align > 1:
        return project_aligned(probs, layout, room, align, tie_break, inside)
    device = probs.device
    keep = _keep_prefix(probs.detach(), layout.tie_orders[tie_break].to(device), layout.group.to(device),
                        layout.cost.to(device), 2 * layout.num_layers, room, inside)
    return keep.to(torch.float32)


def check_minimum(budget: int, reserved: int, prunable: int, align: int) -> None:
    """Refuse a budget below the per-layer minimum (``reserved`` parameters): the projection's check, which
    the budget preview makes before a run exists."""
    if reserved > budget:
        what = "one FFN channel" if align == 1 else f"a chunk of {align} FFN channels"
        raise UserError(
            f"budget of {budget:,} parameters cannot keep {what} and one KV group per layer "
            f"({reserved:,} needed): raise --keep-ratio to at least {least_keep_ratio(reserved, prunable):.4f}"
            + ("" if align == 1 else " or lower --align")
        )


def least_keep_ratio(reserved: int, prunable: int) -> float:
    """The smallest keep ratio with four decimals whose budget holds ``reserved`` parameters (rounded up,
    so the ratio a message suggests is accepted)."""
    ratio = math.ceil(reserved / prunable * 10_000) / 10_000
    return ratio if int(ratio * prunable) >= reserved else ratio + 1e-4


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")


@dataclass
class ChunkLayout:
    """The aligned projection's items, fixed per layout and ``align`` N: every layer's FFN chunks, then
    the KV units. Chunk c of a layer holds the channels the layer ranks c·N to c·N + N - 1 (the last
    chunk the remainder where the width is not a multiple of N): which channels those are, each call's
    probabilities decide. Per-layer tensors are padded to ``(layers, W)``, W a multiple of N."""

    channel_unit: torch.Tensor  # (L, W): unit id of channel j of layer l (0 past the layer's width)
    channel_valid: torch.Tensor  # (L, W): j is within the layer's width
    channel_flat: torch.Tensor  # flat indices of the valid entries of (L, W)
    chunk_size: torch.Tensor  # (L, W / N): channels in chunk c of layer l (0 past its last chunk)
    chunk_flat: torch.Tensor  # flat indices of the real chunks in (L, W / N): the first items
    kv_unit: torch.Tensor  # unit ids of the KV groups: the remaining items
    cost: torch.Tensor  # per item, in parameters
    group: torch.Tensor  # per item: 2 * layer for chunks, 2 * layer + 1 for KV groups
    tie_orders: dict[str, torch.Tensor]  # per rule: the items in tie order (``spread`` as ``_spread_tie_order``)

    def to(self, device: torch.device | str) -> ChunkLayout:
        moved = {name: value.to(device) for name, value in self.__dict__.items() if name != "tie_orders"}
        return ChunkLayout(**moved, tie_orders={k: v.to(device) for k, v in self.tie_orders.items()})


def chunk_layout(layout: UnitLayout, align: int, device: torch.device | str = "cpu") -> ChunkLayout:
    """``layout``'s chunks of ``align`` channels on ``device``, built once and kept on the layout."""
    key = (align, str(device))
    if key not in layout._chunk_layouts:
        layout._chunk_layouts[key] = _build_chunk_layout(layout, align).to(device)
    return layout._chunk_layouts[key]


def _build_chunk_layout(layout: UnitLayout, align: int) -> ChunkLayout:
    widths = torch.tensor([s.ffn_channels for s in layout.shapes])
    starts = torch.cumsum(torch.tensor([0, *layout.sizes[:-1]]), 0)  # first unit of every group
    chunks = -(-widths // align)  # per layer
    width = int(chunks.max()) * align
    columns = torch.arange(width)
    channel_valid = columns < widths[:, None]
    channel_unit = torch.where(channel_valid, starts[0::2, None] + columns, 0)
    chunk_size = (widths[:, None] - torch.arange(width // align) * align).clamp(0, align)
    chunk_flat = torch.nonzero(chunk_size.flatten() > 0).flatten()
    chunk_layer, chunk_index = chunk_flat // (width // align), chunk_flat % (width // align)
    kv_unit = torch.nonzero(layout.kind == KV).flatten()
    kv_layer = layout.layer[kv_unit]
    group = torch.cat([2 * chunk_layer, 2 * kv_layer + 1])
    relative = torch.cat([chunk_index.double() / chunks[chunk_layer],
                          layout.index[kv_unit].double() / torch.tensor(layout.sizes)[2 * kv_layer + 1]])
    by_group = torch.argsort(group, stable=True)
    ffn_cost = torch.tensor(layout.ffn_costs)
    return ChunkLayout(
        channel_unit=channel_unit,
        channel_valid=channel_valid,
        channel_flat=torch.nonzero(channel_valid.flatten()).flatten(),
        chunk_size=chunk_size,
        chunk_flat=chunk_flat,
        kv_unit=kv_unit,
        cost=torch.cat([chunk_size.flatten()[chunk_flat] * ffn_cost[chunk_layer], layout.cost[kv_unit]]),
        group=group,
        tie_orders={"spread": by_group[torch.argsort(relative[by_group], stable=True)], "index": by_group},
    )


def project_aligned(probs: torch.Tensor, layout: UnitLayout, room: int, align: int, tie_break: str = "spread",
                    inside: bool = True) -> torch.Tensor:
    """The aligned mask, ``room`` being the budget the prefix may fill (``project``'s ``tie_break`` and
    ``layer_minimum``, the latter as ``inside``).

    Each layer's channels are sorted by probability (ties by index) and cut into chunks of ``align``; a
    chunk's score is its channels' mean probability, made non-increasing along the layer (``cummin``: in
    exact arithmetic it already is; rounding must not let a later chunk overtake an earlier one), so a
    layer's kept chunks are always its first ones. Chunks and KV groups then go through the unaligned
    rule: every layer's first chunk and best KV group reserved, then the longest prefix of the ranking
    that fits ``room``. The prefix stops at the first item that does not fit, so less than one item's
    cost (a chunk's or a KV group's) of the budget is left unused, unless every item is kept.
    Vectorised over all units (one sort per layer row, one global sort), deterministic for a device.
    """
    chunks = chunk_layout(layout, align, probs.device)
    score = probs.detach()
    layers = chunks.channel_unit.shape[0]
    padded = score[chunks.channel_unit].masked_fill(~chunks.channel_valid, float("-inf"))
    ranked, by_score = torch.sort(padded, dim=1, descending=True, stable=True)
    sums = ranked.masked_fill(~chunks.channel_valid, 0).view(layers, -1, align).sum(2)
    means = torch.cummin(sums / chunks.chunk_size.clamp(min=1), dim=1).values
    items = torch.cat([means.flatten()[chunks.chunk_flat], score[chunks.kv_unit]])
    keep = _keep_prefix(items, chunks.tie_orders[tie_break], chunks.group, chunks.cost, 2 * layers, room,
                        inside).to(torch.float32)
    first = chunks.chunk_flat.numel()
    chunk_keep = torch.zeros(means.numel(), device=score.device, dtype=torch.float32).index_copy_(0, chunks.chunk_flat, keep[:first])
    channel_keep = chunk_keep.view(layers, -1).repeat_interleave(align, dim=1).flatten()[chunks.channel_flat]
    units = torch.gather(chunks.channel_unit, 1, by_score).flatten()[chunks.channel_flat]
    mask = torch.zeros(layout.num_units, device=score.device, dtype=torch.float32)
    mask[units] = channel_keep
    mask[chunks.kv_unit] = keep[first:]
    return mask
