"""What every benchmark shares: the results folder, the setting each figure carries, list options."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from grasprune.scaleout.allocator import freed_memory_kept

RESULTS = Path(__file__).resolve().parent / "results"
DENSE = "smollm2-135m"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def setting(model: str, dtype: str, device: str = "cpu", **extra) -> dict:
    """The conditions a figure was measured under (printed beside every number)."""
    return {
        "model": model,
        "dtype": dtype,
        "device": device,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "freed_memory_kept": freed_memory_kept(),  # grasprune.scaleout.allocator: a quarter of a training run's time
        **extra,
    }


def describe(conditions: dict) -> str:
    """One line: ``model smollm2-135m, dtype fp32, threads 2, ...``."""
    return ", ".join(f"{k} {v}" for k, v in conditions.items() if v is not None)


def csv(cast: Callable = str) -> Callable[[str], list]:
    """An argparse type for comma-separated lists."""
    return lambda text: [cast(item.strip()) for item in text.split(",") if item.strip()]


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
