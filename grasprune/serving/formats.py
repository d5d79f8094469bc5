"""The export formats' names, without the converters: the CLI's help and the studio's routes list them
without importing torch or gguf."""

from __future__ import annotations

PRECISION_NAMES = ("bf16", "fp16", "fp32")  # a safetensors export's floating-point precision
DEFAULT_PRECISION = "bf16"
GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_k_m", "f32")  # a GGUF export's tensor type
DEFAULT_GGUF_TYPE = "f16"
