"""What a keep ratio means for a model, from its config alone (no weights are loaded): the counts the
studio's budget preview shows and the check ``check_inputs`` makes before a run folder exists.

The model is built on the ``meta`` device, so the counts are exactly the ones the pipeline computes on the
loaded model (``ModelAdapter`` unit costs, tied embeddings counted once).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from grasprune.config import check_keep_ratio
from grasprune.method.models import model_config
from grasprune.method.units import check_minimum, layout_of, least_keep_ratio, minimum_cost


@dataclass(frozen=True)
class BudgetPreview:
    total_params: int
    prunable_params: int
    ffn_widths: tuple[int, ...]  # per layer
    ffn_costs: tuple[int, ...]  # parameters per FFN channel, per layer
    kv_costs: tuple[int, ...]  # parameters per KV group, per layer
    align: int = 1  # kept FFN channels per layer come in multiples of this (``--align``)

    @property
    def num_layers(self) -> int:
        return len(self.ffn_widths)

    @property
    def minimum_params(self) -> int:
        """One KV group and one FFN channel per layer (with ``align`` N: N channels, or the whole FFN)."""
        return minimum_cost(list(self.ffn_widths), list(self.ffn_costs), list(self.kv_costs), self.align)

    def aligned(self, align: int) -> BudgetPreview:
        """The same model pruned with ``--align align``: its minimum grows to one chunk per layer."""
        return dataclasses.replace(self, align=align)

    @property
    def minimum_keep_ratio(self) -> float:
        return least_keep_ratio(self.minimum_params, self.prunable_params)

    def budget(self, keep_ratio: float) -> int:
        """The pipeline's budget: ``floor(keep_ratio * prunable)`` parameters may be kept."""
        check_keep_ratio(keep_ratio)
        return int(keep_ratio * self.prunable_params)

    def check(self, keep_ratio: float) -> None:
        """Raise the pipeline's one-line error for a keep ratio it would refuse."""
        check_minimum(self.budget(keep_ratio), self.minimum_params, self.prunable_params, self.align)

    def summary(self, keep_ratio: float) -> dict:
        """At most this much is kept (the mask fills the budget up to one unit's cost, or one chunk's)."""
        kept = self.budget(keep_ratio)
        removed = self.prunable_params - kept
        return {
            "kept_prunable": kept,
            "removed_params": removed,
            "removed_pct_of_prunable": 100.0 * removed / self.prunable_params,
            "removed_pct_of_total": 100.0 * removed / self.total_params,
            "total_after": self.total_params - removed,
        }


def meta_model(spec: str, trust_remote_code: bool = False):
    """The model behind ``spec`` built on the ``meta`` device: its shapes without its weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from grasprune.method.adapters import family_of

    config = model_config(spec, trust_remote_code)
    family_of(config)  # unsupported architectures fail here, with the pipeline's message
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def budget_preview(spec: str, trust_remote_code: bool = False) -> BudgetPreview:
    """Parameter counts of the model behind ``spec``."""
    from grasprune.method.adapters import ModelAdapter

    model = meta_model(spec, trust_remote_code)
    layout = layout_of(ModelAdapter(model))
    return BudgetPreview(
        total_params=sum(p.numel() for p in model.parameters()),
        prunable_params=layout.prunable_params,
        ffn_widths=tuple(s.ffn_channels for s in layout.shapes),
        ffn_costs=tuple(layout.ffn_costs),
        kv_costs=tuple(layout.kv_costs),
    )

