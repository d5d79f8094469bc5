"""Where the frozen backbone lives while the gates train, and where the export's weights come from.

Three placements behind one interface (``Placed``):

- **One device** (the default): the whole model on ``--device`` in the training dtype; export restores
  the checkpoint's own weights, kept aside on the CPU, so folding never sees the bf16 training copy.
- **A device map** (``--device-map auto|balanced|map.json``): Hugging Face / accelerate big-model loading
  spreads the layers over the GPUs and offloads what does not fit to CPU RAM (or disk); accelerate's
  hooks move activations from device to device and offloaded weights in for each forward. The gate
  factors of a layer are placed on that layer's execution device at every step (``Gates.set``); the
  flat score vector and its AdamW state stay on the first device, because the budget projection ranks
  all units of all layers together, and they are one float per unit (1.4 MB at LLaMA-2-7B, 9 MB at
  70B). Export reloads the checkpoint on the CPU.
- **FSDP** (``--fsdp``, under torchrun): every decoder layer's frozen weights are sharded across the
  ranks (``torch.distributed.fsdp.fully_shard``, FSDP2) and all-gathered one layer at a time for the
  forward and again for the backward (activation gradients need the weights, not weight gradients);
  the gates sit outside FSDP and see ordinary activations. Rank 0 reads the checkpoint on the CPU and
  broadcasts it into the shards; the other ranks build the model on the meta device, so the machine
  holds one CPU copy, not one per rank. Export (rank 0) reloads the checkpoint on the CPU.
"""

from __future__ import annotations

import atexit
import json
import re
import resource
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from grasprune.config import DEVICE_MAPS, WEIGHT_FREE_INITS, PruneConfig, torch_dtype
from grasprune.errors import UserError
from grasprune.method.collectives import world
from grasprune.method.devices import execution_device
from grasprune.method.models import load_model
from grasprune.scaleout.distributed import join_single_process_group

LAYER = re.compile(r"^model\.layers\.(\d+)(?:\.|$)")


@dataclass
class Placed:
    model: nn.Module
    tokenizer: Any
    mode: str  # "single", "device_map" or "fsdp"
    device: str  # the training device (one device), or the first device of a map
    reload: Callable[[], nn.Module]

    def export_model(self) -> nn.Module:
        """The model with the checkpoint's own weights and dtype, on the CPU (what export slices)."""
        return self.reload()

    def describe(self) -> dict:
        """The placement and memory of every device of every rank: for the run log and the studio.
        Collective under torchrun: every rank calls it at the same point."""
        devices = _device_rows(self.model, self.device, self.mode)
        for row in devices:
            row["rank"] = world().rank
        if world().size > 1:
            gathered = [None] * world().size
            dist.all_gather_object(gathered, devices)
            devices = [row for rows in gathered for row in rows]
        return {"mode": self.mode, "world_size": world().size, "devices": devices}


def read_device_map(spec: str) -> str | dict:
    """A named strategy, or a JSON file ``{"module.name": device}`` (device: a GPU index, "cuda:N", "cpu"
    or "disk")."""
    if spec in DEVICE_MAPS:
        return spec
    path = Path(spec).expanduser()
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read device map {spec}: pass {', '.join(DEVICE_MAPS)} or a JSON file "
                        f"{{\"module\": device}} ({type(err).__name__})") from err
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(f"device map {spec} must be a JSON object {{\"module\": device}}")
    for name, device in mapping.items():
        if isinstance(device, bool) or not isinstance(device, (int, str)):
            raise UserError(f"device map {spec}: device of {name!r} must be a GPU index, 'cuda:N', 'cpu' "
                            "or 'disk'")
        if (isinstance(device, int) or device.startswith("cuda")) and not torch.cuda.is_available():
            raise UserError(f"device map {spec} puts {name!r} on GPU {device}, but CUDA is not available "
                            "here")
    return mapping


def load_for_training(config: PruneConfig) -> Placed:
    """Load ``config.model`` frozen, in the training dtype, placed as ``config`` says."""
    if config.fsdp:
        return _sharded(config)
    if config.device_map:
        return _mapped(config)
    return _single(config)


def _single(config: PruneConfig) -> Placed:
    model, tokenizer = load_model(config.model, device="cpu", trust_remote_code=config.trust_remote_code,
                                  allow_pickle=config.allow_pickle)
    native = {k: v.detach().clone() for k, v in model.state_dict().items()}
    native_dtype = next(model.parameters()).dtype
    model.to(device=config.device, dtype=torch_dtype(config.dtype)).requires_grad_(False)

    def restore() -> nn.Module:
        model.to(device="cpu", dtype=native_dtype)
        model.load_state_dict(native)  # fold into the checkpoint's own precision, not the training copy
        return model

    return Placed(model, tokenizer, "single", config.device, restore)


def _reloader(config: PruneConfig) -> Callable[[], nn.Module]:
    def reload() -> nn.Module:
        return load_model(config.model, device="cpu", trust_remote_code=config.trust_remote_code,
                          allow_pickle=config.allow_pickle)[0]

    return reload


def _mapped(config: PruneConfig) -> Placed:
    device_map = read_device_map(config.device_map)
    offload = tempfile.mkdtemp(prefix="grasprune-offload-")  # used only when the map sends modules to disk
    atexit.register(shutil.rmtree, offload, True)
    try:
        model, tokenizer = load_model(config.model, dtype=torch_dtype(config.dtype),
                                      trust_remote_code=config.trust_remote_code,
                                      allow_pickle=config.allow_pickle, device_map=device_map,
                                      offload_folder=offload)
    except (ValueError, KeyError, RuntimeError) as err:
        shutil.rmtree(offload, ignore_errors=True)
        raise UserError(f"cannot place {config.model} with device map {config.device_map}: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    model.requires_grad_(False)
    round_buffers(model, torch_dtype(config.dtype))
    first = str(execution_device(model.get_input_embeddings(), torch.device(config.device)))
    reload = _reloader(config)

    def release_and_reload() -> nn.Module:
        shutil.rmtree(offload, ignore_errors=True)
        return reload()

    return Placed(model, tokenizer, "device_map", first, release_and_reload)


def _sharded(config: PruneConfig) -> Placed:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    w = world() if dist.is_initialized() else join_single_process_group()
    check_fsdp(config, w.size)
    device = torch.device("cuda", torch.cuda.current_device()) if config.device.startswith("cuda") else \
        torch.device("cpu")
    loading = {"dtype": torch_dtype(config.dtype), "trust_remote_code": config.trust_remote_code,
               "allow_pickle": config.allow_pickle}
    if w.is_main:  # the one full copy, on the CPU, broadcast into every rank's shards below
        model, tokenizer = load_model(config.model, device="cpu", **loading)
        full, buffers = model.state_dict(), dict(model.named_buffers())
    else:
        model, tokenizer = load_model(config.model, device_map="meta", **loading)
        full, buffers = {}, {}
    model.requires_grad_(False)
    shard(model, device)
    model.to_empty(device=device)
    from_rank0 = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full, options=from_rank0)
    for name, buffer in model.named_buffers():  # non-persistent ones (RoPE frequencies) are not in the state
        value = buffers[name].to(device, buffer.dtype) if w.is_main else torch.empty_like(buffer)
        dist.broadcast(value, src=0)
        buffer.copy_(value)
    round_buffers(model, loading["dtype"])
    del full, buffers
    return Placed(model, tokenizer, "fsdp", str(device), _reloader(config))


def shard(model: nn.Module, device: torch.device) -> None:
    """FSDP2 over the process group: one unit per decoder layer (its weights all-gathered just for its
    forward and its backward), the embeddings, final norm and head in the root unit."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world().size,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def round_buffers(model: nn.Module, dtype: torch.dtype) -> None:
    """Round floating buffers (RoPE frequencies) to ``dtype``, as ``model.to(dtype)`` does on the one-device
    path: loading straight in ``dtype`` keeps them in float32, and every placement must compute the same."""
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.is_floating_point() and buffer.device.type != "meta":
                buffer.copy_(buffer.to(dtype))


def check_fsdp(config: PruneConfig, world_size: int) -> None:
    """What FSDP cannot do, refused before anything loads. Every rank must run the same forward passes
    in the same order (each one all-gathers the layers' weights)."""
    if config.method != "grasprune" or config.score_init not in (None, *WEIGHT_FREE_INITS):
        raise UserError("--fsdp trains gates from zero or random scores: one-shot importance criteria read "
                        "whole weight matrices, which FSDP shards (drop --fsdp, or use --score-init zero)")
    if config.batch_blocks % world_size:
        raise UserError(f"--fsdp needs --batch-blocks to be a multiple of the {world_size} processes (got "
                        f"{config.batch_blocks}): every rank runs the same number of forward passes per step")
    if (config.distill or config.rescale_distill) and config.distill_topk:
        raise UserError("--fsdp needs --distill-topk 0: the top-k teacher cache runs a dense forward the "
                        "first time a rank meets a block, which would put the ranks' collectives out of step")


def _device_name(device) -> str:
    return f"cuda:{device}" if isinstance(device, int) else str(device)


def _device_rows(model: nn.Module, device: str, mode: str) -> list[dict]:
    """One row per device: the layers and other modules on it, their parameter bytes, its peak memory."""
    device_map = getattr(model, "hf_device_map", None) if mode == "device_map" else None
    if not device_map:
        device_map = {"": device}
    rows: dict[str, dict] = {}
    for name, where in device_map.items():
        device = _device_name(where)
        row = rows.setdefault(device, {"device": device, "layers": [], "modules": [], "param_bytes": 0})
        match = LAYER.match(name)
        if match:
            row["layers"].append(int(match.group(1)))
        elif name:
            row["modules"].append(name)
        else:
            row["layers"] = list(range(len(model.model.layers)))
    owners = sorted(device_map, key=len, reverse=True)
    for name, param in model.named_parameters():
        owner = next(o for o in owners if o == "" or name == o or name.startswith(o + "."))
        local = param.to_local() if hasattr(param, "to_local") else param  # an FSDP shard: this rank's part
        rows[_device_name(device_map[owner])]["param_bytes"] += local.numel() * local.element_size()
    for row in rows.values():
        row["peak_bytes"] = peak_memory(row["device"])
    return list(rows.values())


def peak_memory(device: str) -> int | None:
    """Peak bytes allocated on a GPU, the process's peak resident memory for the CPU, none for disk."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    if device == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return None
