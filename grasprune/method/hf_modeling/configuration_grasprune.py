"""Configs of GRASPrune-pruned models: a stock family config plus per-layer widths.

Shipped inside every exported checkpoint (loaded there with ``trust_remote_code=True``) and used by
``grasprune.load_pruned`` directly. Depends on transformers only.
"""

from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config


def _pruned_config(base):
    class PrunedConfig(base):
        """``layer_intermediate_sizes[i]`` FFN channels and ``layer_num_key_value_heads[i]`` KV heads
        (each with its ``num_attention_heads // num_key_value_heads`` query heads) in layer ``i``.

        The JSON also carries the same widths as transformers' ``per_layer_config`` (layer index ->
        overrides), for readers that know that convention. It is written from the two lists and checked
        against them when read, but not handed to transformers: a config holding it refuses global reads
        of ``intermediate_size`` and ``num_key_value_heads``, which the stock modeling code does."""

        model_type = "grasprune_" + base.model_type

        def __init__(self, layer_intermediate_sizes=None, layer_num_key_value_heads=None, per_layer_config=None,
                     **kwargs):
            self.layer_intermediate_sizes = layer_intermediate_sizes
            self.layer_num_key_value_heads = layer_num_key_value_heads
            super().__init__(**kwargs)
            if per_layer_config is not None and per_layer_config != self.per_layer_overrides():
                raise ValueError("config.json: per_layer_config disagrees with layer_intermediate_sizes / "
                                 "layer_num_key_value_heads; they must describe the same layers")

        def per_layer_overrides(self) -> dict | None:
            """The widths in transformers' ``per_layer_config`` form, every layer and value written out
            (keys zero-padded as transformers writes them); ``None`` for an unpruned config."""
            if self.layer_intermediate_sizes is None:
                return None
            head_dim = getattr(self, "head_dim", None) or self.hidden_size // self.num_attention_heads
            group = self.num_attention_heads // self.num_key_value_heads
            digits = len(str(len(self.layer_intermediate_sizes) - 1))
            return {
                str(i).zfill(digits): {"intermediate_size": ffn, "num_key_value_heads": kv,
                                       "num_attention_heads": kv * group, "head_dim": head_dim}
                for i, (ffn, kv) in enumerate(zip(self.layer_intermediate_sizes, self.layer_num_key_value_heads))
            }

        def to_dict(self):
            output = super().to_dict()
            if self.layer_intermediate_sizes is not None:
                output["per_layer_config"] = self.per_layer_overrides()
            return output

    PrunedConfig.__name__ = PrunedConfig.__qualname__ = "Grasprune" + base.__name__
    return PrunedConfig


GraspruneLlamaConfig = _pruned_config(LlamaConfig)
GraspruneMistralConfig = _pruned_config(MistralConfig)
GraspruneQwen2Config = _pruned_config(Qwen2Config)
GraspruneQwen3Config = _pruned_config(Qwen3Config)
