"""Joining the process group ``torchrun`` describes (or a group of one, which FSDP needs).

The training step's collectives are in ``method.collectives``; how the ranks share rank 0's run folder
is ``runs.ranks``.
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from grasprune.method.collectives import World, world


def launched_by_torchrun() -> bool:
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def join_process_group() -> World:
    """Join the process group ``torchrun`` describes in the environment (once); otherwise a single
    process. Gloo carries CPU tensors, NCCL CUDA ones; each rank uses GPU ``LOCAL_RANK``."""
    if dist.is_initialized() or not launched_by_torchrun():
        return world()
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    # generous: rank 0 may load (or convert) a large model while the others wait for it
    dist.init_process_group(backend, timeout=timedelta(hours=1))
    atexit.register(_leave)
    return world()


def join_single_process_group() -> World:
    """A process group of one (FSDP needs a device mesh even when resumed without torchrun)."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        atexit.register(_leave)
    return world()


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
