"""Zero-shot accuracy scored as lm-evaluation-harness's ``HFLM`` scores a causal LM.

Requests are tokenised as ``HFLM`` does (``_encode_pair``: trailing context whitespace moves to the
continuation; the tokenizer's default special tokens; left truncation to the model's max length).
Unlike ``HFLM``, requests that share their context tokens are scored together: the context runs
once (its KV cache is reused for every choice), so an item costs one context plus its choices'
tokens instead of one full sequence per choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from grasprune.evaluation.zeroshot_tasks import ACC_NORM_TASKS, Item, load_task

AVG5_TASKS = ("piqa", "winogrande", "hellaswag", "arc_easy", "arc_challenge")
AVG7_TASKS = (*AVG5_TASKS, "boolq", "openbookqa")
DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither config nor tokenizer gives one
TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no model_max_length"


def max_length(model, tokenizer) -> int:
    """lm-eval's ``resolve_max_length``: config positions, else the tokenizer's limit, else 2048."""
    config = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, attr, None) is not None:
            return int(getattr(config, attr))
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit != TOKENIZER_INFINITY else DEFAULT_MAX_LENGTH


def _prefix_token_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _encode(tokenizer, text: str) -> list[int]:
    """``HFLM.tok_encode``: the tokenizer's default special tokens, none if the text starts with BOS."""
    starts_with_bos = text.startswith(tokenizer.decode(_prefix_token_id(tokenizer)))
    return tokenizer.encode(text, **({"add_special_tokens": False} if starts_with_bos else {}))


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``(context, continuation)`` as lm-eval's ``loglikelihood`` makes them."""
    if context == "":
        tokens = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = _prefix_token_id(tokenizer)
        return ([prefix], tokens) if tokens[0] != prefix else (tokens[:1], tokens[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = _encode(tokenizer, context + continuation)
    context_ids = _encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]


def _truncate(context: list[int], continuation: list[int], limit: int) -> tuple[int, ...]:
    """The context the model sees: lm-eval keeps the last ``limit + 1`` tokens of context + continuation."""
    if len(continuation) > limit:
        raise ValueError(f"a continuation of {len(continuation)} tokens exceeds the model's {limit}")
    keep = max(0, len(context) + len(continuation) - (limit + 1))
    return tuple(context[keep:])


def loglikelihoods(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "loglikelihood",
) -> list[float]:
    """Summed log-probability of each continuation given its context, in fp32 log-softmax.

    A batch holds up to ``batch_size`` requests (at least one whole group of requests sharing a
    context); contexts are left-padded, their continuations right-padded behind them.
    """
    limit = max_length(model, tokenizer)
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for index, (context, continuation) in enumerate(pairs):
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        groups.setdefault(_truncate(context_ids, continuation_ids, limit), []).append(
            (index, continuation_ids)
        )
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[0]))
    results = [0.0] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(pairs), disable=not progress, desc=desc) as bar:
            for chunk in _chunks(ordered, batch_size):
                for index, value in _score_chunk(model, chunk):
                    results[index] = value
                bar.update(sum(len(requests) for _, requests in chunk))
    finally:
        model.train(was_training)
    return results


def _chunks(groups: list, batch_size: int):
    chunk, size = [], 0
    for group in groups:
        if chunk and size + len(group[1]) > batch_size:
            yield chunk
            chunk, size = [], 0
        chunk.append(group)
        size += len(group[1])
    if chunk:
        yield chunk


def _score_chunk(model, chunk: list[tuple[tuple[int, ...], list[tuple[int, list[int]]]]]):
    """Yield ``(request index, log-likelihood)``: one pass over the contexts, one over the choices."""
    device = next(model.parameters()).device
    width = len(chunk[0][0])
    ids = torch.zeros(len(chunk), width, dtype=torch.long)
    mask = torch.zeros(len(chunk), width, dtype=torch.long)
    for row, (context, _) in enumerate(chunk):
        ids[row, width - len(context) :] = torch.tensor(context)
        mask[row, width - len(context) :] = 1
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device),
        use_cache=True,
    )
    first = out.logits[:, -1].float().log_softmax(-1).cpu()

    rows = [(g, index, cont) for g, (_, requests) in enumerate(chunk) for index, cont in requests]
    rest = _continuation_logprobs(model, out.past_key_values, mask, rows, device)
    for r, (g, index, cont) in enumerate(rows):
        yield (
            index,
            float(first[g, cont[0]]) + (float(rest[r, : len(cont) - 1].sum()) if rest is not None else 0.0),
        )


def _continuation_logprobs(
    model, cache, context_mask: torch.Tensor, rows: list, device
) -> torch.Tensor | None:
    """Log-probs of tokens 1.. of each continuation, fed after its context's cached keys and values."""
    length = max(len(cont) for _, _, cont in rows) - 1
    if length == 0:
        return None
    groups = torch.tensor([g for g, _, _ in rows])
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    targets = torch.zeros(len(rows), length, dtype=torch.long)
    for r, (_, _, cont) in enumerate(rows):
        ids[r, : len(cont) - 1] = torch.tensor(cont[:-1])
        targets[r, : len(cont) - 1] = torch.tensor(cont[1:])
        mask[r, : len(cont) - 1] = 1
    cache.reorder_cache(groups.to(device))
    context_mask = context_mask[groups]
    out = model(
        input_ids=ids.to(device),
        attention_mask=torch.cat([context_mask, mask], dim=1).to(device),
        position_ids=(context_mask.sum(-1, keepdim=True) + torch.arange(length)).to(device),
        past_key_values=cache,
        use_cache=True,
    )
    logprobs = out.logits.float().log_softmax(-1).cpu()
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask


def score_items(items: Sequence[Item], lls: Sequence[float], acc_norm: bool) -> dict:
    """lm-eval's multiple-choice metrics: ``acc`` (argmax log-likelihood) and ``acc_norm`` (argmax
    log-likelihood / ``len(choice)`` in characters); ties go to the first choice, as with np.argmax."""
    hits, norm_hits, start = 0, 0, 0
    for item in items:
        item_lls = np.asarray(lls[start : start + len(item.requests)], dtype=np.float64)
        start += len(item.requests)
        hits += int(np.argmax(item_lls)) == item.gold
        norm_hits += int(np.argmax(item_lls / np.array([float(len(c)) for c in item.choices]))) == item.gold
    n = len(items)
    metrics = {"acc": hits / n if n else float("nan")}
    if acc_norm:
        metrics["acc_norm"] = norm_hits / n if n else float("nan")
    return {**metrics, "n": n}


def headline(metrics: dict) -> float:
    """The number papers average: acc_norm where the task has it, else acc."""
    return metrics.get("acc_norm", metrics["acc"])


def averages(tasks: dict[str, dict]) -> dict[str, float | None]:
    """GRASPrune's five-task and LLM-Pruner's seven-task mean (None unless every task was run)."""

    def mean(names: tuple[str, ...]) -> float | None:
        if not all(name in tasks for name in names):
            return None
        return float(np.mean([headline(tasks[name]) for name in names]))

    return {"avg5": mean(AVG5_TASKS), "avg7": mean(AVG7_TASKS)}


def evaluate_zeroshot(
    model,
    tokenizer,
    tasks: list[str],
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    data_root: Path | str | None = None,
    source: str = "local",
) -> dict:
    """``{"tasks": {name: {"acc", "acc_norm" (where lm-eval has it), "n"}}, "avg5", "avg7"}``."""
    results = {}
    for name in tasks:
        items = load_task(name, limit, data_root, source)
        pairs = [request for item in items for request in item.requests]
        lls = loglikelihoods(
            model, tokenizer, pairs, batch_size, progress=progress, desc=f"{name} ({len(items)} items)"
        )
        results[name] = score_items(items, lls, acc_norm=name in ACC_NORM_TASKS)
    return {"tasks": results, **averages(results)}
