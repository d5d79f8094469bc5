"""Timed work shared by bench.speed (CPU) and bench.gpu: the gate-training step against a plain
forward+backward, greedy decoding with a KV cache, and what a model reads per token."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from grasprune.method.adapters import ModelAdapter
from grasprune.method.gates import Gates
from grasprune.method.train import block_loss, gate_probs, ste_factors
from grasprune.method.units import UnitLayout


def sync_for(device: torch.device | str) -> Callable[[], None]:
    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def gate_training_step(model, adapter: ModelAdapter, layout: UnitLayout, budget: int, tau: float = 1.5,
                       lr: float = 1e-2) -> tuple[Callable[[torch.Tensor], None], Gates]:
    """One step of ``train.train_gates`` without its event and checkpoint I/O: projection, STE factors,
    gated forward, backward to the gate scores, AdamW step."""
    device = next(model.parameters()).device
    gates = Gates(adapter, layout)
    scores = torch.nn.Parameter(torch.zeros(layout.num_units, device=device))
    optimizer = torch.optim.AdamW([scores], lr=lr, betas=(0.9, 0.99), weight_decay=0.0)

    def step(block: torch.Tensor) -> None:
        factors, mask = ste_factors(scores, layout, budget, tau)
        gates.set(factors)
        loss = block_loss(model, block)
        layout.kept_counts(mask)
        gate_probs(scores.detach(), tau).mean().item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        gates.set(None)

    return step, gates


def plain_step(model) -> Callable[[torch.Tensor], None]:
    """A forward+backward of the frozen model whose gradient flows through every layer, down to the
    input embeddings (which require grad in place of gates)."""
    embed = model.get_input_embeddings()
    device = next(model.parameters()).device

    def step(block: torch.Tensor) -> None:
        ids = block.unsqueeze(0).to(device)
        embeds = embed(ids).detach().requires_grad_(True)
        loss = model(inputs_embeds=embeds, labels=ids, use_cache=False).loss
        loss.backward()
        loss.item()

    return step


def interleaved_times(steps: dict[str, Callable[[], None]], repeats: int, warmup: int,
                      sync: Callable[[], None]) -> dict[str, list[float]]:
    """Seconds of each step, measured alternately (the order flips every round) after ``warmup`` rounds."""
    for _ in range(warmup):
        for run in steps.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(repeats):
        for name in list(steps)[:: 1 if round_ % 2 == 0 else -1]:
            sync()
            started = time.perf_counter()
            steps[name]()
            sync()
            times[name].append(time.perf_counter() - started)
    return times


def overhead_summary(times: dict[str, list[float]]) -> dict:
    """``ratio``: median gate step over median plain step. ``paired_ratio``: the median of each round's
    gate/plain ratio; the two steps of a round run back to back, so a machine that drifts slower or
    faster over the run (these VMs do, by 20% within minutes) moves both and cancels out."""
    gate, plain = statistics.median(times["gate_step"]), statistics.median(times["plain_step"])
    paired = statistics.median(g / p for g, p in zip(times["gate_step"], times["plain_step"]))
    return {"gate_step_median_s": round(gate, 5), "plain_step_median_s": round(plain, 5),
            "ratio": round(gate / plain, 4), "paired_ratio": round(paired, 4), "repeats": len(times["gate_step"]),
            "gate_step_s": [round(t, 5) for t in times["gate_step"]],
            "plain_step_s": [round(t, 5) for t in times["plain_step"]]}


def params_read_per_token(model) -> int:
    """Parameters a decode step reads: all but the input embedding (a lookup), the lm_head included
    (even when it shares the embedding's matrix)."""
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    others = sum(p.numel() for p in model.parameters() if p is not embed and p is not head)
    return others + head.numel()


def kv_bytes_per_token(model) -> int:
    """Keys and values cached per token: per layer KV heads × head_dim × 2 × bytes per element."""
    adapter = ModelAdapter(model)
    size = next(model.parameters()).element_size()
    return sum(s.kv_groups * adapter.head_dim * 2 * size for s in adapter.shapes())


@torch.no_grad()
def decode_speed(model, prompts: torch.Tensor, new_tokens: int) -> dict:
    """Prefill and greedy decode (one token at a time, DynamicCache) over each prompt row of
    ``prompts`` (P, L); the first prompt also runs once untimed as a warm-up."""
    decoder = GreedyDecoder(model, 1, prompts.shape[1], new_tokens)
    decoder(prompts[:1])
    runs = [decoder(prompt[None]) for prompt in prompts]
    count = prompts.shape[0]
    return {"prefill_tokens_per_s": round(count * prompts.shape[1] / sum(r["prefill_s"] for r in runs), 2),
            "decode_tokens_per_s": round(count * new_tokens / sum(r["decode_s"] for r in runs), 2),
            "kv_cache_bytes_per_token_measured": runs[-1]["kv_cache_bytes_per_token_measured"], "prompts": count,
            "prompt_len": prompts.shape[1], "new_tokens": new_tokens}


def peak_rss_bytes() -> dict:
    """This process's resident set now and at its peak (Linux ``VmRSS`` / ``VmHWM``)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return {"rss_bytes": fields.get("VmRSS"), "peak_rss_bytes": fields.get("VmHWM")}


class GreedyDecoder:
    """Prefill and greedy decode of a batch of equal-length prompts, one token per step for every row.

    ``compiled=False``: the model's own forward with a ``DynamicCache`` (what ``generate`` does by default).
    ``compiled=True``: a ``StaticCache`` sized ``prompt_len + new_tokens`` and the decode step through
    ``torch.compile(fullgraph=True, dynamic=False)``; the prefill stays eager. The same code runs for the
    dense and the pruned model, so either setting costs both the same fixed work per step.
    """

    def __init__(self, model, batch: int, prompt_len: int, new_tokens: int, compiled: bool = False):
        self.model, self.new_tokens, self.compiled = model, new_tokens, compiled
        self.device = next(model.parameters()).device
        self.cache = self.step = None
        if compiled:
            from transformers import StaticCache

            self.cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens)
            self.step = torch.compile(model.forward, fullgraph=True, dynamic=False)
            self.positions = [torch.tensor([prompt_len + i], device=self.device) for i in range(new_tokens)]

    @torch.inference_mode()
    def __call__(self, prompts: torch.Tensor) -> dict:
        """Seconds of the prefill and of the ``new_tokens`` decode steps of ``prompts`` (B, L); the greedy
        tokens; the KV cache's bytes per cached token of one sequence."""
        sync = sync_for(self.device)
        ids = prompts.to(self.device)
        if self.cache is not None:
            self.cache.reset()
        sync()
        started = time.perf_counter()
        out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True)
        sync()
        middle = time.perf_counter()
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        tokens = [token]
        for i in range(self.new_tokens):
            if self.step is not None:
                out = self.step(input_ids=token, past_key_values=cache, use_cache=True,
                                cache_position=self.positions[i])
            else:
                out = self.model(input_ids=token, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
            tokens.append(token)
        sync()
        ended = time.perf_counter()
        cached = sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel()
                     * layer.values.element_size() for layer in cache.layers)
        slots = ids.shape[0] * cache.layers[0].keys.shape[-2]
        return {"prefill_s": middle - started, "decode_s": ended - middle, "tokens": torch.cat(tokens, 1).cpu(),
                "kv_cache_bytes_per_token_measured": cached / slots}


def allow_recompiles(limit: int = 64) -> None:
    """Every model × batch is one more compiled entry of the same ``forward``: let there be enough, and fail
    rather than fall back to eager silently if there are not."""
    config = torch._dynamo.config
    config.recompile_limit = config.cache_size_limit = max(limit, config.recompile_limit)
    if hasattr(config, "fail_on_recompile_limit_hit"):
        config.fail_on_recompile_limit_hit = True


def interleaved_decode(models: dict, prompts: torch.Tensor, new_tokens: int, batch: int, compiled: bool,
                       rounds: int) -> dict:
    """Decode figures of every model under one setting, measured interleaved in this process.

    ``prompts`` (P, L) go in batches of ``batch`` rows; every model first decodes the first batch once,
    untimed (compilation happens there and is timed separately); then ``rounds`` times over all batches,
    each batch is decoded by every model in turn, the order rotating, so that a change in the machine's
    load hits all models alike. Returns per model the seconds of each (round, batch) and the warm-up.
    """
    groups = prompts[: prompts.shape[0] // batch * batch].view(-1, batch, prompts.shape[1])
    names = list(models)
    if compiled:
        allow_recompiles()
    decoders = {name: GreedyDecoder(m, batch, prompts.shape[1], new_tokens, compiled) for name, m in models.items()}
    runs: dict[str, dict] = {name: {"prefill_s": [], "decode_s": []} for name in names}
    for name in names:
        started = time.perf_counter()
        first = decoders[name](groups[0])
        runs[name]["warmup_s"] = round(time.perf_counter() - started, 3)
        runs[name]["kv_cache_bytes_per_token_measured"] = first["kv_cache_bytes_per_token_measured"]
        runs[name]["first_tokens"] = first["tokens"][0].tolist()
    turn = 0
    for _ in range(rounds):
        for group in groups:
            for name in names[turn % len(names):] + names[: turn % len(names)]:
                done = decoders[name](group)
                runs[name]["prefill_s"].append(done["prefill_s"])
                runs[name]["decode_s"].append(done["decode_s"])
            turn += 1
    return runs


def decode_rows(runs: dict, batch: int, prompt_len: int, new_tokens: int, reference: str) -> dict:
    """Tokens/s per model (median over the interleaved runs) and the speed-up over ``reference``: the median
    of the per-run ratios, each pairing runs of the same prompts measured next to each other."""
    rows = {}
    ref = runs[reference]
    for name, run in runs.items():
        decode = [batch * new_tokens / s for s in run["decode_s"]]
        prefill = [batch * prompt_len / s for s in run["prefill_s"]]
        rows[name] = {
            "decode_tokens_per_s": round(statistics.median(decode), 2),
            "prefill_tokens_per_s": round(statistics.median(prefill), 2),
            "decode_speedup": round(statistics.median(r / s for r, s in zip(ref["decode_s"], run["decode_s"],
                                                                          strict=True)), 4),
            "prefill_speedup": round(statistics.median(r / s for r, s in zip(ref["prefill_s"], run["prefill_s"],
                                                                           strict=True)), 4),
            "decode_s": [round(s, 4) for s in run["decode_s"]],
            "warmup_s": run["warmup_s"],
            "kv_cache_bytes_per_token_measured": run["kv_cache_bytes_per_token_measured"],
            "first_tokens": run["first_tokens"],
        }
    return rows


def weight_matmuls(model) -> Callable[[], None]:
    """Only the matrix-vector products of one decode step (every ``nn.Linear`` weight in module order,
    the lm_head included) on a random one-token input: what a decode step costs without its norms, rotary,
    attention, cache update and Python."""
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {w.shape[1]: torch.randn(1, 1, w.shape[1], dtype=w.dtype, device=w.device) for w in linears}

    @torch.inference_mode()
    def run() -> None:
        for w in linears:
            torch.nn.functional.linear(inputs[w.shape[1]], w)

    return run
