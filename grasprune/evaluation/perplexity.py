"""Perplexity with the protocol the pruning papers share (SparseGPT, Wanda, LLM-Pruner, GRASPrune).

Join the test rows, tokenise once with the tokenizer's default special tokens, cut into
non-overlapping windows of ``seqlen`` (remainder dropped), score each window's ``seqlen - 1``
next-token predictions, PPL = exp(total NLL / tokens scored). A non-finite loss is an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grasprune.data import read_source, tokenize_source
from grasprune.errors import UserError

EVAL_DATASETS = ("wikitext2", "ptb")


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    seqlen: int
    windows: int
    tokens: int
    dataset: str

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "ppl": self.ppl, "seqlen": self.seqlen, "windows": self.windows,
                "tokens": self.tokens}


def evaluation_tokens(dataset: str, tokenizer) -> torch.Tensor:
    return tokenize_source(read_source(dataset, "evaluation"), tokenizer, add_special_tokens=True)


@torch.no_grad()
def perplexity(
    model,
    tokenizer,
    dataset: str = "wikitext2",
    seqlen: int = 512,
    max_windows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    tokens: torch.Tensor | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``dataset`` (or on given ``tokens``)."""
    if seqlen < 2:
        raise UserError(f"seqlen {seqlen} is too small: pass --seqlen 2 or more")
    if max_windows is not None and max_windows < 1:
        raise UserError(f"--max-windows {max_windows} must be at least 1")
    tokens = evaluation_tokens(dataset, tokenizer) if tokens is None else tokens
    windows = tokens.numel() // seqlen
    if windows == 0:
        raise UserError(f"{dataset} has {tokens.numel()} tokens, fewer than one window of {seqlen}")
    if max_windows is not None:
        windows = min(windows, max_windows)
    total_nll = 0.0
    device = next(model.parameters()).device
    for w in range(windows):
        ids = tokens[w * seqlen : (w + 1) * seqlen].unsqueeze(0).to(device)
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        nll = F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        if not math.isfinite(nll):
            raise UserError(f"non-finite loss in window {w} of {dataset}: the model produces NaN/inf; try fp32")
        total_nll += nll
        if progress is not None:
            progress(w + 1, windows)
    scored = windows * (seqlen - 1)
    return PerplexityResult(math.exp(total_nll / scored), seqlen, windows, scored, dataset)
