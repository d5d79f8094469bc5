import pytest
import torch

from grasprune.errors import UserError
from grasprune.method.adapters import ModelAdapter
from grasprune.method.baselines import (
    BASELINES,
    CALIBRATION_PASSES,
    flap_bias_compensation,
    flap_scores,
    input_statistics,
    magnitude_scores,
    rank_within_layer,
    taylor_scores,
    unit_importance,
    wanda_sp_scores,
)
from grasprune.method.gates import Gates
from grasprune.method.units import FFN, KV, layout_of, project

from conftest import tiny_model

G, DH = 2, 16  # tiny models: 8 query heads over 4 KV heads of 16


def setup(family="llama"):
    model = tiny_model(family)
    adapter = ModelAdapter(model)
    return model, adapter, layout_of(adapter), torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(1))


def unit_position(layout, layer, kind, index):
    hit = (layout.layer == layer) & (layout.kind == kind) & (layout.index == index)
    return int(hit.nonzero())


def zero_unit(adapter, layer, kind, index):
    view = adapter.views[layer]
    with torch.no_grad():
        if kind == FFN:
            view.gate.weight[index] = 0
            view.up.weight[index] = 0
            view.down.weight[:, index] = 0
        else:
            q = slice(index * G * DH, (index + 1) * G * DH)
            kv = slice(index * DH, (index + 1) * DH)
            view.q.weight[q] = 0
            view.k.weight[kv] = 0
            view.v.weight[kv] = 0
            view.o.weight[:, q] = 0


@pytest.mark.parametrize("method", BASELINES)
def test_the_criteria_that_run_calibration_blocks_report_each_block(method):
    model, adapter, layout, blocks = setup()
    seen = []
    unit_importance(method, model, adapter, layout, blocks, progress=lambda done, total: seen.append((done, total)))
    assert seen == ([(1, 3), (2, 3), (3, 3)] if CALIBRATION_PASSES[method] else [])


@pytest.mark.parametrize("method", BASELINES)
def test_every_baseline_scores_every_unit_finitely_and_deterministically(method):
    model, adapter, layout, blocks = setup()
    first = unit_importance(method, model, adapter, layout, blocks, seed=3)
    again = unit_importance(method, model, adapter, layout, blocks, seed=3)
    assert first.dtype == torch.float32 and first.shape == (layout.num_units,)
    assert torch.isfinite(first).all()
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert first.unique().numel() > layout.num_units // 4  # a ranking, not a constant


def test_random_scores_depend_on_the_seed():
    model, adapter, layout, blocks = setup()
    a = unit_importance("random", model, adapter, layout, blocks, seed=0)
    b = unit_importance("random", model, adapter, layout, blocks, seed=1)
    assert (a != b).float().mean() > 0.5


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("keep", [0.5, 0.7])
def test_every_baseline_mask_meets_the_budget_and_keeps_every_layer(method, keep):
    model, adapter, layout, blocks = setup("qwen2")
    budget = layout.budget(keep)
    mask = project(unit_importance(method, model, adapter, layout, blocks), layout, budget)
    assert layout.kept_params(mask) <= budget
    assert layout.kept_params(mask) > budget - layout.kv_costs[0]  # the prefix fills the budget
    ffn, kv = layout.kept_counts(mask)
    assert min(ffn) >= 1 and min(kv) >= 1


@pytest.mark.parametrize("method", ["random", "magnitude", "wanda-sp", "taylor"])
def test_local_baselines_prune_every_layer_by_the_same_share(method):
    model, adapter, layout, blocks = setup()
    mask = project(unit_importance(method, model, adapter, layout, blocks), layout, layout.budget(0.5))
    ffn, kv = layout.kept_counts(mask)
    assert max(ffn) - min(ffn) <= 1 and max(kv) - min(kv) <= 1


def test_magnitude_is_the_squared_norm_of_all_the_units_weights():
    _, adapter, layout, _ = setup("llama-bias")
    raw = magnitude_scores(adapter, layout)
    view = adapter.views[1]
    ffn = view.gate.weight[5].pow(2).sum() + view.up.weight[5].pow(2).sum() + view.down.weight[:, 5].pow(2).sum()
    ffn += view.gate.bias[5].pow(2) + view.up.bias[5].pow(2)
    q, kv = slice(2 * G * DH, 3 * G * DH), slice(2 * DH, 3 * DH)
    group = sum(w.pow(2).sum() for w in (view.q.weight[q], view.k.weight[kv], view.v.weight[kv], view.o.weight[:, q]))
    group += sum(b.pow(2).sum() for b in (view.q.bias[q], view.k.bias[kv], view.v.bias[kv]))
    assert raw[unit_position(layout, 1, FFN, 5)].item() == pytest.approx(ffn.item(), rel=1e-6)
    assert raw[unit_position(layout, 1, KV, 2)].item() == pytest.approx(group.item(), rel=1e-6)


def test_magnitude_ranks_a_zeroed_unit_last_in_its_layer():
    model, adapter, layout, blocks = setup()
    zero_unit(adapter, 1, FFN, 7)
    zero_unit(adapter, 2, KV, 1)
    scores = unit_importance("magnitude", model, adapter, layout, blocks)
    ffn_1, kv_2 = layout.split(scores)[1][0], layout.split(scores)[2][1]
    assert int(ffn_1.argmin()) == 7 and ffn_1[7] == pytest.approx(1 / 96)
    assert int(kv_2.argmin()) == 1 and kv_2[1] == pytest.approx(1 / 4)
    mask = project(scores, layout, layout.budget(0.7))
    assert mask[unit_position(layout, 1, FFN, 7)] == 0 and mask[unit_position(layout, 2, KV, 1)] == 0


def test_taylor_is_weight_times_the_calibration_gradient():
    model, adapter, layout, blocks = setup()
    raw = taylor_scores(model, adapter, layout, blocks)
    reference = tiny_model("llama").requires_grad_(True)
    loss = sum(reference(b[None], labels=b[None]).loss for b in blocks) / blocks.shape[0]
    loss.backward()
    view = ModelAdapter(reference).views[2]
    expected = sum((lin.weight * lin.weight.grad)[rows].abs().sum() for lin, rows in
                   ((view.gate, 3), (view.up, 3))) + (view.down.weight * view.down.weight.grad)[:, 3].abs().sum()
    assert raw[unit_position(layout, 2, FFN, 3)].item() == pytest.approx(expected.item(), rel=1e-4)


def test_taylor_gives_a_zeroed_unit_no_importance_and_restores_the_model():
    model, adapter, layout, blocks = setup()
    zero_unit(adapter, 0, FFN, 2)
    zero_unit(adapter, 1, KV, 3)
    model.lm_head.weight.requires_grad_(True)  # a flag the scorer must leave as it found it
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    raw = taylor_scores(model, adapter, layout, blocks)
    assert raw[unit_position(layout, 0, FFN, 2)] == 0 and raw[unit_position(layout, 1, KV, 3)] == 0
    assert (raw > 0).sum() == layout.num_units - 2
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_input_statistics_are_the_token_mean_variance_and_norm():
    model, adapter, _, blocks = setup()
    seen = []
    handle = adapter.views[1].down.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 96)))
    stats = input_statistics(model, adapter, blocks)[1]["down"]
    handle.remove()
    x = torch.cat(seen[-3:]).double()
    assert stats.count == 48
    torch.testing.assert_close(stats.mean, x.mean(0))
    torch.testing.assert_close(stats.variance, x.var(0))
    torch.testing.assert_close(stats.norm, x.norm(dim=0))
    norms_only = input_statistics(model, adapter, blocks, with_mean=False)[1]["down"]
    assert torch.equal(norms_only.squares, stats.squares) and not norms_only.total.any()


def test_wanda_sp_weighs_output_columns_by_input_norms():
    model, adapter, layout, blocks = setup()
    stats = input_statistics(model, adapter, blocks)
    raw = wanda_sp_scores(adapter, layout, stats)
    view = adapter.views[0]
    ffn = (view.down.weight[:, 4].double().abs() * stats[0]["down"].norm[4]).sum()
    cols = slice(1 * G * DH, 2 * G * DH)
    group = (view.o.weight[:, cols].double().abs() * stats[0]["o"].norm[cols]).sum()
    assert raw[unit_position(layout, 0, FFN, 4)].item() == pytest.approx(ffn.item(), rel=1e-9)
    assert raw[unit_position(layout, 0, KV, 1)].item() == pytest.approx(group.item(), rel=1e-9)


def test_flap_scores_are_standardised_per_kind():
    model, adapter, layout, blocks = setup()
    scores = flap_scores(adapter, layout, input_statistics(model, adapter, blocks)).double()
    ffn, kv = scores[layout.kind == FFN], scores[layout.kind == KV]
    assert ffn.mean().item() == pytest.approx(0, abs=1e-6) and ffn.std().item() == pytest.approx(1, rel=1e-5)
    assert kv.mean().item() == pytest.approx(0, abs=1e-6)  # group means of standardised columns
    assert kv.std().item() < 1


def test_flap_bias_compensation_replaces_pruned_inputs_by_their_mean():
    model, adapter, layout, blocks = setup("llama-bias")
    stats = input_statistics(model, adapter, blocks)
    mask = project(flap_scores(adapter, layout, stats), layout, layout.budget(0.6))
    ids = torch.randint(0, 256, (1, 20))
    means = [{n: s[n].mean.float() for n in s} for s in stats]
    pruned = [{"down": f < 0.5, "o": k.repeat_interleave(G * DH) < 0.5} for f, k in layout.split(mask)]

    def to_mean(i, name):
        def hook(module, args):
            x = args[0].clone()
            x[..., pruned[i][name]] = means[i][name][pruned[i][name]]
            return (x,)
        return hook

    handles = [getattr(v, n).register_forward_pre_hook(to_mean(i, n))
               for i, v in enumerate(adapter.views) for n in ("down", "o")]
    with torch.no_grad():
        expected = model(ids).logits
    for h in handles:
        h.remove()
    names = flap_bias_compensation(adapter, layout, mask, stats)
    assert len(names) == sum(int(p[n].any()) for p in pruned for n in p) >= 4
    with Gates(adapter, layout) as gates, torch.no_grad():
        gates.set(mask)
        compensated = model(ids).logits
    torch.testing.assert_close(compensated, expected, atol=1e-4, rtol=0)


def test_flap_bias_compensation_leaves_bias_free_models_alone():
    model, adapter, layout, blocks = setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = project(torch.rand(layout.num_units), layout, layout.budget(0.5))
    assert flap_bias_compensation(adapter, layout, mask, input_statistics(model, adapter, blocks)) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_rank_within_layer_is_a_fraction_per_layer_and_kind():
    layout = setup()[2]
    raw = -torch.arange(layout.num_units, dtype=torch.float64)
    ranks = rank_within_layer(raw, layout)
    ffn_0, kv_0 = layout.split(ranks)[0]
    assert ffn_0[0] == 1.0 and ffn_0[-1] == pytest.approx(1 / 96)
    assert kv_0.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_an_unknown_baseline_is_refused():
    model, adapter, layout, blocks = setup()
    with pytest.raises(UserError, match="unknown baseline"):
        unit_importance("obs", model, adapter, layout, blocks)
