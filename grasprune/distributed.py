"""Data parallel over processes launched by ``torchrun``: the same steps as one process, bit for bit.

A step's global batch is ``G`` calibration blocks (``--batch-blocks``, default 1: the paper's batch).
Rank ``r`` of ``W`` computes the gradient of every block ``i`` of the batch with ``i % W == r``, one
forward/backward per block exactly as a single process does; the ranks all-gather those per-block
gradients, and every rank sums them in global block order and divides by ``G``. No floating-point sum
depends on ``W``, so the update (and the mask) is identical for 1, 2 or 64 processes, and a run resumes
on any number of them. (DDP's all-reduce would give the same mean up to rounding: its ring sums in an
order that depends on ``W``, so masks could differ in a tie.) The all-gather moves ``G`` vectors of one
float per unit per step: 1.4 MB per block at LLaMA-2-7B, nothing next to a forward/backward.

Run folder: rank 0 owns it. The other ranks receive a copy of its state files (config, checkpoints,
scores) over the process group and run the same pipeline on that private copy in a temporary folder,
so only rank 0 writes the run folder, every rank resumes from rank 0's checkpoint, and machines need no
shared filesystem. Only rank 0 exports and evaluates.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import zlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import UserError

# The run-folder files that decide what a (resumed) run does next; the other ranks get copies.
STATE_FILES = ("config.json", "gates.safetensors", "scales.safetensors", "scores.safetensors",
               "gamma.safetensors")


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


def _broadcast(payload=None):
    box = [payload]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_run(run) -> None:
    """Rank 0: send the run's state files to the other ranks (they wait in ``receive_run``)."""
    if world().size == 1:
        return
    files = {name: (run.folder / name).read_bytes() for name in STATE_FILES if (run.folder / name).is_file()}
    _broadcast({"id": run.id, "files": files})
    batch = run.config().batch_blocks
    if batch < world().size:
        size = world().size
        print(f"note: {size} processes share global batches of {batch} block(s) (--batch-blocks): "
              f"{size - batch} of them idle; the result is the same, pass --batch-blocks {size} "
              "(or a multiple) to use them all", file=sys.stderr)


def receive_run():
    """Other ranks: a private copy of rank 0's run state, in a temporary folder removed at exit."""
    from .runs import Run

    payload = _broadcast()
    scratch = Path(tempfile.mkdtemp(prefix=f"grasprune-rank{world().rank}-"))
    atexit.register(shutil.rmtree, scratch, True)
    folder = scratch / payload["id"]
    folder.mkdir()
    for name, data in payload["files"].items():
        (folder / name).write_bytes(data)
    (folder / "run.json").write_text(json.dumps({"out": None}))
    return Run(folder)


def follow_rank0(prune_run, stop_on_signals) -> int:
    """What a rank other than 0 does for ``grasprune prune``: the same pipeline, on its copy of the run."""
    import threading

    from .train import Stopped

    try:
        run = receive_run()
    except RuntimeError as err:  # rank 0 refused the run (bad input) and left: its message says why
        raise UserError("rank 0 ended before the run started: see its error") from err
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        prune_run(run, stop=stop, overwrite=True)
    except Stopped:
        return 3  # rank 0 reports it
    return 0
