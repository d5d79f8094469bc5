"""The prune configuration: one dataclass shared by the CLI, the app and the run folder."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grasprune.errors import UserError

DEFAULT_CALIB = "wikitext2#lines=0:50%"
DEFAULT_RESCALE = "wikitext2#lines=50%:100%"
HOLDOUT_NEXT, HOLDOUT_NONE = "next", "none"  # a heal's held-out text: after its training blocks, or none
METHODS = ("grasprune", "random", "magnitude", "wanda-sp", "flap", "taylor")
DTYPES = ("auto", "bf16", "fp32")
SCORE_INITS = ("zero", "random", "magnitude", "wanda-sp", "flap", "taylor")
# starts that read no weight matrix: the only ones possible where FSDP shards the weights or a device map
# keeps them on disk
WEIGHT_FREE_INITS = ("zero", "random")

# Gate-training variants: "paper" is the authors' procedure exactly (their tie-break and their per-layer
# minimum after the budget); the others use our two projection decisions and change the options below,
# each of which can also be set on its own (an explicit setting wins over the variant). The ablation
# behind them: docs/variants.md.
OURS = {"tie_break": "spread", "layer_minimum": "inside"}
PLAIN = {"tau_end": None, "warmup": 0.0, "distill_topk": 0}
VARIANTS = {
    "paper": {"score_init": "zero", "init_strength": 1.0, "lr": 1e-2, "distill": 0.0, "second_moment": "unit", **PLAIN,
              "tie_break": "index", "layer_minimum": "after"},
    # the paper's procedure with half of the loss a KL divergence to the dense model (one extra forward)
    "distill": {"score_init": "zero", "init_strength": 1.0, "lr": 1e-2, "distill": 0.5, "second_moment": "unit",
                **PLAIN, **OURS},
    # distill, with the scores starting from Wanda-sp's per-layer ranking scaled down to a weak prior
    # (probabilities 0.47-0.53): it breaks the ties that index order would, and the learned gates still
    # move units between layers (at strength 0.1 they no longer do enough at keep 0.5)
    "guided": {"score_init": "wanda-sp", "init_strength": 0.03, "lr": 1e-2, "distill": 0.5, "second_moment": "unit",
               **PLAIN, **OURS},
    # scores start from Wanda-sp's per-layer ranking, a larger lr and an annealed temperature: good at
    # keep 0.7, bad at 0.5 (the start's per-layer-uniform cut is not undone), so experimental
    "importance": {"score_init": "wanda-sp", "init_strength": 1.0, "lr": 5e-2, "distill": 0.0, "second_moment": "unit",
                   **PLAIN, "tau_end": 0.5, **OURS},
}
VARIANT_NAMES = tuple(VARIANTS)
EXPERIMENTAL_VARIANTS = ("importance",)
DEFAULT_VARIANT = "guided"

# Paper settings on a GPU; a CPU-sized protocol that finishes in minutes otherwise.
GPU_DEFAULTS = {"calib_samples": 512, "block_len": 512, "epochs": 4, "rescale_samples": 128}
CPU_DEFAULTS = {"calib_samples": 64, "block_len": 256, "epochs": 2, "rescale_samples": 64}
SECOND_MOMENTS = ("unit", "group")  # the gate optimizer: AdamW, or GroupAdam (method/train.py)
TIE_BREAKS = ("spread", "index")  # the projection's order of units with equal probability (units.project)
LAYER_MINIMUMS = ("inside", "after")  # where the projection pays each layer's minimum (units.project)
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies


def option(default: Any = None, help: str = "", *, group: str = "training", flag: str | None = None,
           metavar: str | None = None, choices: tuple[str, ...] | None = None, experimental: bool = False,
           factory: Callable[[], Any] | None = None) -> Any:
    """A command option (``PruneConfig``'s or ``HealConfig``'s): its default and everything a user interface
    says about it.

    The CLI parser (``cli_options``), the equivalent command the studio shows (``cli_command``) and the
    studio form's help texts (``option_help``) are all derived from these fields: an option is defined
    here once. ``flag`` defaults to the field name with dashes; ``help`` says what the option does
    (argparse appends nothing: write the default where it is not obvious)."""
    metadata = {"help": help, "group": group, "flag": flag, "metavar": metavar, "choices": choices,
                "experimental": experimental}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class PruneConfig:
    model: str = option("smollm2-135m", "smollm2-135m (embedded, offline), a hub id, a local folder or a .gguf "
                        "file", group="model and budget")
    keep_ratio: float = option(0.7, "fraction of the prunable parameters kept (0.7 keeps 70%)",
                               group="model and budget")
    align: int = option(1, "keep each layer's FFN channels in multiples of N (32, 64, 256: widths that suit "
                        "k-quants and GPU kernels) within the same budget; 1 = off", group="model and budget",
                        metavar="N")
    method: str = option("grasprune", "grasprune trains gates; the others rank units by a one-shot criterion",
                         group="model and budget", choices=METHODS)
    variant: str = option(DEFAULT_VARIANT, "gate-training variant: guided (default, the best measured), distill, "
                          "paper (the authors' procedure exactly) or importance (experimental)", choices=VARIANT_NAMES)
    score_init: str | None = option(None, "initial gate scores: zero (tied, as the paper) or a one-shot importance "
                                    "(default: from --variant)", choices=SCORE_INITS)
    init_strength: float | None = option(None, "multiplies an importance start's logits: 1 starts from "
                                         "probabilities 0.02-0.98, smaller is a weaker prior (default: from "
                                         "--variant)")
    tie_break: str | None = option(None, "order of units with equal gate probability in the projection: spread "
                                   "(interleaved across layers by position) or index (unit order, the authors'); "
                                   "default: from --variant", choices=TIE_BREAKS)
    layer_minimum: str | None = option(None, "each layer's minimum (one FFN channel, one KV group): inside the "
                                       "budget (always met) or after it (the authors' rule, may exceed it); "
                                       "default: from --variant", choices=LAYER_MINIMUMS)
    tau_end: float | None = option(None, "anneal the gate temperature linearly to this value", group="experimental", experimental=True)
    warmup: float | None = option(None, "fraction of the steps with a linear learning-rate warm-up",
                                  group="experimental", experimental=True)
    distill: float | None = option(None, "weight of a KL loss to the dense model (0 = LM loss only; default: "
                                   "from --variant)")
    distill_topk: int | None = option(None, "distil to the dense model's cached top-k tokens (0 = the full "
                                      "distribution)", group="experimental", experimental=True)
    rescale_distill: float | None = option(None, "KL weight in scale calibration (default: --distill)",
                                           group="scale calibration")
    calib_data: str = option(DEFAULT_CALIB, "calibration text: wikitext2, c4, ptb, a file or a dataset id, "
                             "optionally with #lines=A:B", group="calibration")
    calib_samples: int | None = option(None, "calibration blocks (default 64 on a CPU, 512 on a GPU)",
                                       group="calibration")
    block_len: int | None = option(None, "tokens per block (default 256 on a CPU, 512 on a GPU)",
                                   group="calibration")
    epochs: int | None = option(None, "gate-training epochs (default 2 on a CPU, 4 on a GPU)")
    rescale_data: str = option(DEFAULT_RESCALE, "held-out text for scale calibration", group="scale calibration")
    rescale_samples: int | None = option(None, "scale-calibration blocks (default 64 on a CPU, 128 on a GPU)",
                                         group="scale calibration")
    rescale_epochs: int = option(1, "scale-calibration epochs (0 skips it: the published one-shot form of a "
                                 "baseline)", group="scale calibration")
    lr: float | None = option(None, "gate learning rate (default: from --variant)")
    second_moment: str | None = option(None, "the gate optimizer's second moment: per unit (AdamW, the paper's) or "
                                       "one per layer and kind (group: a unit moves in proportion to its gradient "
                                       "against its layer's; docs/studies.md, Robustness); default: from --variant",
                                       choices=SECOND_MOMENTS)
    rescale_lr: float = option(1e-2, "scale-calibration learning rate", group="scale calibration")
    tau: float = option(1.5, "gate temperature: p = sigmoid(score / tau)")
    seed: int = option(0, "seed of the data order (and of a random start)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto", group="placement and speed")
    dtype: str = option("auto", "frozen backbone precision (auto: bf16 where the hardware has bf16 matrix "
                        "units, else fp32)", group="placement and speed", choices=DTYPES)
    checkpoint_every: int = option(16, "gate checkpoint interval in steps (a stopped run resumes from the last)",
                                   group="placement and speed")
    eval_datasets: list[str] = option(  # noqa: RUF009 - option() is field(default_factory=...)
        help="perplexity datasets after export, comma-separated (wikitext2, ptb, c4 or files), or none",
        group="evaluation", flag="--eval", factory=lambda: ["wikitext2"])
    eval_seqlen: int = option(512, "tokens per perplexity window", group="evaluation")
    eval_windows: int | None = option(64, "perplexity windows per dataset", group="evaluation")
    eval_dense: bool = option(True, "skip the dense model's perplexity beside the pruned one's (measured once "
                              "per model and settings, then cached)", group="evaluation", flag="--no-eval-dense")
    trust_remote_code: bool = option(False, "run the model repository's own Python code (only for repositories "
                                     "you trust)", group="security")
    allow_pickle: bool = option(False, "accept pickled .bin weights (they can run code when loaded)",
                                group="security")
    device_map: str | None = option(None, "spread the model over devices (accelerate): auto, balanced, "
                                    "balanced_low_0, sequential or a JSON file {module: device}",
                                    group="placement and speed")
    fsdp: bool = option(False, "under torchrun: shard the frozen model over the processes (FSDP2)",
                        group="placement and speed")
    batch_blocks: int = option(1, "calibration blocks per step, split over torchrun's processes",
                               group="placement and speed")
    teacher_cache_mb: int = option(2048, "full distillation: host memory for the dense model's logits, reused "
                                   "in later epochs (0 = none)", group="placement and speed")
    compile: bool = option(False, "torch.compile the gated training passes: each phase's first step compiles "
                           "(minutes on a CPU), later steps run 1.2-1.4x faster: for runs of about 1,000 "
                           "steps and up", group="placement and speed")
    experimental: bool = option(False, "allow the options and variants the ablation found never help "
                                "(--tau-end, --warmup, --distill-topk, --variant importance)", group="experimental")

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
        self.check_experimental()
        return config

    def check_experimental(self) -> None:
        """The options the ablation found never help are refused without ``experimental``. A value equal to
        what every plain variant uses (no annealing, no warm-up, full distillation) counts as unset, so a
        resolved config can be loaded again."""
        if self.experimental:
            return
        used = [f"--{name.replace('_', '-')}" for name in experimental_options()
                if getattr(self, name) is not None and getattr(self, name) != PLAIN.get(name)]
        if self.variant in EXPERIMENTAL_VARIANTS:
            used.append(f"--variant {self.variant}")
        if used:
            raise UserError(f"{', '.join(used)} {'is' if len(used) == 1 else 'are'} experimental (the ablation found "
                            "no gain, docs/variants.md): add --experimental to use it, or drop it")

    def validate(self) -> None:
        check_keep_ratio(self.keep_ratio)
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
        for name, choices in (("tie_break", TIE_BREAKS), ("layer_minimum", LAYER_MINIMUMS),
                              ("second_moment", SECOND_MOMENTS)):
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise UserError(f"unknown --{name.replace('_', '-')} {_show(value)}: choose one of {', '.join(choices)}")
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


def check_keep_ratio(keep_ratio: Any) -> None:
    """The one range check of a keep ratio (the config, the budget preview and ``UnitLayout.budget``)."""
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0.0 < keep_ratio <= 1.0:
        raise UserError(f"keep ratio {_show(keep_ratio)} is outside (0, 1]: pass --keep-ratio between 0 and 1")


def experimental_options() -> list[str]:
    """The fields behind ``--experimental``."""
    return [f.name for f in dataclasses.fields(PruneConfig) if f.metadata.get("experimental")]


def option_help(name: str, config: type = PruneConfig) -> str:
    """What the option does, as the CLI's --help says it (the studio forms' help texts)."""
    text = config.__dataclass_fields__[name].metadata["help"]
    return text[:1].upper() + text[1:]


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
    import torch  # here, not at the top: `import grasprune` and `grasprune --help` stay free of torch

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
        import torch

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


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


@dataclass
class HealConfig:
    """The settings of ``grasprune heal`` (LoRA recovery of a pruned checkpoint)."""

    steps: int = option(600, "training steps, one calibration block each", group="heal")
    minutes: float | None = option(None, "stop training after this many minutes of wall time, then merge and export "
                                   "(default: no limit)", group="heal")
    lr: float = option(2e-4, "AdamW learning rate of the LoRA adapters (constant)", group="heal")
    rank: int = option(8, "LoRA rank", group="heal")
    alpha: int = option(16, "LoRA alpha (the adapters' scale is alpha / rank)", group="heal")
    data: str = option(DEFAULT_CALIB, "training text: wikitext2, c4, ptb, a file or a dataset id, optionally with "
                       "#lines=A:B", group="heal")
    samples: int = option(256, "calibration blocks (the data is cycled through in a new order each epoch)",
                          group="heal")
    block_len: int = option(256, "tokens per block", group="heal")
    distill: float = option(0.0, "weight of a KL loss to the dense base model named in grasprune.json (0 = LM loss "
                            "only; a dense forward pass per step)", group="heal")
    seed: int = option(0, "seed of the data order and the adapters' initialisation", group="heal")
    checkpoint_every: int = option(50, "save the adapters and optimiser every N steps (a stopped heal resumes from "
                                   "the last)", group="heal")
    holdout: str = option(HOLDOUT_NEXT, "held-out text the merged step is chosen on (the lowest loss): next (the "
                          "blocks right after the training ones in --data), a data spec like --data's, or none "
                          "(merge the last step)", group="heal")
    holdout_samples: int = option(16, "held-out blocks of --block-len tokens", group="heal")
    holdout_every: int = option(100, "measure the held-out loss every N steps (and at the start and the end)",
                                group="heal")
    eval_datasets: list[str] = option(  # noqa: RUF009 - option() is field(default_factory=...)
        help="perplexity datasets `grasprune heal` measures on the healed checkpoint once written, comma-separated "
             "(wikitext2, ptb, c4 or files; default none): stored in its grasprune.json like a prune's", group="heal", flag="--eval",
        factory=list)
    eval_seqlen: int = option(512, "tokens per perplexity window", group="heal")
    eval_windows: int = option(64, "perplexity windows per dataset", group="heal")

    def validate(self) -> None:
        for name in ("steps", "rank", "alpha", "samples", "checkpoint_every", "holdout_samples", "holdout_every",
                     "eval_windows"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.block_len < 2 or self.eval_seqlen < 2:
            name, value = ("block-len", self.block_len) if self.block_len < 2 else ("eval-seqlen", self.eval_seqlen)
            raise UserError(f"--{name} must be at least 2 (got {value})")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive (got {self.lr})")
        if not 0 <= self.distill <= 1:
            raise UserError(f"--distill is a loss weight in [0, 1] (got {self.distill})")
        if self.minutes is not None and not self.minutes > 0:
            raise UserError(f"--minutes must be positive (got {self.minutes})")
        if not str(self.holdout).strip():
            raise UserError(f"--holdout is empty: pass {HOLDOUT_NEXT}, {HOLDOUT_NONE} or a data spec")
        if self.holdout.strip() == self.data.strip():
            raise UserError(f"--holdout is the training text ({self.data}): pass other text, {HOLDOUT_NEXT} (the "
                            f"blocks after the training ones) or {HOLDOUT_NONE}")

    @property
    def uses_holdout(self) -> bool:
        return self.holdout.strip().lower() != HOLDOUT_NONE

    @property
    def holdout_source(self) -> str | None:
        """The held-out text's own data spec; None for ``next`` (inside ``data``) and ``none``."""
        spec = self.holdout.strip()
        return None if spec.lower() in (HOLDOUT_NEXT, HOLDOUT_NONE) else spec

    def identity(self) -> dict:
        """The settings a resumed run must share (the time limit and the final evaluation may change between
        tries)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("minutes", "eval_datasets", "eval_seqlen", "eval_windows")}
