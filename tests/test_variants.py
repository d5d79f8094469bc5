"""Gate-training variants: presets, schedules, importance start and the distillation loss."""

import pytest
import torch

from grasprune.config import VARIANTS, PruneConfig
from grasprune.errors import UserError
from grasprune.method.adapters import ModelAdapter
from grasprune.method.baselines import unit_importance
from grasprune.method.export import sliced_model
from grasprune.method.gates import Gates
from grasprune.method.train import (
    DenseTeacher,
    LoopConfig,
    TeacherCache,
    block_loss,
    calibrate_scales,
    scores_from_importance,
    train_gates,
)
from grasprune.method.units import FFN, KV, layout_of, project

from conftest import tiny_model, tiny_training_setup


def test_variant_presets_fill_only_what_is_not_set():
    paper = PruneConfig(variant="paper", device="cpu").resolved()
    assert (paper.score_init, paper.lr, paper.tau_end, paper.distill) == ("zero", 1e-2, None, 0.0)
    mixed = PruneConfig(variant="paper", distill=0.25, device="cpu").resolved()
    assert mixed.distill == 0.25 and mixed.lr == 1e-2
    assert PruneConfig(device="cpu").resolved().variant in VARIANTS
    with pytest.raises(UserError, match="unknown variant"):
        PruneConfig(variant="magic", device="cpu").resolved()
    with pytest.raises(UserError, match="--distill"):
        PruneConfig(distill=2.0, device="cpu").resolved()


def test_schedules_depend_only_on_the_step():
    loop = LoopConfig(epochs=1, lr=0.1, tau=1.5, tau_end=0.5, warmup=0.25)
    assert loop.tau_at(0, 9) == 1.5 and loop.tau_at(8, 9) == pytest.approx(0.5)
    assert loop.tau_at(4, 9) == pytest.approx(1.0)
    assert [round(loop.lr_at(s, 8), 4) for s in range(4)] == [0.05, 0.1, 0.1, 0.1]
    assert LoopConfig(epochs=1, lr=0.1).lr_at(0, 8) == 0.1


def test_importance_start_is_a_percentile_within_each_kind():
    model = tiny_model("llama")
    layout = layout_of(ModelAdapter(model))
    importance = torch.randn(layout.num_units)
    importance[layout.kind == KV] *= 1000  # a different scale must not matter
    probs = torch.sigmoid(scores_from_importance(importance, layout, tau=1.5) / 1.5)
    for kind in (FFN, KV):
        members = layout.kind == kind
        order_by_importance = torch.argsort(importance[members])
        assert torch.all(torch.diff(probs[members][order_by_importance]) >= 0)
        assert 0.02 <= probs[members].min() and probs[members].max() <= 0.98
        assert probs[members].mean() == pytest.approx(0.5, abs=0.02)
    # --init-strength multiplies the logits: the same order, probabilities pulled toward 0.5
    weak = scores_from_importance(importance, layout, tau=1.5 * 0.1) / 1.5
    assert torch.allclose(weak, 0.1 * torch.logit(probs), atol=1e-5)


def test_distillation_against_itself_is_the_scaled_lm_loss():
    model = tiny_model("llama").requires_grad_(False)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    block = torch.randint(0, 256, (24,))
    with Gates(adapter, layout) as gates:
        lm = block_loss(model, block)
        mixed = block_loss(model, block, gates, distill=0.5)  # gates off: teacher == student, KL = 0
        assert mixed.item() == pytest.approx(0.5 * lm.item(), rel=1e-5)
        gates.set(torch.where(torch.rand(layout.num_units) < 0.5, 0.0, 1.0))
        pruned = block_loss(model, block, gates, distill=1.0)  # pure KL to the dense model
        assert pruned.item() > 0
        gates.set(None)
        assert block_loss(model, block, gates, distill=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_the_dense_teacher_cache_changes_no_bit_of_the_training():
    model, adapter, layout, blocks, budget = tiny_training_setup(block_seed=4)
    results = {}
    for limit in (0, 64):  # no cache; room for every block
        with Gates(adapter, layout) as gates:
            loop = LoopConfig(epochs=3, distill=0.5, teacher_cache_mb=limit)
            results[limit] = train_gates(model, gates, layout, blocks, budget, loop)
            mask = project(torch.sigmoid(results[limit] / loop.tau), layout, budget)
            results[limit, "scales"] = calibrate_scales(model, gates, layout, mask, blocks, loop)
    assert torch.equal(results[0], results[64]) and torch.equal(results[0, "scales"], results[64, "scales"])
    cache = DenseTeacher(limit_mb=64)
    with Gates(adapter, layout) as gates:
        gates.set(torch.ones(layout.num_units) * 0.5)
        first = block_loss(model, blocks[0], gates, distill=0.5, teacher=cache)
        again = block_loss(model, blocks[0], gates, distill=0.5, teacher=cache)
        direct = block_loss(model, blocks[0], gates, distill=0.5)
    assert len(cache.entries) == 1 and cache.used == 15 * model.config.vocab_size * 4
    assert first.item() == again.item() == direct.item()
    tight = DenseTeacher(limit_mb=0)
    tight.limit = cache.used  # room for one block
    with Gates(adapter, layout) as gates:
        gates.set(torch.ones(layout.num_units) * 0.5)
        for block in blocks:
            block_loss(model, block, gates, distill=0.5, teacher=tight)
        assert block_loss(model, blocks[1], gates, distill=0.5, teacher=tight).item() == pytest.approx(
            block_loss(model, blocks[1], gates, distill=0.5).item(), abs=0)
    assert len(tight.entries) == 1 and tight.used == cache.used  # the rest computed each time, not kept


@pytest.mark.parametrize("family", ["llama", "llama-bias", "qwen3"])
def test_scale_calibration_on_the_sliced_model_learns_the_gated_models_scales(family):
    """The pipeline calibrates the scales on the model cut to its mask (cheaper): the same function as
    the gated full model, so the same scales up to float rounding, for every fold rule."""
    model = tiny_model(family).requires_grad_(False)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    blocks = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(5))
    mask = project(torch.rand(layout.num_units, generator=torch.Generator().manual_seed(6)), layout,
                   layout.budget(0.6))
    loop = LoopConfig(epochs=2, lr=5e-2, distill=0.5)
    scale_keys = adapter.family.scale_keys
    with Gates(adapter, layout) as gates:
        full = calibrate_scales(model, gates, layout, mask, blocks, loop, scale_keys)
        student = sliced_model(adapter, layout, mask)
        student_adapter = ModelAdapter(student)
        assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in model.parameters())
        with Gates(student_adapter, layout_of(student_adapter)) as student_gates:
            cut = calibrate_scales(model, gates, layout, mask, blocks, loop, scale_keys,
                                   student=(student, student_gates))
    assert torch.all(cut[mask == 0] == 1) and (cut[mask > 0] - 1).abs().max() > 1e-2  # the scales moved
    assert torch.allclose(full, cut, atol=1e-5, rtol=0)


def test_topk_distillation_with_the_whole_vocabulary_is_the_exact_kl():
    model = tiny_model("llama").requires_grad_(False)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    block = torch.randint(0, 256, (24,))
    with Gates(adapter, layout) as gates:
        gates.set(torch.where(torch.rand(layout.num_units, generator=torch.Generator().manual_seed(1)) < 0.5,
                              0.0, 1.0))
        exact = block_loss(model, block, gates, distill=0.7)
        cache = TeacherCache(topk=256)  # the whole vocabulary: the renormalised top-k is the distribution
        cached = block_loss(model, block, gates, distill=0.7, teacher=cache)
        assert cached.item() == pytest.approx(exact.item(), rel=1e-5)
        assert len(cache.entries) == 1  # the dense pass ran once, with the gates off
        gates.set(None)
        assert block_loss(model, block, gates, distill=1.0, teacher=cache).item() == pytest.approx(0.0, abs=1e-5)


def test_the_importance_pass_records_the_teacher_a_lazy_cache_would_compute():
    model = tiny_model("llama").requires_grad_(False)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    blocks = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(2))
    recorded, lazy = TeacherCache(topk=8), TeacherCache(topk=8)
    unit_importance("wanda-sp", model, adapter, layout, blocks, on_logits=recorded.record)
    assert len(recorded.entries) == 3
    with Gates(adapter, layout) as gates:
        gates.set(torch.ones(layout.num_units) * 0.5)  # the cache must ignore the gates, then restore them
        gated = model(input_ids=blocks[:1]).logits
        for block in blocks:
            for want, got in zip(lazy.get(model, block, gates), recorded.get(model, block, gates), strict=True):
                assert torch.equal(want, got)
        assert torch.equal(model(input_ids=blocks[:1]).logits, gated)


def test_an_importance_pass_fills_the_dense_teacher_without_changing_the_training():
    model = tiny_model("llama").requires_grad_(False)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    blocks = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(5))
    recorded = DenseTeacher(limit_mb=64)
    unit_importance("wanda-sp", model, adapter, layout, blocks, on_logits=recorded.record)
    assert len(recorded.entries) == 3 and recorded.used == 3 * 15 * model.config.vocab_size * 4
    loop = LoopConfig(epochs=2, distill=0.5, teacher_cache_mb=64)
    with Gates(adapter, layout) as gates:
        for block in blocks:  # the recorded logits are the ones a teacher forward computes
            assert torch.equal(recorded.logits(model, block, gates), DenseTeacher(0).logits(model, block, gates))
        filled = train_gates(model, gates, layout, blocks, layout.budget(0.6), loop, teacher=recorded)
        lazy = train_gates(model, gates, layout, blocks, layout.budget(0.6), loop)
    assert torch.equal(filled, lazy)


def test_rescale_distillation_follows_distill_unless_set():
    assert PruneConfig(variant="paper", distill=0.3, device="cpu").resolved().rescale_distill == 0.3
    assert PruneConfig(distill=0.3, rescale_distill=0.0, device="cpu").resolved().rescale_distill == 0.0
    with pytest.raises(UserError, match="--distill-topk"):
        PruneConfig(distill_topk=-1, device="cpu").resolved()


def test_the_guided_start_falls_back_to_tied_scores_where_weights_are_sharded_or_offloaded():
    assert PruneConfig(device="cpu").resolved().score_init == "wanda-sp"
    for placement in ({"fsdp": True}, {"device_map": "auto"}):
        config = PruneConfig(device="cpu", **placement).resolved()
        assert config.score_init == "zero" and config.distill == 0.5  # trains as `distill`
    explicit = PruneConfig(device="cpu", fsdp=True, score_init="wanda-sp").resolved()
    assert explicit.score_init == "wanda-sp"  # an explicit choice stays, and FSDP refuses it before loading
