"""Fold the scales into the weights, slice every layer to its kept units, save and load checkpoints.

The checkpoint is a Hugging Face folder whose ``config.json`` maps to modeling code shipped in the
folder (``trust_remote_code=True`` in stock transformers), and which ``load_pruned`` reads without
remote code. It is written to a temporary folder and renamed: a folder at the final name is complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from grasprune.atomic import write_folder_atomic
from grasprune.errors import UserError
from grasprune.method.adapters import ModelAdapter, family_named
from grasprune.method.units import UnitLayout

# The modeling classes import transformers: loaded where used, so that checking a checkpoint folder (a
# heal's or an export's bad input) answers in the time it takes to import torch.
MODELING_DIR = Path(__file__).parent / "hf_modeling"
MODELING_FILES = ("configuration_grasprune.py", "modeling_grasprune.py")
FAMILY_CLASS = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}


def _kept(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask > 0.5).flatten().cpu()


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


@torch.no_grad()
def sliced_state_dict(adapter: ModelAdapter, layout: UnitLayout, mask: torch.Tensor, gamma: torch.Tensor) -> dict:
    """The model's weights with the scales folded in and every layer cut to its kept units."""
    model = adapter.model
    state = {name: tensor for name, tensor in model.state_dict().items()}
    names = {module: name for name, module in model.named_modules()}
    dh, group = adapter.head_dim, adapter.group_size
    for view, (ffn_mask, kv_mask), (ffn_gamma, kv_gamma) in zip(
        adapter.views, layout.split(mask.cpu()), layout.split(gamma.cpu()), strict=True
    ):
        channels, groups = _kept(ffn_mask), _kept(kv_mask)
        kv_rows = _head_rows(groups, dh)
        q_rows = _head_rows((groups[:, None] * group + torch.arange(group)).flatten(), dh)
        ffn_scale = ffn_gamma[channels]
        kv_scale = kv_gamma[groups].repeat_interleave(dh)
        plan = [
            (view.gate, channels, None, None),
            (view.up, channels, None, None),
            (view.down, None, channels, ffn_scale),
            (view.q, q_rows, None, None),
            (view.k, kv_rows, None, kv_scale if adapter.family.scale_keys else None),
            (view.v, kv_rows, None, kv_scale),
            (view.o, None, q_rows, None),
        ]
        for linear, rows, cols, scale in plan:
            prefix = names[linear]
            weight = linear.weight
            if rows is not None:
                weight = weight[rows]
                if scale is not None:
                    weight = weight * scale.to(weight.device, weight.dtype)[:, None]
            else:
                weight = weight[:, cols] * scale.to(weight.device, weight.dtype)[None, :] if scale is not None else weight[:, cols]
            state[f"{prefix}.weight"] = weight.contiguous()
            if linear.bias is not None and rows is not None:
                bias = linear.bias[rows]
                state[f"{prefix}.bias"] = (bias * scale.to(bias.device, bias.dtype) if scale is not None else bias).contiguous()
    return state


def pruned_config(base_config, layout: UnitLayout, mask: torch.Tensor):
    """The exported config: the base config plus per-layer widths and an ``auto_map``."""
    from grasprune.method.hf_modeling import configuration_grasprune

    family = family_named(base_config.model_type)
    stem = FAMILY_CLASS[family.name]
    config_class = getattr(configuration_grasprune, f"Grasprune{stem}Config")
    ffn, kv = layout.kept_counts(mask)
    fields = base_config.to_dict()
    for key in ("model_type", "auto_map", "architectures", "transformers_version", "quantization_config"):
        fields.pop(key, None)
    fields.update(layer_intermediate_sizes=ffn, layer_num_key_value_heads=kv)
    config = config_class(**fields)
    config.architectures = [f"Grasprune{stem}ForCausalLM"]
    config.auto_map = {
        "AutoConfig": f"configuration_grasprune.Grasprune{stem}Config",
        "AutoModelForCausalLM": f"modeling_grasprune.Grasprune{stem}ForCausalLM",
    }
    return config


def model_class_for(model_type: str):
    from grasprune.method.hf_modeling import modeling_grasprune

    family = family_named(model_type)
    return getattr(modeling_grasprune, f"Grasprune{FAMILY_CLASS[family.name]}ForCausalLM")


@torch.no_grad()
def sliced_model(adapter: ModelAdapter, layout: UnitLayout, mask: torch.Tensor,
                 gamma: torch.Tensor | None = None) -> torch.nn.Module:
    """The exported model, built in memory: the source's weights cut to ``mask`` (scales ``gamma``
    folded, none by default), in the source's dtype and on its device, frozen, in eval mode."""
    source = adapter.model
    weight = next(source.parameters())
    config = pruned_config(source.config, layout, mask)
    state = sliced_state_dict(adapter, layout, mask, torch.ones(layout.num_units) if gamma is None else gamma)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(weight.dtype)  # built directly in the source's precision: no float32 copy
    try:
        with torch.device(weight.device):
            model = model_class_for(config.model_type)(config)
    finally:
        torch.set_default_dtype(previous)
    model.load_state_dict(state)
    for name, buffer in source.named_buffers():  # e.g. RoPE frequencies, cast with the source
        model.get_buffer(name).copy_(buffer)
    return model.eval().requires_grad_(False)


def save_pruned(
    out_dir: Path,
    adapter: ModelAdapter,
    layout: UnitLayout,
    mask: torch.Tensor,
    gamma: torch.Tensor,
    tokenizer,
    report: dict,
    overwrite: bool = False,
) -> Path:
    """Fold, slice and write the checkpoint folder atomically (temporary folder, then rename)."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not overwrite:
        raise UserError(f"output folder {out_dir} exists: pass --overwrite or another --out")
    config = pruned_config(adapter.model.config, layout, mask)
    state = sliced_state_dict(adapter, layout, mask, gamma)
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return write_folder_atomic(
        out_dir, lambda tmp: _write_folder(tmp, config, state, adapter.model, tokenizer, report), overwrite=True
    )


def _write_folder(folder: Path, config, state: dict, source_model, tokenizer, report: dict) -> None:
    config.dtype = next(iter(state.values())).dtype
    config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if getattr(source_model, "generation_config", None) is not None:
        source_model.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    for name in MODELING_FILES:
        shutil.copyfile(MODELING_DIR / name, folder / name)
    (folder / "grasprune.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "README.md").write_text(model_card(report))


def model_card(report: dict) -> str:
    params = report.get("params", {})
    return (
        f"# {report.get('base_model', 'model')} pruned with GRASPrune\n\n"
        f"Structured pruning of FFN channels and KV-head groups under one global budget "
        f"(keep ratio {report.get('keep_ratio')}): {params.get('total_after', 0):,} parameters "
        f"(from {params.get('total_before', 0):,}).\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)\n"
        "tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)\n```\n\n"
        "Or without remote code: `import grasprune; model, tokenizer = grasprune.load_pruned(path)`.\n"
        "Details (mask, per-layer counts, settings, metrics) are in `grasprune.json`.\n"
    )


def checked_pruned_folder(path) -> Path:
    """``path`` resolved, refused unless it is a GRASPrune checkpoint folder with safetensors weights."""
    folder = Path(path).expanduser().resolve()
    if not (folder / "grasprune.json").is_file() or not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a GRASPrune checkpoint (no grasprune.json/config.json)")
    if not any(folder.glob("*.safetensors")):
        raise UserError(f"{folder} has no weights (*.safetensors): export the checkpoint again")
    return folder


def load_pruned(path, dtype: torch.dtype | None = None, device: str = "cpu"):
    """Load a GRASPrune checkpoint with our own classes (no remote code): ``(model, tokenizer)``."""
    from transformers import AutoTokenizer

    folder = checked_pruned_folder(path)
    cls = model_class_for(json.loads((folder / "config.json").read_text()).get("model_type", ""))
    model = cls.from_pretrained(folder, dtype=dtype or "auto", use_safetensors=True)
    # our config passed in: AutoTokenizer would otherwise load the folder's config through its auto_map
    tokenizer = AutoTokenizer.from_pretrained(folder, config=model.config)
    return model.to(device).eval(), tokenizer
