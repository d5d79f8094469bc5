"""vLLM plugin for GRASPrune checkpoints (``vllm.general_plugins`` entry point ``grasprune``).

    pip install integrations/vllm_grasprune        # next to vLLM
    LLM(model=checkpoint_folder, trust_remote_code=True)

``trust_remote_code`` lets transformers read the checkpoint's config class (shipped in the folder); the
model itself is vLLM's, from this plugin.
"""

from __future__ import annotations

ARCHITECTURES = {
    name: f"vllm_grasprune.models:{name}"
    for name in (
        "GraspruneLlamaForCausalLM",
        "GraspruneMistralForCausalLM",
        "GraspruneQwen2ForCausalLM",
        "GraspruneQwen3ForCausalLM",
    )
}


def register() -> None:
    """Register the GRASPrune architectures with vLLM, lazily (by "module:Class" name: vLLM imports the
    classes only when a checkpoint names one). Called by vLLM in every process it starts."""
    try:
        from vllm import ModelRegistry
    except ImportError as error:
        raise ImportError("vllm_grasprune.register() needs vLLM: `pip install vllm` on a machine with a "
                          "supported GPU, then load checkpoints with vllm.LLM") from error
    supported = set(ModelRegistry.get_supported_archs())
    for name, target in ARCHITECTURES.items():
        if name not in supported:
            ModelRegistry.register_model(name, target)
