"""One tar archive of a run's exported checkpoint, written once (atomically) into the run folder.

The archive is streamed to disk while its sha256 is computed, so a multi-GB checkpoint never sits
in memory; a sidecar JSON records its size, hash and the checkpoint files it was made from, and a
re-exported checkpoint gets a fresh archive.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_atomic, write_json_atomic
from .errors import UserError
from .runs import Run, run_in_root

ARCHIVE_NAME = "checkpoint.tar"
INFO_NAME = "checkpoint.tar.json"


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    size: int
    sha256: str
    folder_name: str  # the top-level folder inside the archive

    def download_name(self) -> str:
        return f"{self.folder_name}.tar"


def _fingerprint(folder: Path) -> list[list]:
    return sorted([str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns]
                  for p in folder.rglob("*") if p.is_file())


class _HashingWriter:
    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


def archive_info(run: Run) -> ArchiveInfo | None:
    """The archive already written for the current checkpoint, or None."""
    info_path, path = run.folder / INFO_NAME, run.folder / ARCHIVE_NAME
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    checkpoint = run.output_dir()
    if not path.is_file() or path.is_symlink() or not checkpoint.is_dir():
        return None
    if info.get("files") != _fingerprint(checkpoint):
        return None
    if path.stat().st_size != info.get("size"):
        return None
    return ArchiveInfo(path, info["size"], info["sha256"], info["folder_name"])


def build_archive(run: Run, root: Path | None = None) -> ArchiveInfo:
    """Write (or reuse) the archive of ``run``'s exported checkpoint; with ``root`` (the studio), only of a
    checkpoint inside that runs folder."""
    if root is not None:
        check_servable(run, root)
    existing = archive_info(run)
    if existing is not None:
        return existing
    checkpoint = run.output_dir()
    if not (checkpoint / "grasprune.json").is_file():
        raise UserError(f"run {run.id} has no exported checkpoint yet: let it complete (or resume it) first")
    folder_name = f"grasprune-{run.id}"
    files = _fingerprint(checkpoint)
    hashed: dict = {}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            writer = _HashingWriter(handle)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name, _, _ in files:
                    tar.add(checkpoint / name, arcname=f"{folder_name}/{name}", recursive=False)
        hashed.update(size=writer.size, sha256=writer.digest.hexdigest())

    path = write_atomic(run.folder / ARCHIVE_NAME, write)
    info = {**hashed, "folder_name": folder_name, "files": files}
    write_json_atomic(run.folder / INFO_NAME, info)
    return ArchiveInfo(path, info["size"], info["sha256"], folder_name)


def served_archive(root: Path, run_id: str) -> ArchiveInfo:
    """The archive to serve for ``run_id``: the id validated, every path checked to stay in ``root``."""
    run = run_in_root(run_id, root)
    check_servable(run, root)
    info = archive_info(run)
    if info is None or info.path.resolve() != run.folder.resolve() / ARCHIVE_NAME:
        raise UserError(f"no archive for run {run_id}: prepare it on the Export page")
    return info


def check_servable(run: Run, root: Path) -> None:
    """The studio serves only files inside the runs folder: the run folder and its checkpoint."""
    root = Path(root).resolve()
    checkpoint = run.output_dir().resolve()
    if run.folder.resolve().parent != root or not checkpoint.is_relative_to(root):
        raise UserError(f"run {run.id}'s checkpoint {checkpoint} is outside the runs folder {root}: the studio "
                        "serves only files inside it (the checkpoint is already a folder on disk)")


def load_snippet(info: ArchiveInfo) -> str:
    """The two lines of Python that load the downloaded archive."""
    return (
        f'import tarfile; tarfile.open("{info.download_name()}").extractall(".", filter="data")\n'
        f'from grasprune.export import load_pruned; model, tokenizer = load_pruned("{info.folder_name}")'
    )
