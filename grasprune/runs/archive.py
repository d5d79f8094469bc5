"""Tar archives of a run's exported checkpoint (or a healed one's), one per precision, written once
(atomically) into the run folder (the heal job's folder).

What is archived is a *source*: an object with an ``id``, a ``folder`` (where its archives go), an
``output_dir()`` (the checkpoint) and an ``archive_stem`` (the folder name inside its archives): a ``Run``, or
the studio's ``HealJob``.

``checkpoint.tar`` holds the checkpoint as is; ``checkpoint-bf16.tar`` (``-fp16``, ``-fp32``) holds it
converted to another precision (grasprune/convert.py, in a temporary folder beside it);
``checkpoint-gguf-f16.tar`` (``-gguf-q8_0``, ...) the GGUF file and its Ollama Modelfile
(grasprune/gguf_export.py). An archive is
streamed to disk while its sha256 is computed, so a multi-GB checkpoint never sits in memory; a sidecar
JSON records its size, hash and the checkpoint files it was made from, and a re-exported checkpoint gets
fresh archives.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from grasprune.atomic import write_atomic, write_json_atomic
from grasprune.errors import UserError
from grasprune.runs.store import Run, run_in_root
from grasprune.serving.convert import checkpoint_precision, convert_checkpoint, precision_dtype
from grasprune.serving.gguf_export import GGUF_TYPES, check_gguf_type, export_gguf

ARCHIVE_NAME = "checkpoint.tar"
GGUF_PREFIX = "gguf-"
GGUF_KEYS = tuple(GGUF_PREFIX + t for t in GGUF_TYPES)  # the archive "precisions" that hold a GGUF


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    size: int
    sha256: str
    folder_name: str  # the top-level folder inside the archive
    precision: str | None = None  # of the archived weights (None: unknown)

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


def _target(run: Run, precision: str | None) -> tuple[Path, str, str | None]:
    """``(archive path, folder name inside it, precision to convert to)`` for ``precision``: the checkpoint
    as is when none is asked for or it is the checkpoint's own."""
    if precision is not None and precision.startswith(GGUF_PREFIX):
        check_gguf_type(precision.removeprefix(GGUF_PREFIX))  # only the known names reach a file name
        return run.folder / f"checkpoint-{precision}.tar", f"{run.archive_stem}-{precision}", precision
    if precision is not None:
        precision_dtype(precision)  # only the known names reach a file name
        if precision != checkpoint_precision(run.output_dir()):
            return run.folder / f"checkpoint-{precision}.tar", f"{run.archive_stem}-{precision}", precision
    return run.folder / ARCHIVE_NAME, run.archive_stem, None


def _info_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".json")


def archive_info(run: Run, precision: str | None = None) -> ArchiveInfo | None:
    """The archive already written for the current checkpoint in ``precision`` (None: as is), or None."""
    path = _target(run, precision)[0]
    info_path = _info_path(path)
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
    return ArchiveInfo(path, info["size"], info["sha256"], info["folder_name"], info.get("precision"))


def build_archive(run: Run, root: Path | None = None, precision: str | None = None) -> ArchiveInfo:
    """Write (or reuse) the archive of ``run``'s exported checkpoint in ``precision`` (None: as is); with
    ``root`` (the studio), only of a checkpoint inside that runs folder."""
    if root is not None:
        check_servable(run, root)
    existing = archive_info(run, precision)
    if existing is not None:
        return existing
    checkpoint = run.output_dir()
    if not (checkpoint / "grasprune.json").is_file():
        raise UserError(f"run {run.id} has no exported checkpoint yet: let it complete (or resume it) first")
    path, folder_name, convert_to = _target(run, precision)
    files = _fingerprint(checkpoint)  # before converting: a checkpoint changed meanwhile makes it stale
    if convert_to is None:
        hashed = _write_tar(path, checkpoint, folder_name)
    elif convert_to.startswith(GGUF_PREFIX):
        with tempfile.TemporaryDirectory(prefix=".export-", dir=run.folder) as tmp:
            exported = export_gguf(checkpoint, Path(tmp) / folder_name, convert_to.removeprefix(GGUF_PREFIX))
            hashed = _write_tar(path, exported.folder, folder_name)
    else:
        with tempfile.TemporaryDirectory(prefix=".export-", dir=run.folder) as tmp:
            hashed = _write_tar(path, convert_checkpoint(checkpoint, Path(tmp) / folder_name, convert_to),
                                folder_name)
    info = {**hashed, "folder_name": folder_name, "precision": convert_to or checkpoint_precision(checkpoint),
            "files": files}
    write_json_atomic(_info_path(path), info)
    return ArchiveInfo(path, info["size"], info["sha256"], folder_name, info["precision"])


def _write_tar(path: Path, folder: Path, folder_name: str) -> dict:
    """Write ``folder``'s files under ``folder_name/`` into the tar ``path`` (atomically): its size and sha256."""
    names = [name for name, _, _ in _fingerprint(folder)]
    hashed: dict = {}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            writer = _HashingWriter(handle)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name in names:
                    tar.add(folder / name, arcname=f"{folder_name}/{name}", recursive=False)
        hashed.update(size=writer.size, sha256=writer.digest.hexdigest())

    write_atomic(path, write)
    return hashed


def served_archive(root: Path, run_id: str, precision: str | None = None) -> ArchiveInfo:
    """The archive to serve for ``run_id`` in ``precision`` (None: the checkpoint as is): the id validated,
    the precision one of the known names, every path checked to stay in ``root``."""
    return served_source_archive(run_in_root(run_id, root), root, precision)


def served_source_archive(source, root: Path, precision: str | None = None) -> ArchiveInfo:
    """``served_archive`` for any source (a heal job found by its validated id)."""
    check_servable(source, root)
    info = archive_info(source, precision)
    if info is None or info.path.resolve() != source.folder.resolve() / _target(source, precision)[0].name:
        what = f"run {source.id}" if isinstance(source, Run) else source.id
        raise UserError(f"no archive for {what}: prepare it on the Export page")
    return info


def check_servable(run: Run, root: Path) -> None:
    """The studio serves only files inside the runs folder: the source's folder and its checkpoint."""
    root = Path(root).resolve()
    checkpoint = run.output_dir().resolve()
    if not run.folder.resolve().is_relative_to(root) or not checkpoint.is_relative_to(root):
        raise UserError(f"run {run.id}'s checkpoint {checkpoint} is outside the runs folder {root}: the studio "
                        "serves only files inside it (the checkpoint is already a folder on disk)")


def load_snippet(info: ArchiveInfo) -> str:
    """The two lines of Python that load the downloaded archive (in its own precision)."""
    stored = f"  # {info.precision}, as stored" if info.precision else ""
    return (
        f'import tarfile; tarfile.open("{info.download_name()}").extractall(".", filter="data")\n'
        f'from grasprune.method.export import load_pruned; model, tokenizer = load_pruned("{info.folder_name}"){stored}'
    )
