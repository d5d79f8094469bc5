"""``--variant paper`` is the authors' procedure exactly: tied by an independent re-derivation of their rules.

The authors' rules (the GRASPrune paper, arXiv 2604.19398; docs/variants.md), written out here with plain Python loops and no code from
``grasprune.method.units`` or ``grasprune.method.train``:
- the projection ranks every unit of every layer and both kinds together by ``p = sigmoid(s / tau)``,
  highest first, ties in unit order (their sort); keeps the longest prefix whose cumulative cost is
  within the budget; then a layer left without an FFN channel or a KV group gets its best one added
  (so the mask may exceed the budget);
- the straight-through factor is ``z = m + (p - p.detach())``: exactly the hard mask forward;
- the loss is next-token cross-entropy, the optimiser AdamW (lr 1e-2, betas 0.9/0.99, no weight decay),
  one block per step, scores starting at 0.
"""

from __future__ import annotations

import pytest
import torch

from grasprune.config import PruneConfig
from grasprune.method.gates import Gates
from grasprune.method.train import LoopConfig, epoch_order, train_gates
from grasprune.method.units import FFN, KV, UnitLayout, project
from grasprune.runs.pipeline import projection_rule

from conftest import tiny_training_setup


def authors_projection(probs: torch.Tensor, layout: UnitLayout, budget: int) -> torch.Tensor:
    values = probs.tolist()
    cost, layer, kind = layout.cost.tolist(), layout.layer.tolist(), layout.kind.tolist()
    ranking = sorted(range(len(values)), key=lambda u: (-values[u], u))
    kept, spent = set(), 0
    for unit in ranking:
        if spent + cost[unit] > budget:
            break
        kept.add(unit)
        spent += cost[unit]
    for each_layer in range(layout.num_layers):
        for each_kind in (FFN, KV):
            members = [u for u in ranking if layer[u] == each_layer and kind[u] == each_kind]
            if not kept.intersection(members):
                kept.add(members[0])
    return torch.tensor([1.0 if u in kept else 0.0 for u in range(len(values))])


def paper_rule() -> dict:
    return projection_rule(PruneConfig(variant="paper", device="cpu").resolved())


def test_the_paper_variant_resolves_to_the_authors_settings():
    paper = PruneConfig(variant="paper", device="cpu").resolved()
    assert (paper.score_init, paper.lr, paper.tau, paper.tau_end, paper.warmup, paper.distill) == (
        "zero", 1e-2, 1.5, None, 0.0, 0.0)
    assert (paper.tie_break, paper.layer_minimum) == ("index", "after")
    ours = PruneConfig(variant="guided", device="cpu").resolved()
    assert (ours.tie_break, ours.layer_minimum) == ("spread", "inside")


@pytest.mark.parametrize("keep_ratio", [0.05, 0.3, 0.6, 0.9])
@pytest.mark.parametrize("seed", range(6))
def test_the_paper_projection_is_the_authors_rule(keep_ratio, seed):
    _, _, layout, _, _ = tiny_training_setup(0)
    budget = layout.budget(keep_ratio)
    generator = torch.Generator().manual_seed(seed)
    probs = torch.rand(layout.num_units, generator=generator)
    probs = torch.round(probs * 4) / 4 if seed % 2 else probs  # odd seeds: few distinct values, many ties
    if seed == 0:
        probs = torch.full((layout.num_units,), 0.5)  # the first step: every score tied at 0
    mask = project(probs, layout, budget, **paper_rule())
    assert torch.equal(mask, authors_projection(probs, layout, budget))


def test_the_authors_rule_can_exceed_the_budget_and_ours_cannot():
    _, _, layout, _, _ = tiny_training_setup(0)
    budget = layout.budget(0.2)  # the tiny model's minimum is 0.147
    tied = torch.full((layout.num_units,), 0.5)
    paper = project(tied, layout, budget, **paper_rule())
    ours = project(tied, layout, budget)
    assert layout.kept_params(paper) > budget >= layout.kept_params(ours)
    first_layer = (layout.layer == 0) & (layout.kind == FFN)
    assert paper[first_layer].sum() > ours[first_layer].sum()  # index order fills layer 0 first


def test_two_paper_training_steps_are_the_authors_steps():
    model, adapter, layout, ids, budget = tiny_training_setup(1, blocks=2)
    cfg = LoopConfig(epochs=1, lr=1e-2, tau=1.5, checkpoint_every=100, **{
        k: v for k, v in paper_rule().items() if k != "align"})
    gates = Gates(adapter, layout)
    ours = train_gates(model, gates, layout, ids, budget, cfg)

    scores = torch.nn.Parameter(torch.zeros(layout.num_units))
    optimiser = torch.optim.AdamW([scores], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0)
    for index in epoch_order(0, 0, ids.shape[0]).tolist():
        probs = torch.sigmoid(scores / 1.5)
        mask = authors_projection(probs.detach(), layout, budget)
        factors = mask + (probs - probs.detach())
        assert torch.equal(factors.detach(), mask)  # the forward pass sees exactly the hard mask
        gates.set(factors)
        block = ids[index].unsqueeze(0)
        loss = model(input_ids=block, labels=block, use_cache=False).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    gates.remove()
    assert scores.abs().sum() > 0
    assert torch.equal(ours, scores.detach())
