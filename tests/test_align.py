"""``--align N``: the projection keeps each layer's FFN channels in multiples of N, inside the same budget.

The guarantees proven here, for any layout, probabilities and budget at or above the aligned minimum:
- every layer keeps a multiple of N FFN channels, at least N, or its whole width (the only choice for a
  layer narrower than N; for a width that is not a multiple of N, the last chunk is the remainder);
- the kept cost is within the budget and leaves less than one item (a chunk of N channels or a KV
  group) of it unused, unless everything is kept; so it is at most one such item below the unaligned
  projection's kept cost;
- a layer keeps its best channels by probability; align 1 is the unaligned projection, bit for bit.
"""

from __future__ import annotations

import json
import shlex

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_app import app, errors, runs_dir  # noqa: F401  (runs_dir: the Prune page's fixture)
from test_units import make_layout

from grasprune.cli.command import prune_command
from grasprune.cli.main import build_parser, config_from_args
from grasprune.config import PruneConfig
from grasprune.errors import UserError
from grasprune.method.adapters import ModelAdapter
from grasprune.method.gates import Gates
from grasprune.method.train import gate_probs, ste_factors
from grasprune.method.units import UnitLayout, layout_of, project

from conftest import run_cli, tiny_model

SMALL = ["--calib-samples", "4", "--block-len", "32", "--epochs", "2", "--rescale-samples", "2",
         "--eval-seqlen", "64", "--eval-windows", "2", "--checkpoint-every", "2", "--no-eval-dense"]


def legacy_project(probs: torch.Tensor, layout: UnitLayout, budget: int) -> torch.Tensor:
    """The projection as it was before ``--align`` (commit before issue 19), kept verbatim as the oracle."""
    reserved = sum(layout.ffn_costs) + sum(layout.kv_costs)
    assert reserved <= budget
    tie = layout.tie_orders["spread"]
    order = tie[torch.sort(-probs.detach()[tie], stable=True).indices]
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel())
    best = torch.full((2 * layout.num_layers,), order.numel(), dtype=torch.long)
    best = best.scatter_reduce(0, layout.group, position, reduce="amin")
    forced = position == best[layout.group]
    ranked_cost = torch.where(forced[order], 0, layout.cost[order])
    fits = torch.cumsum(ranked_cost, 0) <= budget - reserved
    mask = torch.zeros_like(probs, dtype=torch.float32)
    mask[order] = (fits | forced[order]).to(torch.float32)
    return mask


def tied_probs(layout: UnitLayout, seed: int) -> torch.Tensor:
    probs = torch.rand(layout.num_units, generator=torch.Generator().manual_seed(seed))
    return torch.where(probs < 0.3, 0.3, probs).float()  # plenty of ties


def largest_item(layout: UnitLayout, align: int) -> int:
    chunk = max(min(align, s.ffn_channels) * c for s, c in zip(layout.shapes, layout.ffn_costs))
    return max(chunk, max(layout.kv_costs))


def layouts(max_width: int = 300):
    return st.lists(st.tuples(st.integers(1, max_width), st.integers(1, 4), st.integers(1, 9), st.integers(1, 400)),
                    min_size=1, max_size=6).map(lambda layers: make_layout(*zip(*layers)))


@settings(max_examples=150, deadline=None)
@given(layouts(), st.sampled_from([2, 3, 8, 32, 64]), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_aligned_counts_stay_within_the_budget_and_fill_it_to_one_item(layout, align, keep, seed):
    minimum = layout.minimum_params(align)
    budget = minimum + int(keep * (layout.prunable_params - minimum))
    probs = tied_probs(layout, seed)
    mask = project(probs, layout, budget, align)
    assert torch.equal(mask, project(probs, layout, budget, align))  # deterministic
    ffn, kv = layout.kept_counts(mask)
    for count, shape in zip(ffn, layout.shapes):
        assert count == shape.ffn_channels or (count % align == 0 and count >= align), (count, shape, align)
    assert min(kv) >= 1
    kept = layout.kept_params(mask)
    assert kept <= budget
    assert kept > budget - largest_item(layout, align) or mask.all()
    if budget >= layout.minimum_params():
        unaligned = layout.kept_params(project(probs, layout, budget))
        assert kept > unaligned - largest_item(layout, align) or mask.all()
    # each layer keeps its best channels: no dropped channel is more probable than a kept one
    for ffn, _ in layout.split(torch.stack([probs, mask], 1)):
        kept_p, dropped_p = ffn[ffn[:, 1] == 1, 0], ffn[ffn[:, 1] == 0, 0]
        if kept_p.numel() and dropped_p.numel():
            assert kept_p.min() >= dropped_p.max()


@settings(max_examples=150, deadline=None)
@given(layouts(40), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_align_one_is_the_unaligned_projection_bit_for_bit(layout, keep, seed):
    budget = layout.minimum_params() + int(keep * (layout.prunable_params - layout.minimum_params()))
    probs = tied_probs(layout, seed)
    expected = legacy_project(probs, layout, budget)
    assert torch.equal(project(probs, layout, budget), expected)
    assert torch.equal(project(probs, layout, budget, align=1), expected)
    assert layout.minimum_params(1) == layout.minimum_params() == sum(layout.ffn_costs) + sum(layout.kv_costs)


def test_chunks_rank_by_mean_probability_and_keep_a_layers_best_channels():
    layout = make_layout([6, 4], [1, 1], [1, 1], [1, 1])
    probs = torch.tensor([0.1, 0.9, 0.8, 0.2, 0.7, 0.3, 0.5,  # layer 0: chunks {.9,.8} {.7,.3} {.2,.1}, KV .5
                          0.6, 0.55, 0.0, 0.0, 0.5])  # layer 1: chunks {.6,.55} {0, 0}, KV .5
    reserved = layout.minimum_params(2)
    assert reserved == 2 * (2 + 1)
    # room for one more chunk: layer 0's second (mean .5) beats layer 1's second (mean 0)
    mask = project(probs, layout, reserved + 2, align=2)
    assert mask.tolist() == [0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1]
    assert layout.kept_counts(mask) == ([4, 2], [1, 1])
    # one parameter short of that chunk: the prefix stops there, and the leftover is under one chunk
    assert layout.kept_counts(project(probs, layout, reserved + 1, align=2)) == ([2, 2], [1, 1])


def test_a_narrow_layer_or_a_remainder_keeps_its_whole_width():
    layout = make_layout([20, 100], [2, 2], [1, 1], [10, 10])
    assert layout.minimum_params(32) == 20 + 32 + 2 * 10  # layer 0 is narrower than 32: kept whole
    counts = set()
    probs = torch.rand(layout.num_units, generator=torch.Generator().manual_seed(0))
    for keep in torch.linspace(0.3, 1.0, 40).tolist():
        budget = max(layout.budget(keep), layout.minimum_params(32))
        ffn, _ = layout.kept_counts(project(probs, layout, budget, align=32))
        assert ffn[0] == 20
        counts.add(ffn[1])
    assert counts <= {32, 64, 96, 100} and {32, 100} <= counts  # 100 = 3 chunks of 32 and a remainder of 4


def test_tied_probabilities_spread_chunks_evenly_across_layers():
    layout = make_layout([256] * 4, [4] * 4, [1] * 4, [64] * 4)
    mask = project(torch.full((layout.num_units,), 0.5), layout, layout.budget(0.5), align=32)
    ffn, kv = layout.kept_counts(mask)
    assert all(c % 32 == 0 for c in ffn)
    assert max(ffn) - min(ffn) <= 32 and max(kv) - min(kv) <= 1  # not whole layers in index order


def test_a_budget_below_one_chunk_per_layer_is_a_one_line_error():
    layout = make_layout([96] * 3, [4] * 3, [192] * 3, [6144] * 3)
    budget = layout.minimum_params(64) - 1
    project(torch.rand(layout.num_units), layout, budget, align=32)  # fine at 32
    with pytest.raises(UserError, match=r"cannot keep a chunk of 64 FFN channels .* or lower --align$"):
        project(torch.rand(layout.num_units), layout, budget, align=64)


def test_the_straight_through_gradient_reaches_every_unit_when_aligned():
    model = tiny_model("llama").requires_grad_(False)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    scores = torch.nn.Parameter(torch.randn(layout.num_units, generator=torch.Generator().manual_seed(3)))
    factors, mask = ste_factors(scores, layout, layout.budget(0.5), tau=1.5, align=32)
    assert all(c % 32 == 0 for c in layout.kept_counts(mask)[0])
    torch.testing.assert_close(factors.detach(), mask, atol=1e-6, rtol=0)  # the forward sees the hard mask
    weights = torch.randn(layout.num_units, generator=torch.Generator().manual_seed(4))
    (factors * weights).sum().backward()
    p = gate_probs(scores.detach(), 1.5)
    torch.testing.assert_close(scores.grad, weights * p * (1 - p) / 1.5)  # d z / d s, pruned units included
    scores.grad = None
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(5))
    factors, mask = ste_factors(scores, layout, layout.budget(0.5), tau=1.5, align=32)
    with Gates(adapter, layout) as gates:
        gates.set(factors)
        model(input_ids=ids, labels=ids).loss.backward()
    pruned = mask == 0
    assert pruned.any() and (scores.grad[pruned] != 0).float().mean() > 0.9
    assert (scores.grad[~pruned] != 0).float().mean() > 0.9


@pytest.mark.parametrize("value", [0, -32])
def test_a_bad_align_is_a_one_line_user_error(value):
    with pytest.raises(UserError, match=r"^--align must be a whole number of FFN channels, at least 1") as err:
        PruneConfig(align=value, device="cpu").resolved()
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="config key 'align' must be int"):
        PruneConfig.from_dict({"align": 32.0})


def test_the_flag_round_trips_through_the_shown_command():
    args = build_parser().parse_args(["prune", "--align", "64", "--keep-ratio", "0.7"])
    config = config_from_args(args)
    assert config.align == 64
    command = prune_command(config)
    assert "--align 64" in command
    assert config_from_args(build_parser().parse_args(shlex.split(command)[1:])) == config
    assert "--align" not in prune_command(PruneConfig())  # off (1) is the default: not shown


def test_the_budget_preview_minimum_follows_the_alignment(tiny_model_dir):
    from grasprune.method.budget import budget_preview as preview

    found = preview(str(tiny_model_dir))
    layout = layout_of(ModelAdapter(tiny_model("llama")))
    assert found.minimum_params == layout.minimum_params() == 3 * (192 + 6144)
    assert found.aligned(64).minimum_params == layout.minimum_params(64) == 3 * (64 * 192 + 6144)
    found.aligned(32).check(0.3)  # 36,864 of 129,024 needed: fine
    with pytest.raises(UserError, match=r"cannot keep a chunk of 64 FFN channels and one KV group per layer "
                                            r"\(55,296 needed\): raise --keep-ratio to at least 0\.4286 or lower --align"):
        found.aligned(64).check(0.3)


@pytest.mark.parametrize("method", ["grasprune", "wanda-sp"])
def test_an_aligned_prune_exports_widths_in_multiples_of_32_that_load_and_run(method, tiny_model_dir, tmp_path):
    from grasprune.method.export import load_pruned

    out = tmp_path / "out"
    result = run_cli("prune", "--model", str(tiny_model_dir), "--keep-ratio", "0.6", "--align", "32",
                     "--method", method, *SMALL, "--out", str(out), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr[-3000:]
    widths = json.loads((out / "config.json").read_text())["layer_intermediate_sizes"]
    assert len(widths) == 3 and all(w % 32 == 0 and 32 <= w <= 96 for w in widths), widths
    assert sum(widths) < 3 * 96  # something was pruned from the FFNs
    report = json.loads((out / "grasprune.json").read_text())
    assert report["align"] == 32 and report["config"]["align"] == 32
    assert [layer["ffn_channels"] for layer in report["layers"]] == widths
    assert report["params"]["prunable_after"] <= report["budget"]
    model, _ = load_pruned(out)
    assert [layer.mlp.gate_proj.out_features for layer in model.model.layers] == widths
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[:2] == (1, 16) and torch.isfinite(logits).all()


@pytest.mark.usefixtures("runs_dir")
def test_the_prune_page_alignment_raises_the_minimum_and_shows_the_flag(tiny_model_dir):
    at = app()
    at.text_input(key="prune_model").set_value(str(tiny_model_dir)).run()
    assert at.slider(key="prune_keep_ratio").min == 0.15  # 19,008 of 129,024 (one channel per layer)
    at.selectbox(key="prune_align").set_value(64).run()
    assert errors(at) == []
    assert at.slider(key="prune_keep_ratio").min == 0.43  # 55,296 of 129,024 (64 channels per layer)
    command = next(c.value for c in at.code if c.value.startswith("grasprune prune"))
    assert "--align 64" in command
    at.selectbox(key="prune_align").set_value(1).run()
    assert "--align" not in next(c.value for c in at.code if c.value.startswith("grasprune prune"))


def test_the_projection_benchmark_times_every_alignment(tmp_path):
    import sys

    from conftest import REPO

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench import align_projection

    out = tmp_path / "projection.json"
    assert align_projection.main(["--shape", "2,100,2,8,4", "--aligns", "1,32", "--calls", "4", "--rounds", "2",
                                  "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["setting"]["units"] == 2 * (100 + 2)
    assert set(result["per_call_us"]) == {"1", "32"} and all(t > 0 for t in result["per_call_us"].values())
    assert result["ratio_to_align_1"]["1"] == 1.0
