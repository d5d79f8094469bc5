"""Writes that never leave a torn file: write to a temporary name in the same folder, fsync, rename."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from grasprune.errors import UserError


def _describe_os_error(path: Path, err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return f"disk full while writing {path}: free some space and retry (the previous version is intact)"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: no write permission (choose a writable folder)"
    return f"cannot write {path}: {err.strerror or err}"


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename the temporary file onto ``path``.

    On any failure the temporary file is removed and the old ``path`` (if any) is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise UserError(_describe_os_error(path, err)) from err
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise UserError(_describe_os_error(path, err)) from err
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_folder_atomic(path: str | os.PathLike, writer: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``writer(tmp_folder)``, fsync what it wrote, then rename the folder onto ``path`` (replacing an
    existing one only with ``overwrite``): a folder at ``path`` is complete. On failure nothing is left behind.
    """
    path = Path(path).resolve()
    if path.exists() and not overwrite:
        raise UserError(f"output folder {path} exists: pass --overwrite or another --out")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror} (choose a writable --out)") from err
    try:
        writer(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write checkpoint {path}: {err.strerror or err} (nothing was left behind)") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
