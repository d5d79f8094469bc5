"""A pruned checkpoint folder in another precision (bf16, fp16 or fp32).

The floating tensors of every ``*.safetensors`` file are cast (integer and bool tensors are kept),
``config.json``'s dtype follows them, and every other file (tokenizer, ``grasprune.json``, the modelling
code, the model card) is copied as is. The folder is written under a temporary name and renamed: a
folder at the final name is complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from grasprune.atomic import write_folder_atomic
from grasprune.errors import UserError
from grasprune.serving.formats import DEFAULT_PRECISION, PRECISION_NAMES

PRECISIONS = dict(zip(PRECISION_NAMES, (torch.bfloat16, torch.float16, torch.float32), strict=True))
# safetensors' floating dtypes and their bytes per element; the three we write, by precision name
FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
PRECISION_OF = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def precision_dtype(name: str) -> torch.dtype:
    if name not in PRECISIONS:
        raise UserError(f"unknown precision {name!r}: choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _tensor_entries(path: Path) -> dict[str, dict]:
    """A safetensors file's header, ``name -> {dtype, shape, data_offsets}``, read without the tensors."""
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if length > MAX_HEADER:
                raise ValueError("header too large")
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err}): export the checkpoint again") from err
    header.pop("__metadata__", None)
    return header


def _weight_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.safetensors"))


def checkpoint_precision(folder: Path) -> str | None:
    """The precision of a checkpoint's floating weights (bf16, fp16 or fp32); None when mixed or another."""
    kinds = {entry["dtype"] for path in _weight_files(folder) for entry in _tensor_entries(path).values()
             if entry["dtype"] in FLOAT_BYTES}
    return PRECISION_OF.get(kinds.pop()) if len(kinds) == 1 else None


def converted_size(folder: Path, precision: str) -> int:
    """The bytes ``convert_checkpoint`` writes for ``folder`` in ``precision``, from the safetensors headers
    (exact up to a few bytes of header)."""
    itemsize = precision_dtype(precision).itemsize
    total = folder_size(folder)
    for path in _weight_files(folder):
        for entry in _tensor_entries(path).values():
            if entry["dtype"] in FLOAT_BYTES:
                start, end = entry["data_offsets"]
                total += (end - start) // FLOAT_BYTES[entry["dtype"]] * itemsize - (end - start)
    return total


def convert_checkpoint(source: Path, out: Path, precision: str = DEFAULT_PRECISION, overwrite: bool = False) -> Path:
    """Write the pruned checkpoint ``source`` as a new folder ``out`` in ``precision`` (atomically)."""
    # imported here: export imports transformers, seconds the studio's start would wait for
    from grasprune.method.export import checked_pruned_folder

    dtype = precision_dtype(precision)
    source = checked_pruned_folder(source)
    out = Path(out).expanduser().resolve()
    if out == source or out in source.parents or source in out.parents:
        raise UserError(f"output folder {out} overlaps the checkpoint {source}: choose an --out outside it")
    return write_folder_atomic(out, lambda tmp: _write_converted(source, tmp, dtype), overwrite=overwrite)


def _write_converted(source: Path, folder: Path, dtype: torch.dtype) -> None:
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        target = folder / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.parent == source and path.suffix == ".safetensors":
            _cast_file(path, target, dtype)
        elif path.parent == source and path.name == "config.json":
            _write_config(path, target, dtype)
        else:
            shutil.copyfile(path, target)


def _cast_file(source: Path, target: Path, dtype: torch.dtype) -> None:
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: _cast(handle.get_tensor(name), dtype) for name in handle.keys()}  # noqa: SIM118
    save_file(tensors, str(target), metadata=metadata)


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype).contiguous() if tensor.is_floating_point() else tensor


def _write_config(source: Path, target: Path, dtype: torch.dtype) -> None:
    config = json.loads(source.read_text())
    name = str(dtype).removeprefix("torch.")
    config["dtype"] = name
    if "torch_dtype" in config:  # configs written by older transformers
        config["torch_dtype"] = name
    target.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
