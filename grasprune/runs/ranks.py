"""The run folder under ``torchrun``: rank 0 owns it, the other ranks follow on a private copy.

The other ranks receive a copy of rank 0's state files (config, checkpoints, scores) over the process
group and run the same pipeline on that private copy in a temporary folder, so only rank 0 writes the
run folder, every rank resumes from rank 0's checkpoint, and machines need no shared filesystem. Only
rank 0 exports and evaluates.
"""

from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import torch.distributed as dist

from grasprune.errors import Stopped, UserError
from grasprune.method.collectives import world
from grasprune.runs.store import Run

# The run-folder files that decide what a (resumed) run does next; the other ranks get copies.
STATE_FILES = ("config.json", "gates.safetensors", "scales.safetensors", "scores.safetensors",
               "gamma.safetensors")



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
