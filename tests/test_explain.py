"""The Explain page's engine: the ranking and its budget line, gate training one step at a time (equal
to ``train_gates``), the straight-through chain rule, KV groups and the fold check."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grasprune.errors import UserError
from grasprune.method.adapters import LayerShape, ModelAdapter
from grasprune.method.gates import Gates
from grasprune.method.train import LoopConfig, train_gates
from grasprune.method.units import UnitLayout, layout_of, project
from studio import explain, explain_charts

from conftest import tiny_model

LAYOUT = layout_of(ModelAdapter(tiny_model("llama")))
MINIMUM = LAYOUT.minimum_params() / LAYOUT.prunable_params


def stepper_for(model, blocks, cfg: LoopConfig | None = None) -> explain.GateStepper:
    model.requires_grad_(False)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    return explain.GateStepper(model, Gates(adapter, layout), layout, blocks, cfg or LoopConfig(epochs=1))


def lab_for(family: str, blocks: torch.Tensor) -> explain.Lab:
    model = tiny_model(family)
    stepper = stepper_for(model, blocks)
    return explain.Lab(
        family, model, stepper.gates.adapter, stepper.layout, stepper.gates, blocks[:2], stepper
    )


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), keep=st.floats(MINIMUM + 1e-3, 1.0), tied=st.booleans())
def test_the_budget_line_cuts_the_ranking_exactly_where_the_projection_does(seed, keep, tied):
    generator = torch.Generator().manual_seed(seed)
    probs = (
        torch.full((LAYOUT.num_units,), 0.5) if tied else torch.rand(LAYOUT.num_units, generator=generator)
    )
    budget = LAYOUT.budget(keep)
    r = explain.ranking(probs, LAYOUT, budget)
    assert sorted(r.units.tolist()) == list(range(LAYOUT.num_units))
    assert torch.equal(r.mask, project(probs, LAYOUT, budget))
    assert r.kept.tolist() == [True] * r.cut + [False] * (LAYOUT.num_units - r.cut)  # a prefix
    assert torch.equal(r.mask[r.units].bool(), r.kept)
    ends = r.start + r.cost
    assert torch.equal(r.start[1:], ends[:-1])  # bars side by side, widths = parameter costs
    assert int(ends[r.cut - 1]) == LAYOUT.kept_params(r.mask) <= budget
    if r.cut < LAYOUT.num_units:
        assert int(ends[r.cut]) > budget  # the first unit left out straddles the line
    reserved = int(r.reserved.sum())
    assert reserved == 2 * LAYOUT.num_layers and r.reserved[:reserved].all()
    rest = r.probs[reserved:]
    assert torch.all(rest[:-1] >= rest[1:])  # then by probability


@pytest.mark.parametrize("options", [{}, {"align": 8, "tie_break": "index", "layer_minimum": "after",
                                      "second_moment": "group"}])
def test_stepping_one_step_at_a_time_ends_where_train_gates_ends(options):
    """With the default options and with every projection option and the optimizer changed: Explain steps
    the training the pipeline runs."""
    blocks = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    cfg = LoopConfig(epochs=2, seed=5, **options)
    stepper = stepper_for(tiny_model("llama"), blocks, cfg)
    budget = stepper.layout.budget(0.5)
    records = [stepper.step(budget) for _ in range(stepper.total)]
    model = tiny_model("llama").requires_grad_(False)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    expected = train_gates(model, Gates(adapter, layout), layout, blocks, budget, cfg)
    assert torch.equal(stepper.scores.detach(), expected)
    assert sorted(r.block for r in records[:3]) == [0, 1, 2] and stepper.losses == [r.loss for r in records]


def test_a_step_record_says_which_units_moved_and_the_next_step_uses_that_mask():
    blocks = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(1))
    stepper = stepper_for(tiny_model("llama"), blocks)
    budget = stepper.layout.budget(0.5)
    first, second = stepper.step(budget), stepper.step(budget)
    assert torch.equal(second.mask, first.next_mask)
    for record in (first, second):
        moved = torch.nonzero(record.mask != record.next_mask).flatten().tolist()
        assert sorted(record.entered + record.left) == moved
        assert all(record.mask[u] == 0 and record.next_mask[u] == 1 for u in record.entered)
    assert first.entered and first.left  # from tied scores, the first update reorders the ranking
    assert stepper.layout.kept_params(first.next_mask) <= budget


def test_the_ste_chain_rule_explains_the_gradient_of_every_pruned_unit():
    blocks = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    stepper = stepper_for(tiny_model("llama"), blocks)
    stepper.step(stepper.layout.budget(0.5))
    record = stepper.step(stepper.layout.budget(0.5))
    pruned = torch.nonzero(record.mask == 0).flatten().tolist()
    chains = [explain.ste_chain(record, u) for u in pruned]
    assert all(c.hard_gate == 0 for c in chains)
    assert sum(c.autograd != 0 for c in chains) > 0.9 * len(chains)  # pruned units still learn
    for c in chains:
        assert c.chained == pytest.approx(c.autograd, rel=1e-5, abs=1e-12)
        assert c.sigmoid_slope == pytest.approx(c.prob * (1 - c.prob) / record.tau)


@pytest.mark.parametrize(
    "family, kv_heads, kind", [("llama", 4, "GQA"), ("llama-bias", 4, "GQA"), ("mha", 8, "MHA")]
)
def test_kv_groups_carry_exactly_the_parameters_the_budget_counts(family, kv_heads, kind):
    model = explain.tiny_llama(8) if family == "mha" else tiny_model(family)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    mask = project(
        torch.rand(layout.num_units, generator=torch.Generator().manual_seed(3)), layout, layout.budget(0.4)
    )
    for layer in range(layout.num_layers):
        groups = explain.kv_groups(adapter, layout, layer, mask)
        assert len(groups) == kv_heads
        assert all(g.total == layout.kv_costs[layer] for g in groups)
        heads = [h for g in groups for h in g.query_heads]
        assert heads == list(range(8))  # every query head in exactly one group, in repeat_kv's order
        assert [g.kept for g in groups] == (layout.split(mask)[layer][1] > 0).tolist()
    assert explain.attention_kind(8, kv_heads).startswith(kind)
    assert explain.attention_kind(8, 1).startswith("MQA")


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_calibrated_scales_fold_exactly_into_the_sliced_model(family):
    lab = lab_for(family, torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(4)))
    budget = lab.layout.budget(0.5)
    lab.stepper.step(budget)
    mask = explain.ranking(lab.stepper.probs(), lab.layout, budget).mask
    report = explain.calibrate_and_fold(lab, mask)
    assert report.max_diff <= 1e-4
    assert torch.all(report.gamma[mask == 0] == 1)
    kept = report.gamma[mask > 0]
    assert torch.all((kept > 0.5) & (kept < 1.5)) and torch.any(kept != 1)
    assert report.step == 1 and torch.isfinite(torch.tensor([report.loss_before, report.loss_after])).all()


def test_the_tiny_lab_trains_on_real_text_as_bytes():
    lab = explain.open_lab("tiny-gqa", samples=2, block_len=16, rescale_samples=1)
    assert lab.stepper.blocks.shape == (2, 16) and lab.rescale.shape == (1, 16)
    assert lab.stepper.blocks.max() < 256 and lab.layout.shapes[0].kv_groups == 4
    assert explain.unit_name(lab.layout, 0) == "L0 FFN 0"
    assert explain.unit_name(lab.layout, lab.layout.num_units - 1) == "L3 KV 3"


@pytest.mark.parametrize(
    "spec, message", [("no-such-model", "unknown model"), ("/nonexistent/dir.gguf", "not found")]
)
def test_a_bad_model_spec_is_a_user_error(spec, message):
    with pytest.raises(UserError, match=message):
        explain.open_lab(spec)


def test_a_big_models_ranking_merges_bars_without_moving_the_budget_line():
    layout = UnitLayout([LayerShape(1536, 3, 9)] * 30, [1728] * 30, [110592 * 8 // 3] * 30, group_size=3)
    probs = torch.rand(layout.num_units, generator=torch.Generator().manual_seed(6))
    r = explain.ranking(probs, layout, layout.budget(0.5))
    fig = explain_charts.ranking_figure(r, layout)
    bars = [(x, w) for trace in fig.data for x, w in zip(trace.x, trace.width, strict=True)]
    assert (
        len(bars) < 2 * explain_charts.MAX_BARS < layout.num_units
    )  # MAX_BARS, plus one per run of a colour
    assert sum(w for _, w in bars) == layout.prunable_params
    kept = sum(
        w for trace in fig.data if "kept" in trace.name or "reserved" in trace.name for w in trace.width
    )
    assert kept == layout.kept_params(r.mask)
    (line,) = [shape for shape in fig.layout.shapes if shape.type == "line"]
    assert line.x0 == line.x1 == r.budget
