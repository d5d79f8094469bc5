"""The prune configuration: one dataclass shared by the CLI, the app and the run folder."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

DEFAULT_CALIB = "wikitext2#lines=0:50%"
DEFAULT_RESCALE = "wikitext2#lines=50%:100%"
METHODS = ("grasprune", "random", "magnitude", "wanda-sp", "flap", "taylor")
DTYPES = ("auto", "bf16", "fp32")
SCORE_INITS = ("zero", "random", "magnitude", "wanda-sp", "flap", "taylor")
# starts that read no weight matrix: the only ones possible where FSDP shards the weights or a device map
# keeps them on disk
WEIGHT_FREE_INITS = ("zero", "random")

# Gate-training variants (issue 7): "paper" is the authors' procedure exactly; the others change the
# options below, each of which can also be set on its own (an explicit setting wins over the variant).
# Measured on SmolLM2-135M with the engine issue's protocol: see the README's ablation table.
VARIANTS = {
    "paper": {"score_init": "zero", "init_strength": 1.0, "lr": 1e-2, "tau_end": None, "warmup": 0.0, "distill": 0.0,
              "distill_topk": 0},
    # the paper's procedure with half of the loss a KL divergence to the dense model (one extra forward)
    "distill": {"score_init": "zero", "init_strength": 1.0, "lr": 1e-2, "tau_end": None, "warmup": 0.0, "distill": 0.5,
                "distill_topk": 0},
    # distill, with the scores starting from Wanda-sp's per-layer ranking scaled down to a weak prior
    # (probabilities 0.47-0.53): it breaks the ties that index order would, and the learned gates still
    # move units between layers (at strength 0.1 they no longer do enough at keep 0.5: README ablation)
    "guided": {"score_init": "wanda-sp", "init_strength": 0.03, "lr": 1e-2, "tau_end": None, "warmup": 0.0,
               "distill": 0.5, "distill_topk": 0},
    # scores start from Wanda-sp's per-layer ranking, a larger lr and an annealed temperature
    "importance": {"score_init": "wanda-sp", "init_strength": 1.0, "lr": 5e-2, "tau_end": 0.5, "warmup": 0.0, "distill": 0.0,
                   "distill_topk": 0},
}
DEFAULT_VARIANT = "guided"

# Paper settings on a GPU; a CPU-sized protocol that finishes in minutes otherwise.
GPU_DEFAULTS = {"calib_samples": 512, "block_len": 512, "epochs": 4, "rescale_samples": 128}
CPU_DEFAULTS = {"calib_samples": 64, "block_len": 256, "epochs": 2, "rescale_samples": 64}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies


@dataclass
class PruneConfig:
    model: str = "smollm2-135m"
    keep_ratio: float = 0.7
    align: int = 1  # each layer keeps a multiple of this many FFN channels (quantisation/kernel-friendly); 1 = off
    method: str = "grasprune"
    variant: str = DEFAULT_VARIANT
    score_init: str | None = None
    init_strength: float | None = None  # multiplies the importance start's logits: < 1 is a weaker prior
    tau_end: float | None = None
    warmup: float | None = None
    distill: float | None = None
    distill_topk: int | None = None
    rescale_distill: float | None = None
    calib_data: str = DEFAULT_CALIB
    calib_samples: int | None = None
    block_len: int | None = None
    epochs: int | None = None
    rescale_data: str = DEFAULT_RESCALE
    rescale_samples: int | None = None
    rescale_epochs: int = 1
    lr: float | None = None
    rescale_lr: float = 1e-2
    tau: float = 1.5
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    checkpoint_every: int = 16
    eval_datasets: list[str] = field(default_factory=lambda: ["wikitext2"])
    eval_seqlen: int = 512
    eval_windows: int | None = 64
    eval_dense: bool = True  # the base model's perplexity beside the pruned one's (cached per model and settings)
    trust_remote_code: bool = False
    allow_pickle: bool = False
    device_map: str | None = None  # accelerate's big-model placement: a DEVICE_MAPS name or a JSON file
    fsdp: bool = False  # shard the frozen backbone across the torchrun ranks (FSDP2)
    batch_blocks: int = 1  # calibration blocks per step: the global batch, split across the ranks
    teacher_cache_mb: int = 2048  # full distillation over epochs > 1: dense logits kept in host memory
    compile: bool = False  # torch.compile the gated training passes: pays off on long runs only

    def resolved(self) -> PruneConfig:
        """A copy with the device, dtype and size defaults filled in, validated."""
        device = resolve_device(self.device)
        defaults = GPU_DEFAULTS if device.startswith("cuda") else CPU_DEFAULTS
        if self.variant not in VARIANTS:
            raise UserError(f"unknown variant {_show(self.variant)}: choose one of {', '.join(VARIANTS)}")
        defaults = {**defaults, **VARIANTS[self.variant]}
        if (self.fsdp or self.device_map is not None) and defaults["score_init"] not in WEIGHT_FREE_INITS:
            # importance criteria read whole weight matrices, which FSDP shards and a device map may keep
            # on disk: the variant's start falls back to tied scores (`guided` trains as `distill`)
            defaults["score_init"] = "zero"
        filled = {k: v if getattr(self, k) is None else getattr(self, k) for k, v in defaults.items()}
        if self.rescale_distill is None:
            filled["rescale_distill"] = filled.get("distill", self.distill)
        config = dataclasses.replace(self, device=device, dtype=resolve_dtype_name(self.dtype, device), **filled)
        config.validate()
        return config

    def validate(self) -> None:
        if not isinstance(self.keep_ratio, (int, float)) or not 0.0 < self.keep_ratio <= 1.0:
            raise UserError(f"keep ratio {_show(self.keep_ratio)} is outside (0, 1]: pass --keep-ratio between 0 "
                            "and 1")
        if self.keep_ratio == 1:
            raise UserError("keep ratio 1 keeps every prunable parameter, so nothing would be pruned: pass "
                            "--keep-ratio below 1 (0.7 keeps 70%)")
        if isinstance(self.align, bool) or not isinstance(self.align, int) or self.align < 1:
            raise UserError(f"--align must be a whole number of FFN channels, at least 1 (1 = off; e.g. 32, 64 "
                            f"or 256), got {_show(self.align)}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise UserError("no model given: pass --model smollm2-135m, a hub id, a folder or a .gguf file")
        if self.method not in METHODS:
            raise UserError(f"unknown method {_show(self.method)}: choose one of {', '.join(METHODS)}")
        for name in ("lr", "rescale_lr", "tau", "tau_end", "warmup", "distill", "rescale_distill", "init_strength"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, int) and not math.isfinite(value):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number (got {value})")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"--seed must be from 0 to {2**32 - 1} (got {_show(self.seed)})")
        if self.eval_seqlen < 2:
            raise UserError(f"--eval-seqlen must be at least 2 (got {self.eval_seqlen})")
        if self.eval_windows is not None and self.eval_windows < 1:
            raise UserError(f"--eval-windows must be at least 1 (got {self.eval_windows})")
        if any(not name.strip() or "," in name for name in self.eval_datasets):
            raise UserError(f"bad evaluation dataset in {_show(self.eval_datasets)}: pass --eval wikitext2,ptb "
                            "(names or files, comma-separated) or none")
        for name in ("calib_samples", "block_len", "epochs", "rescale_samples", "checkpoint_every",
                     "batch_blocks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if self.device_map is not None and self.device_map not in DEVICE_MAPS and \
                not _is_file(self.device_map):
            raise UserError(f"--device-map {_show(self.device_map)} is neither {', '.join(DEVICE_MAPS)} nor "
                            "a JSON file")
        if self.device_map is not None and self.fsdp:
            raise UserError("--device-map and --fsdp exclude each other: a device map splits one replica "
                            "over devices, FSDP shards it over processes")
        if self.compile and (self.device_map is not None or self.fsdp):
            raise UserError("--compile works on one device only: drop --compile, or --device-map/--fsdp")
        if self.rescale_epochs < 0:
            raise UserError(f"--rescale-epochs must be 0 or more (got {self.rescale_epochs})")
        if self.teacher_cache_mb < 0:
            raise UserError(f"--teacher-cache-mb must be 0 (no cache) or more (got {self.teacher_cache_mb})")
        if self.block_len is not None and self.block_len < 2:
            raise UserError(f"--block-len must be at least 2 (got {self.block_len})")
        for name in ("lr", "rescale_lr", "tau", "tau_end", "init_strength"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive (got {value})")
        if self.score_init is not None and self.score_init not in SCORE_INITS:
            raise UserError(f"unknown --score-init {_show(self.score_init)}: choose one of {', '.join(SCORE_INITS)}")
        if self.warmup is not None and not 0 <= self.warmup < 1:
            raise UserError(f"--warmup is a fraction of the steps in [0, 1) (got {self.warmup})")
        for name in ("distill", "rescale_distill"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise UserError(f"--{name.replace('_', '-')} is a loss weight in [0, 1] (got {value})")
        if self.distill_topk is not None and self.distill_topk < 0:
            raise UserError(f"--distill-topk must be 0 (full distribution) or more (got {self.distill_topk})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> PruneConfig:
        """Build from parsed JSON, with a one-line error for an unknown key or a wrong type."""
        if not isinstance(data, dict):
            raise UserError("config must be a JSON object of prune settings")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key not in fields:
                raise UserError(f"unknown config key {_show(key)}: known keys are {', '.join(fields)}")
            _check_type(key, value, fields[key].type)
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> PruneConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as err:
            raise UserError(f"config {path} is not valid JSON (line {err.lineno}): fix or regenerate it") from err
        except (UnicodeDecodeError, RecursionError) as err:
            why = "nested too deeply" if isinstance(err, RecursionError) else "not UTF-8"
            raise UserError(f"config {path} is not valid JSON ({why}): fix or regenerate it") from err
        except OSError as err:
            raise UserError(f"cannot read config {path}: {err.strerror}") from err


_TYPES = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
    "int | None": (int, type(None)), "list[str]": (list,), "str | None": (str, type(None)),
    "float | None": (int, float, type(None)),
}


def _check_type(key: str, value: Any, annotation: str) -> None:
    allowed = _TYPES[annotation]
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    else:
        ok = isinstance(value, allowed)
    if ok and annotation == "list[str]":
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        raise UserError(f"config key '{key}' must be {annotation}, got {type(value).__name__} ({_show(value)})")


def _show(value: Any, limit: int = 60) -> str:
    """A user's value in a one-line message: quoted, escaped, cut to ``limit`` characters."""
    text = repr(value) if isinstance(value, str) else repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_file(text: str) -> bool:
    """Whether ``text`` names a file (a name the OS cannot look up, NUL, too long, ``~nobody``, does not)."""
    try:
        return Path(text).expanduser().is_file()
    except (OSError, ValueError, RuntimeError):
        return False


def resolve_device(device: str) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("CUDA is not available on this machine: pass --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device {_show(device)}: pass cpu, cuda or cuda:N")
    return device


def has_bf16_matmul(device: str) -> bool:
    """bf16 matrix units: CUDA with bf16 support, or a CPU with AMX/AVX512-BF16."""
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype_name(dtype: str, device: str) -> str:
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {_show(dtype)}: choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return "bf16" if has_bf16_matmul(device) else "fp32"
    return dtype


def torch_dtype(name: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
