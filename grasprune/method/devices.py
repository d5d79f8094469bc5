"""Where a module computes, under a device map or not."""

from __future__ import annotations

import torch
from torch import nn


def execution_device(module: nn.Module, fallback: torch.device) -> torch.device:
    """Where ``module`` computes: accelerate's hook's execution device (its weights may sit on the CPU,
    the disk or the meta device between forwards), else its first real parameter's device."""
    for sub in module.modules():
        device = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    for param in module.parameters():
        if param.device.type != "meta":
            return param.device
    return fallback
