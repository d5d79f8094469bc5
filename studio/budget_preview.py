"""What a keep ratio means for a model, from its config alone (no weights are loaded).

The model is built on the ``meta`` device, so the counts are exactly the ones the pipeline computes
on the loaded model (``ModelAdapter`` unit costs, tied embeddings counted once).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from grasprune.errors import UserError
from grasprune.method.models import (
    EMBEDDED_ALIAS,
    HUB_ID,
    converted_gguf_folder,
    embedded_gguf_path,
    is_converted,
    is_pruned_folder,
)
from grasprune.method.units import layout_of, minimum_cost


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
        return self.minimum_params / self.prunable_params

    def budget(self, keep_ratio: float) -> int:
        """The pipeline's budget: ``floor(keep_ratio * prunable)`` parameters may be kept."""
        return int(keep_ratio * self.prunable_params)

    def check(self, keep_ratio: float) -> None:
        """Raise the pipeline's one-line error for a keep ratio it would refuse."""
        if not 0.0 < keep_ratio <= 1.0:
            raise UserError(f"keep ratio {keep_ratio} is outside (0, 1]: choose a keep ratio between 0 and 1")
        if self.minimum_params > self.budget(keep_ratio):
            what = "one FFN channel" if self.align == 1 else f"a chunk of {self.align} FFN channels"
            raise UserError(
                f"keep ratio {keep_ratio:g} is impossible for this model: keeping {what} and one KV group "
                f"per layer needs {self.minimum_params:,} parameters; raise it to at least "
                f"{self.minimum_keep_ratio:.4f}" + ("" if self.align == 1 else " or lower the alignment")
            )

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


def model_config(spec: str, trust_remote_code: bool = False):
    """The Hugging Face config behind a model spec, read the way ``load_model`` resolves the spec."""
    from transformers import AutoConfig

    spec = str(spec).strip()
    if not spec:
        raise UserError("no model given: choose smollm2-135m, a hub id, a folder or a .gguf file")
    try:
        if spec == EMBEDDED_ALIAS or spec.lower().endswith(".gguf"):
            path = embedded_gguf_path() if spec == EMBEDDED_ALIAS else Path(spec).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"GGUF file not found: {spec}")
            converted = converted_gguf_folder(path)
            if is_converted(converted):  # its config.json: milliseconds, where the GGUF's header takes seconds
                return AutoConfig.from_pretrained(converted)
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        folder = Path(spec).expanduser()
        if folder.exists():
            if is_pruned_folder(folder):
                raise UserError(f"{spec} is already a GRASPrune checkpoint: prune its base model instead")
            if not (folder / "config.json").is_file():
                raise UserError(f"{spec} has no config.json: pass a Hugging Face model folder or a .gguf file")
            return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        if not HUB_ID.match(spec):
            raise UserError(
                f"unknown model '{spec}': pass {EMBEDDED_ALIAS}, a hub id (owner/name), a local folder or a .gguf file"
            )
        return AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except UserError:
        raise
    except Exception as err:  # unreadable file, no network, missing repo: one message
        raise UserError(f"cannot read the config of model '{spec}' ({type(err).__name__})") from err


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


def preview(spec: str, trust_remote_code: bool = False) -> BudgetPreview:
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
