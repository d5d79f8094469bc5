"""vLLM model classes for GRASPrune checkpoints: vLLM's own Llama and Mistral, each decoder layer built
from a config that carries that layer's head counts and FFN width (``sizes.layer_config``).

The checkpoint's tensors keep the standard Llama names with smaller shapes, so vLLM's weight loading
(q/k/v packed into ``qkv_proj``, gate/up into ``gate_up_proj``) is used unchanged: each packed
parameter was built with its layer's sizes. Every attention layer registers its own KV-cache shape,
which vLLM groups as one attention type with per-layer page sizes.
"""

from __future__ import annotations

from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralDecoderLayer, MistralForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM

from .sizes import layer_config, layer_index


def _pruned_layer(base: type[nn.Module]) -> type[nn.Module]:
    class PrunedDecoderLayer(base):
        def __init__(self, vllm_config: VllmConfig, prefix: str = "", config=None, **kwargs) -> None:
            config = layer_config(config or vllm_config.model_config.hf_config, layer_index(prefix))
            super().__init__(vllm_config=vllm_config, prefix=prefix, config=config, **kwargs)

    PrunedDecoderLayer.__name__ = PrunedDecoderLayer.__qualname__ = "Grasprune" + base.__name__
    return PrunedDecoderLayer


GraspruneLlamaDecoderLayer = _pruned_layer(LlamaDecoderLayer)
GraspruneMistralDecoderLayer = _pruned_layer(MistralDecoderLayer)


class GraspruneLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=GraspruneLlamaDecoderLayer)


class GraspruneMistralForCausalLM(MistralForCausalLM):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=GraspruneMistralDecoderLayer)


_QWEN_REFUSAL = ("vllm-grasprune serves pruned Llama and Mistral checkpoints only; run pruned Qwen2/Qwen3 "
                 "ones with transformers (trust_remote_code=True) or grasprune.load_pruned")


def _refused(base: type[nn.Module]) -> type[nn.Module]:
    class RefusedForCausalLM(base):
        """Registered so that vLLM refuses the checkpoint in one line instead of falling back to its
        Transformers backend, which would give every layer the base model's KV-head count."""

        def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
            raise NotImplementedError(_QWEN_REFUSAL)

    RefusedForCausalLM.__name__ = RefusedForCausalLM.__qualname__ = "Grasprune" + base.__name__
    return RefusedForCausalLM


GraspruneQwen2ForCausalLM = _refused(Qwen2ForCausalLM)
GraspruneQwen3ForCausalLM = _refused(Qwen3ForCausalLM)
