"""Data parallel over processes launched by ``torchrun``: the same steps as one process, bit for bit.

A step's global batch is ``G`` calibration blocks (``--batch-blocks``, default 1: the paper's batch).
Rank ``r`` of ``W`` computes the gradient of every block ``i`` of the batch with ``i % W == r``, one
forward/backward per block exactly as a single process does; the ranks all-gather those per-block
gradients, and every rank sums them in global block order and divides by ``G``. No floating-point sum
depends on ``W``, so the update (and the mask) is identical for 1, 2 or 64 processes, and a run resumes
on any number of them. (DDP's all-reduce would give the same mean up to rounding: its ring sums in an
order that depends on ``W``, so masks could differ in a tie.) The all-gather moves ``G`` vectors of one
float per unit per step: 1.4 MB per block at LLaMA-2-7B, nothing next to a forward/backward.

Joining the process group is ``scaleout.distributed``'s job; sharing the run folder, ``runs.ranks``'.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from grasprune.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def batch_gradient(param: torch.Tensor, blocks: torch.Tensor, loss_of) -> tuple[float, dict]:
    """Set ``param.grad`` to the mean gradient over ``blocks`` (the step's global batch, shape (G, L)) and
    return the mean loss and the event fields of this rank's first block. ``loss_of(block) -> (loss,
    fields)`` runs one block's forward pass. Identical on every rank and for any number of ranks."""
    w = world()
    count = blocks.shape[0]
    rows = torch.zeros(-(-count // w.size), param.numel() + 1, dtype=param.dtype, device=param.device)
    fields: dict = {}
    for row, index in enumerate(range(w.rank, count, w.size)):
        loss, block_fields = loss_of(blocks[index])
        param.grad = None
        loss.backward()
        rows[row, :-1] = param.grad.flatten()
        rows[row, -1] = loss.detach()
        fields = fields or block_fields
    gathered = [rows]
    if w.size > 1:
        gathered = [torch.empty_like(rows) for _ in range(w.size)]
        dist.all_gather(gathered, rows)
    total = gathered[0][0].clone()
    for index in range(1, count):  # global block order: block i is row i // W of rank i % W
        total += gathered[index % w.size][index // w.size]
    total /= count
    param.grad = total[:-1].view_as(param)
    return total[-1].item(), fields


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any: a stop asked of one rank stops all at one step."""
    if world().size == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def require_same_on_all_ranks(what: str, tensor: torch.Tensor) -> None:
    """Refuse to train when the ranks disagree (other data, another checkpoint): a clear error, not a
    silently different mask."""
    if world().size == 1:
        return
    digest = torch.tensor([zlib.crc32(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())],
                          dtype=torch.int64)
    digests = [torch.empty_like(digest) for _ in range(world().size)]
    dist.all_gather(digests, digest)
    if len({int(d) for d in digests}) > 1:
        raise UserError(f"the ranks hold different {what}: every machine must see the same model and data")
