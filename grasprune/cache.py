"""The user cache folder, and the tokenized text kept in it.

Everything here can be rebuilt: converted models, dense perplexities, token ids. It lives under
``$GRASPRUNE_CACHE`` (or ``$XDG_CACHE_HOME/grasprune``, ``~/.cache/grasprune``), never beside the data,
which may be read-only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from grasprune.errors import UserError

# Below this many characters tokenizing costs less than reading the cache file back.
MIN_CACHED_CHARS = 64 * 1024
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
            return stored
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
    from safetensors.torch import save_file

    from grasprune.atomic import write_atomic

    try:
        write_atomic(path, lambda tmp: save_file({"ids": tokens.to(torch.int32)}, str(tmp)))
    except UserError:  # a read-only or full cache folder: the ids are still right, only not kept
        pass
