"""Models pruned by GRASPrune: a stock family model whose layers have their own widths.

Each decoder layer ``i`` keeps ``layer_intermediate_sizes[i]`` FFN channels and
``layer_num_key_value_heads[i]`` KV heads with their query heads; attention reshapes by
``head_dim`` and repeats each KV head for ``num_attention_heads // num_key_value_heads`` query heads,
so only the projection shapes change. Depends on transformers only: this file ships inside every
exported checkpoint.
"""

from torch import nn
from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

from .configuration_grasprune import (
    GraspruneLlamaConfig,
    GraspruneMistralConfig,
    GraspruneQwen2Config,
    GraspruneQwen3Config,
)


def _resize(linear: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(
        in_features, out_features, bias=linear.bias is not None,
        device=linear.weight.device, dtype=linear.weight.dtype,
    )


def resize_layers(model: nn.Module, config) -> None:
    """Give every decoder layer its own FFN width and number of KV groups."""
    if config.layer_intermediate_sizes is None:
        return
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    group = config.num_attention_heads // config.num_key_value_heads
    for layer, ffn, kv in zip(
        model.model.layers, config.layer_intermediate_sizes, config.layer_num_key_value_heads, strict=True
    ):
        attn, mlp = layer.self_attn, layer.mlp
        attn.q_proj = _resize(attn.q_proj, hidden, kv * group * head_dim)
        attn.k_proj = _resize(attn.k_proj, hidden, kv * head_dim)
        attn.v_proj = _resize(attn.v_proj, hidden, kv * head_dim)
        attn.o_proj = _resize(attn.o_proj, kv * group * head_dim, hidden)
        mlp.gate_proj = _resize(mlp.gate_proj, hidden, ffn)
        mlp.up_proj = _resize(mlp.up_proj, hidden, ffn)
        mlp.down_proj = _resize(mlp.down_proj, ffn, hidden)


def _pruned_model(base, config_class):
    class PrunedForCausalLM(base):
        def __init__(self, config):
            super().__init__(config)
            resize_layers(self, config)

    PrunedForCausalLM.config_class = config_class
    PrunedForCausalLM.__name__ = PrunedForCausalLM.__qualname__ = "Grasprune" + base.__name__
    return PrunedForCausalLM


GraspruneLlamaForCausalLM = _pruned_model(LlamaForCausalLM, GraspruneLlamaConfig)
GraspruneMistralForCausalLM = _pruned_model(MistralForCausalLM, GraspruneMistralConfig)
GraspruneQwen2ForCausalLM = _pruned_model(Qwen2ForCausalLM, GraspruneQwen2Config)
GraspruneQwen3ForCausalLM = _pruned_model(Qwen3ForCausalLM, GraspruneQwen3Config)
