"""Configs of GRASPrune-pruned models: a stock family config plus per-layer widths.

Shipped inside every exported checkpoint (loaded there with ``trust_remote_code=True``) and used by
``grasprune.load_pruned`` directly. Depends on transformers only.
"""

from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config


def _pruned_config(base):
    class PrunedConfig(base):
        """``layer_intermediate_sizes[i]`` FFN channels and ``layer_num_key_value_heads[i]`` KV heads
        (each with its ``num_attention_heads // num_key_value_heads`` query heads) in layer ``i``."""

        model_type = "grasprune_" + base.model_type

        def __init__(self, layer_intermediate_sizes=None, layer_num_key_value_heads=None, **kwargs):
            self.layer_intermediate_sizes = layer_intermediate_sizes
            self.layer_num_key_value_heads = layer_num_key_value_heads
            super().__init__(**kwargs)

    PrunedConfig.__name__ = PrunedConfig.__qualname__ = "Grasprune" + base.__name__
    return PrunedConfig


GraspruneLlamaConfig = _pruned_config(LlamaConfig)
GraspruneMistralConfig = _pruned_config(MistralConfig)
GraspruneQwen2Config = _pruned_config(Qwen2Config)
GraspruneQwen3Config = _pruned_config(Qwen3Config)
