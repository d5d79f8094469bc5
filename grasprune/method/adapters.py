"""Architecture adapters: everything the pruning engine needs to know about a model family.

The engine never names an architecture; it asks the adapter for each decoder layer's projections,
the module whose output carries the keys to gate, and where KV scales fold exactly.
Every supported family shares Hugging Face's Llama module layout
(``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from grasprune.errors import UserError


@dataclass(frozen=True)
class Family:
    """What differs between supported families."""

    name: str
    # Qwen3 normalises each key head after k_proj (k_norm): the KV gate acts after that norm, and
    # a KV scale cannot fold into k_proj (the norm would divide it away), so it folds into v_proj only.
    has_qk_norm: bool = False

    @property
    def scale_keys(self) -> bool:
        return not self.has_qk_norm


FAMILIES = {
    "llama": Family("llama"),
    "mistral": Family("mistral"),
    "qwen2": Family("qwen2"),
    "qwen3": Family("qwen3", has_qk_norm=True),
}
SUPPORTED = ", ".join(sorted(FAMILIES))


def family_of(config) -> Family:
    """The family of a Hugging Face config (our pruned ``grasprune_<family>`` types included)."""
    return family_named(getattr(config, "model_type", ""))


def family_named(model_type: str) -> Family:
    base = model_type.removeprefix("grasprune_")
    if base not in FAMILIES:
        raise UserError(f"unsupported architecture '{model_type}': supported are {SUPPORTED}")
    return FAMILIES[base]


@dataclass(frozen=True)
class LayerShape:
    ffn_channels: int
    kv_groups: int
    q_heads: int


class LayerView:
    """The projections of one decoder layer."""

    def __init__(self, layer: nn.Module, family: Family):
        attn, mlp = layer.self_attn, layer.mlp
        self.q, self.k, self.v, self.o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.gate, self.up, self.down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.key_output = attn.k_norm if family.has_qk_norm else attn.k_proj


class ModelAdapter:
    """Shapes, unit costs and module access for one loaded causal LM."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.family = family_of(model.config)
        config = model.config
        self.hidden = config.hidden_size
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.group_size = config.num_attention_heads // config.num_key_value_heads
        self.views = [LayerView(layer, self.family) for layer in model.model.layers]

    def shapes(self) -> list[LayerShape]:
        """Per-layer unit counts read from the weights (so pruned models work too)."""
        return [
            LayerShape(
                ffn_channels=view.down.in_features,
                kv_groups=view.k.out_features // self.head_dim,
                q_heads=view.q.out_features // self.head_dim,
            )
            for view in self.views
        ]

    def ffn_channel_cost(self, view: LayerView) -> int:
        """Parameters that leave with one FFN channel: a row of gate/up, a column of down, their biases."""
        biases = int(view.gate.bias is not None) + int(view.up.bias is not None)
        return 3 * self.hidden + biases

    def kv_group_cost(self, view: LayerView) -> int:
        """Parameters that leave with one KV group: K and V heads, G query heads, their o_proj columns."""
        rows = (self.group_size + 2) * self.head_dim
        biases = sum(
            width * self.head_dim
            for proj, width in ((view.q, self.group_size), (view.k, 1), (view.v, 1))
            if proj.bias is not None
        )
        return rows * self.hidden + self.group_size * self.head_dim * self.hidden + biases
