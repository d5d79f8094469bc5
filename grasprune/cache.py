"""The user cache folder, and the tokenized text kept in it.

Everything here can be rebuilt: converted models, dense perplexities, token ids. It lives under
``$GRASPRUNE_CACHE`` (or ``$XDG_CACHE_HOME/grasprune``, ``~/.cache/grasprune``), never beside the data,
which may be read-only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from grasprune.errors import UserError

if TYPE_CHECKING:  # torch is imported where tokens are made: `grasprune cache` and --help never need it
    import torch

# Below this many characters tokenizing costs less than reading the cache file back.
MIN_CACHED_CHARS = 64 * 1024
# The token files' total size is kept under this (oldest-read files removed first); $GRASPRUNE_TOKEN_CACHE_MB
# overrides it. WikiText-2's test split is ~1.2 MB of ids, so the default keeps hundreds of texts.
TOKEN_CACHE_MB = 256
# Its ids (with the call's special-token setting) go into the key: they catch a tokenizer whose Python
# side adds tokens that its backend JSON does not say.
PROBE = "Probe: 12 tokens, café\n\n = = x = =\n"


def cache_dir() -> Path:
    """User cache for converted models and tokenized data (never beside the read-only data)."""
    if os.environ.get("GRASPRUNE_CACHE"):
        return Path(os.environ["GRASPRUNE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "grasprune"


def cached_tokens(text: str, tokenizer, add_special_tokens: bool) -> torch.Tensor:
    """The token ids of ``text`` as a 1-D long tensor, from the user cache when this tokenizer has
    tokenized this text before. WikiText-2's test split takes one to two seconds on a CPU and a run reads
    its text two or three times (calibration, scales, dense and pruned evaluation)."""
    path = _token_path(text, tokenizer, add_special_tokens)
    if path is not None:
        stored = _read_tokens(path)
        if stored is not None:
            _touch(path)
            return stored
    import torch

    ids = tokenizer(text, add_special_tokens=add_special_tokens, return_attention_mask=False).input_ids
    tokens = torch.tensor(ids, dtype=torch.long)
    if path is not None:
        _write_tokens(path, tokens)
    return tokens


def _token_path(text: str, tokenizer, add_special_tokens: bool) -> Path | None:
    """Where these ids are cached: keyed by the text, the whole tokenizer (vocabulary, merges, normalizer,
    pre- and post-processor), its class and the probe's ids. None for short texts and for tokenizers
    without a serialisable backend (slow tokenizers), which are never cached."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if len(text) < MIN_CACHED_CHARS or backend is None:
        return None
    probe = tokenizer(PROBE, add_special_tokens=add_special_tokens, return_attention_mask=False).input_ids
    digest = hashlib.sha256()
    for part in (type(tokenizer).__name__, str(add_special_tokens), repr(probe), backend.to_str(), text):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return cache_dir() / "tokens" / f"{digest.hexdigest()[:32]}.safetensors"


def _read_tokens(path: Path) -> torch.Tensor | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)["ids"].long()
    except (OSError, KeyError, SafetensorError):  # absent, torn by hand: tokenize again
        return None


def _write_tokens(path: Path, tokens: torch.Tensor) -> None:
    import torch
    from safetensors.torch import save_file

    from grasprune.atomic import write_atomic

    try:
        write_atomic(path, lambda tmp: save_file({"ids": tokens.to(torch.int32)}, str(tmp)))
    except UserError:  # a read-only or full cache folder: the ids are still right, only not kept
        return
    trim_least_recently_read(path.parent, token_cache_limit_bytes(), keep=path)


def token_cache_limit_bytes() -> int:
    raw = os.environ.get("GRASPRUNE_TOKEN_CACHE_MB", "")
    try:
        megabytes = float(raw) if raw.strip() else TOKEN_CACHE_MB
    except ValueError:
        raise UserError(f"GRASPRUNE_TOKEN_CACHE_MB={raw!r} is not a number: set it to a size in MB, "
                        "e.g. 256") from None
    return max(0, int(megabytes * 2**20))


def _touch(path: Path) -> None:
    """A read marks the file as recently used (its mtime: atime is often off or coarse on Linux mounts)."""
    try:
        os.utime(path)
    except OSError:  # a read-only cache: eviction order is only a little less fair
        pass


def trim_least_recently_read(folder: Path, limit_bytes: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently read ``*.safetensors`` files of ``folder`` until the rest fit in
    ``limit_bytes``; ``keep`` (the file just written) always stays. Returns the removed files."""
    entries = []
    for file in folder.glob("*.safetensors"):
        try:
            stat = file.stat()
        except OSError:  # removed by another process meanwhile
            continue
        entries.append((stat.st_mtime, stat.st_size, file))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, file in sorted(entries, key=lambda entry: entry[0]):
        if total <= limit_bytes:
            break
        if file == keep:
            continue
        try:
            file.unlink()
        except OSError:
            continue
        total -= size
        removed.append(file)
    return removed


# What each part of the cache holds, for `grasprune cache` (every part can be rebuilt).
PARTS = {
    "models": "GGUF models converted to safetensors (rebuilt on the next load: ~30 s for SmolLM2)",
    "tokens": "tokenized text (rebuilt on the next read: seconds)",
    "dense-ppl": "dense-model perplexities (measured again on the next run that compares with them)",
}


def cache_usage() -> dict[str, tuple[int, int]]:
    """Files and bytes in each part of the cache (zeros for a part not made yet)."""
    usage = {}
    for part in PARTS:
        folder = cache_dir() / part
        sizes = [_size_or_none(f) for f in folder.rglob("*")] if folder.is_dir() and not folder.is_symlink() else []
        sizes = [size for size in sizes if size is not None]
        usage[part] = (len(sizes), sum(sizes))
    return usage


def _size_or_none(path: Path) -> int | None:
    """A regular file's size; None for folders, links and files removed meanwhile by another process."""
    try:
        return path.stat().st_size if path.is_file() and not path.is_symlink() else None
    except OSError:
        return None


def clear_cache(parts: list[str]) -> dict[str, int]:
    """Remove these parts of the cache (names from ``PARTS``); returns the bytes freed per part."""
    import shutil

    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        raise UserError(f"unknown cache part {', '.join(unknown)}: choose from {', '.join(PARTS)} or all")
    usage, freed = cache_usage(), {}
    for part in parts:
        folder = cache_dir() / part
        freed[part] = usage[part][1]
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
        elif folder.is_symlink():  # never follow a link out of the cache: remove the link only
            folder.unlink()
    return freed
