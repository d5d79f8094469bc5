"""What the Explain page shows, computed by the engine itself on a model small enough to follow.

- the projection's ranking laid out along the parameters it spends, and where the budget cuts it;
- gate training one step at a time (``GateStepper``: ``ste_factors``, ``block_loss`` and AdamW as
  ``train_gates`` runs them), with the gradient each score receives and the units that enter or
  leave the mask;
- one layer's KV groups with the parameters each carries;
- scale calibration and the fold check (sliced, folded model against the gated, scaled one).

Nothing here knows about Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from grasprune.config import DEFAULT_CALIB, DEFAULT_RESCALE
from grasprune.data import calibration_blocks
from grasprune.method.adapters import ModelAdapter
from grasprune.method.export import sliced_model
from grasprune.method.gates import Gates
from grasprune.method.models import load_model
from grasprune.method.train import (
    LoopConfig,
    block_loss,
    calibrate_scales,
    epoch_order,
    gate_optimizer,
    gate_probs,
    ste_factors,
)
from grasprune.method.units import FFN, UnitLayout, layout_of, project, rank

PAPER_URL = "https://arxiv.org/abs/2604.19398"
# In-process tiny Llamas (random weights, bytes as tokens): 8 query heads over 4 KV heads (GQA) or 8 (MHA).
TINY_MODELS = {"tiny-gqa": 4, "tiny-mha": 8}


class ByteTokenizer:
    """UTF-8 bytes as token ids (vocabulary 256): real text for the tiny models without a tokenizer file."""

    def __call__(self, text: str, add_special_tokens: bool = False, return_attention_mask: bool = False):
        return SimpleNamespace(input_ids=list(text.encode("utf-8")))


def tiny_llama(kv_heads: int, seed: int = 0):
    """A 4-layer Llama with 8 query heads of 16 dimensions, hidden size 64 and 64 FFN channels."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=kv_heads,
        head_dim=16,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def unit_name(layout: UnitLayout, unit: int) -> str:
    kind = "FFN" if int(layout.kind[unit]) == FFN else "KV"
    return f"L{int(layout.layer[unit])} {kind} {int(layout.index[unit])}"


@dataclass
class Lab:
    """A frozen fp32 model with gates attached, its calibration blocks and a gate stepper."""

    spec: str
    model: torch.nn.Module
    adapter: ModelAdapter
    layout: UnitLayout
    gates: Gates
    rescale: torch.Tensor  # blocks for scale calibration (the other half of the text)
    stepper: GateStepper


def open_lab(spec: str, samples: int = 16, block_len: int = 64, rescale_samples: int = 8) -> Lab:
    """``spec``: one of ``TINY_MODELS`` (built here) or any model spec ``load_model`` accepts."""
    spec = spec.strip()
    if spec in TINY_MODELS:
        model, tokenizer = tiny_llama(TINY_MODELS[spec]), ByteTokenizer()
    else:
        model, tokenizer = load_model(spec, dtype=torch.float32)
    model.requires_grad_(False)
    calib = calibration_blocks(DEFAULT_CALIB, tokenizer, samples, block_len)
    rescale = calibration_blocks(DEFAULT_RESCALE, tokenizer, rescale_samples, block_len)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    gates = Gates(adapter, layout)
    return Lab(spec, model, adapter, layout, gates, rescale, GateStepper(model, gates, layout, calib))


@dataclass(frozen=True)
class Ranking:
    """Units in the order the projection spends the budget: each layer's reserved best FFN channel and
    best KV group first, then every other unit by gate probability. Kept units are exactly a prefix."""

    units: torch.Tensor  # unit ids
    start: torch.Tensor  # parameters spent before each unit: the left edge of its bar
    cost: torch.Tensor
    probs: torch.Tensor
    reserved: torch.Tensor  # bool
    kept: torch.Tensor  # bool
    budget: int
    mask: torch.Tensor  # the projection's mask, layout order

    @property
    def cut(self) -> int:
        """How many ranked units the budget line keeps."""
        return int(self.kept.sum())


def ranking(probs: torch.Tensor, layout: UnitLayout, budget: int) -> Ranking:
    probs = probs.detach().cpu()
    mask = project(probs, layout, budget)
    order, forced = rank(probs, layout)
    units = torch.cat([order[forced[order]], order[~forced[order]]])
    cost = layout.cost[units]
    return Ranking(
        units=units,
        start=torch.cumsum(cost, 0) - cost,
        cost=cost,
        probs=probs[units],
        reserved=forced[units],
        kept=mask[units].bool(),
        budget=budget,
        mask=mask,
    )


@dataclass(frozen=True)
class StepRecord:
    """One gate-training step: what the forward pass saw and what the update did."""

    step: int  # steps taken so far, this one included
    block: int  # the calibration block of this step
    loss: float
    tau: float
    budget: int
    probs: torch.Tensor  # p = sigmoid(s / tau) before the update
    mask: torch.Tensor  # the hard mask of the forward pass
    gate_grad: torch.Tensor  # dL/dz per unit
    score_grad: torch.Tensor  # dL/ds per unit, as autograd delivered it to the scores
    next_mask: torch.Tensor  # the projection of the updated scores (the next step's mask)

    @property
    def entered(self) -> list[int]:
        return torch.nonzero((self.next_mask > 0) & (self.mask == 0)).flatten().tolist()

    @property
    def left(self) -> list[int]:
        return torch.nonzero((self.next_mask == 0) & (self.mask > 0)).flatten().tolist()


@dataclass
class GateStepper:
    """``train_gates`` one step at a time: same data order, schedules, STE, projection options (``--align``,
    the tie-break, the layer minimum), loss and optimizer (``gate_optimizer``), so N steps here end at the
    scores ``train_gates`` returns after N steps."""

    model: torch.nn.Module
    gates: Gates
    layout: UnitLayout
    blocks: torch.Tensor
    cfg: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=1))
    scores: torch.nn.Parameter = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    taken: int = field(init=False, default=0)
    losses: list[float] = field(init=False, default_factory=list)
    last: StepRecord | None = field(init=False, default=None)

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        self.scores = torch.nn.Parameter(torch.zeros(self.layout.num_units))
        self.optimizer = gate_optimizer(self.scores, self.cfg, self.layout.group)
        self.taken, self.losses, self.last = 0, [], None

    @property
    def total(self) -> int:
        """The schedule length of ``cfg`` (stepping may go on past it, at the schedule's end values)."""
        return self.cfg.epochs * self.blocks.shape[0]

    def probs(self) -> torch.Tensor:
        return gate_probs(self.scores.detach(), self.cfg.tau_at(self.taken, self.total))

    def step(self, budget: int) -> StepRecord:
        n = self.blocks.shape[0]
        epoch, i = divmod(self.taken, n)
        block = int(epoch_order(self.cfg.seed, epoch, n)[i])
        tau = self.cfg.tau_at(self.taken, self.total)
        rule = {"align": self.cfg.align, "tie_break": self.cfg.tie_break, "layer_minimum": self.cfg.layer_minimum}
        factors, mask = ste_factors(self.scores, self.layout, budget, tau, **rule)
        factors.retain_grad()
        self.gates.set(factors)
        try:
            loss = block_loss(self.model, self.blocks[block], self.gates, self.cfg.distill)
        finally:
            self.gates.set(None)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr_at(self.taken, self.total)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        probs = gate_probs(self.scores.detach(), tau)
        score_grad = self.scores.grad.detach().clone()
        self.optimizer.step()
        self.taken += 1
        self.losses.append(loss.item())
        self.last = StepRecord(
            step=self.taken,
            block=block,
            loss=loss.item(),
            tau=tau,
            budget=budget,
            probs=probs,
            mask=mask,
            gate_grad=factors.grad.detach().clone(),
            score_grad=score_grad,
            next_mask=project(self.probs(), self.layout, budget, **rule),
        )
        return self.last


@dataclass(frozen=True)
class SteChain:
    """The chain rule for one unit's score: dL/ds = dL/dz · dp/ds, with dp/ds = p(1 - p)/tau."""

    unit: int
    hard_gate: float  # m: what the forward pass used
    prob: float
    gate_grad: float  # dL/dz
    sigmoid_slope: float  # dp/ds
    chained: float  # dL/dz · dp/ds
    autograd: float  # what the score actually received


def ste_chain(record: StepRecord, unit: int) -> SteChain:
    p = float(record.probs[unit])
    slope = p * (1 - p) / record.tau
    gate_grad = float(record.gate_grad[unit])
    return SteChain(
        unit=unit,
        hard_gate=float(record.mask[unit]),
        prob=p,
        gate_grad=gate_grad,
        sigmoid_slope=slope,
        chained=gate_grad * slope,
        autograd=float(record.score_grad[unit]),
    )


@dataclass(frozen=True)
class KVGroup:
    index: int  # the K/V head
    query_heads: list[int]
    params: dict[str, int]  # per projection: the rows (or o_proj columns) and biases that leave with it
    kept: bool

    @property
    def total(self) -> int:
        return sum(self.params.values())


def attention_kind(query_heads: int, kv_heads: int) -> str:
    if kv_heads == query_heads:
        return "MHA (multi-head: every query head has its own K/V head)"
    if kv_heads == 1:
        return "MQA (multi-query: all query heads share one K/V head)"
    return f"GQA (grouped-query: {query_heads // kv_heads} query heads share each K/V head)"


def kv_groups(adapter: ModelAdapter, layout: UnitLayout, layer: int, mask: torch.Tensor) -> list[KVGroup]:
    """One layer's KV groups, read from its real shapes: query head ``h`` reads K/V head ``h // G``
    (Hugging Face's ``repeat_kv``), so group ``g`` holds query heads ``g·G … g·G + G − 1``."""
    view, dh, d, size = adapter.views[layer], adapter.head_dim, adapter.hidden, adapter.group_size
    kv_mask = layout.split(mask.detach().cpu())[layer][1]

    def rows(proj, heads: int) -> int:
        return heads * dh * d + (heads * dh if proj.bias is not None else 0)

    params = {
        "q_proj rows": rows(view.q, size),
        "k_proj rows": rows(view.k, 1),
        "v_proj rows": rows(view.v, 1),
        "o_proj columns": size * dh * d,
    }
    return [
        KVGroup(
            index=g,
            query_heads=list(range(g * size, (g + 1) * size)),
            params=dict(params),
            kept=bool(kv_mask[g] > 0),
        )
        for g in range(layout.shapes[layer].kv_groups)
    ]


@dataclass(frozen=True)
class ScaleReport:
    """Scale calibration with a fixed mask, and the check that folding the scales is exact."""

    step: int  # gate steps taken when the mask was fixed
    mask: torch.Tensor
    gamma: torch.Tensor  # per unit; 1 on pruned units (and on every unit before calibration)
    loss_before: float  # mean loss on the calibration blocks with gamma = 1
    loss_after: float
    max_diff: float  # max |logits of the sliced, folded model - logits of the gated, scaled model|


def calibrate_and_fold(lab: Lab, mask: torch.Tensor, epochs: int = 1) -> ScaleReport:
    scale_keys = lab.adapter.family.scale_keys
    cfg = LoopConfig(epochs=epochs, seed=lab.stepper.cfg.seed + 1)
    before = mean_loss(lab, mask, mask)
    gamma = calibrate_scales(lab.model, lab.gates, lab.layout, mask, lab.rescale, cfg, scale_keys).cpu()
    after = mean_loss(lab, mask * gamma, None if scale_keys else mask)
    diff = folded_max_diff(lab, mask, gamma, lab.rescale[:1])
    return ScaleReport(
        step=lab.stepper.taken, mask=mask, gamma=gamma, loss_before=before, loss_after=after, max_diff=diff
    )


@torch.no_grad()
def mean_loss(lab: Lab, factors: torch.Tensor, key_factors: torch.Tensor | None) -> float:
    lab.gates.set(factors, key_factors)
    try:
        return (
            sum(block_loss(lab.model, block, lab.gates).item() for block in lab.rescale)
            / lab.rescale.shape[0]
        )
    finally:
        lab.gates.set(None)


@torch.no_grad()
def folded_max_diff(lab: Lab, mask: torch.Tensor, gamma: torch.Tensor, ids: torch.Tensor) -> float:
    """Build the exported model in memory (scales folded, layers sliced) and compare its logits."""
    model = lab.model
    scale_keys = lab.adapter.family.scale_keys
    lab.gates.set(mask * gamma, None if scale_keys else mask)
    try:
        gated = model(input_ids=ids, use_cache=False).logits
    finally:
        lab.gates.set(None)
    logits = sliced_model(lab.adapter, lab.layout, mask, gamma)(input_ids=ids, use_cache=False).logits
    return float((logits - gated).abs().max())
