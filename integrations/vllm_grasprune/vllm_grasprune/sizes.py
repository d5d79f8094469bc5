"""Per-layer sizes of a GRASPrune checkpoint, read from its config; no vLLM import.

A pruned layer ``i`` keeps ``layer_num_key_value_heads[i]`` KV heads, each with its
``num_attention_heads // num_key_value_heads`` query heads (the group size never changes), and
``layer_intermediate_sizes[i]`` FFN channels; the head size is the base model's. vLLM's Llama layers
read these four numbers from the config they are given, so each layer gets a copy of the model's
config with its own values.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSizes:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int


def layer_sizes(config) -> list[LayerSizes]:
    """Every decoder layer's sizes; ``ValueError`` unless ``config`` is a GRASPrune checkpoint's."""
    ffn = getattr(config, "layer_intermediate_sizes", None)
    kv = getattr(config, "layer_num_key_value_heads", None)
    layers = config.num_hidden_layers
    if ffn is None or kv is None:
        raise ValueError("not a GRASPrune checkpoint: config.json has no layer_intermediate_sizes / "
                         "layer_num_key_value_heads (export it with grasprune)")
    if len(ffn) != layers or len(kv) != layers:
        raise ValueError(f"config.json lists {len(ffn)} FFN widths and {len(kv)} KV-head counts for "
                         f"{layers} layers")
    if min(ffn) < 1 or min(kv) < 1:
        raise ValueError("config.json has a layer with no FFN channel or no KV head")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    group = config.num_attention_heads // config.num_key_value_heads
    return [LayerSizes(k * group, k, head_dim, f) for f, k in zip(ffn, kv, strict=True)]


def layer_config(config, index: int):
    """A shallow copy of ``config`` that describes layer ``index`` alone (what vLLM's layers read)."""
    sizes = layer_sizes(config)[index]
    layer = copy.copy(config)
    layer.num_attention_heads = sizes.num_heads
    layer.num_key_value_heads = sizes.num_kv_heads
    layer.head_dim = sizes.head_dim  # explicit: hidden_size // num_attention_heads no longer gives it
    layer.intermediate_size = sizes.intermediate_size
    return layer


def layer_index(prefix: str) -> int:
    """The layer number in a vLLM module prefix such as ``model.layers.7``."""
    numbers = [part for part in prefix.split(".") if part.isdigit()]
    if len(numbers) != 1:
        raise ValueError(f"no single layer number in module prefix {prefix!r}")
    return int(numbers[0])
