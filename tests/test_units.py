import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grasprune.method.adapters import LayerShape, ModelAdapter
from grasprune.method.units import UnitLayout, layout_of, project

from conftest import tiny_model


def make_layout(ffn_sizes, kv_sizes, ffn_costs, kv_costs, group_size=2):
    shapes = [LayerShape(f, k, k * group_size) for f, k in zip(ffn_sizes, kv_sizes)]
    return UnitLayout(
        shapes=shapes, ffn_costs=list(ffn_costs), kv_costs=list(kv_costs), group_size=group_size
    )


def test_unit_costs_are_exact_parameter_counts():
    model = tiny_model("llama-bias")
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    view = adapter.views[0]
    # FFN channel: a row of gate and up (+ their bias), a column of down.
    assert layout.ffn_costs[0] == 3 * 64 + 2
    # KV group (G = 2, dh = 16): K, V and 2 query heads of rows (+ biases), 2 heads of o_proj columns.
    assert layout.kv_costs[0] == (2 + 2) * 16 * 64 + 2 * 16 * 64 + (2 + 1 + 1) * 16
    linear = sum(
        m.weight.numel()
        + (m.bias.numel() if m.bias is not None and m is not view.down and m is not view.o else 0)
        for m in (view.q, view.k, view.v, view.o, view.gate, view.up, view.down)
    )
    assert layout.prunable_params == 3 * linear


def test_budget_is_met_and_every_layer_keeps_one_unit_of_each_kind():
    layout = make_layout([10, 10, 10], [2, 2, 2], [1, 1, 1], [5, 5, 5])
    probs = torch.zeros(layout.num_units)
    probs[:10] = 1.0  # layer 0's FFN is the most wanted
    budget = 25
    mask = project(probs, layout, budget)
    assert layout.kept_params(mask) <= budget
    ffn, kv = layout.kept_counts(mask)
    assert min(ffn) >= 1 and min(kv) >= 1


def test_minimum_is_reserved_inside_the_budget_not_added_on_top():
    layout = make_layout([4, 4], [2, 2], [1, 1], [3, 3])
    budget = layout.minimum_params()  # exactly one of each kind per layer
    mask = project(torch.rand(layout.num_units), layout, budget)
    assert layout.kept_params(mask) == budget
    assert layout.kept_counts(mask) == ([1, 1], [1, 1])


def test_ties_are_broken_evenly_across_layers_and_deterministically():
    layout = make_layout([100] * 4, [4] * 4, [1] * 4, [25] * 4)
    tied = torch.zeros(layout.num_units)
    budget = layout.budget(0.5)
    first = project(tied, layout, budget)
    assert torch.equal(first, project(tied, layout, budget))
    ffn, kv = layout.kept_counts(first)
    assert max(ffn) - min(ffn) <= 2 and max(kv) - min(kv) <= 1  # not whole layers in index order


def test_higher_probability_units_are_kept_first():
    layout = make_layout([6], [1], [1], [1])
    probs = torch.tensor([0.1, 0.9, 0.8, 0.2, 0.7, 0.3, 0.5])
    mask = project(probs, layout, budget=4)  # KV group forced (cost 1) + best 3 FFN channels
    assert mask.tolist() == [0, 1, 1, 0, 1, 0, 1]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 12), st.integers(1, 4), st.integers(1, 9), st.integers(1, 40)),
        min_size=1,
        max_size=5,
    ),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_projection_never_exceeds_the_budget(layers, keep, seed):
    layout = make_layout(*zip(*layers))
    budget = layout.minimum_params() + int(keep * (layout.prunable_params - layout.minimum_params()))
    probs = torch.rand(layout.num_units, generator=torch.Generator().manual_seed(seed))
    probs[probs < 0.3] = 0.3  # plenty of ties
    mask = project(probs, layout, budget)
    kept = layout.kept_params(mask)
    assert kept <= budget
    ffn, kv = layout.kept_counts(mask)
    assert min(ffn) >= 1 and min(kv) >= 1
    # the longest feasible prefix: no unranked unit cheaper than what is left was skipped before a kept one
    largest = max(max(layout.ffn_costs), max(layout.kv_costs))
    assert kept > budget - largest or mask.all()
