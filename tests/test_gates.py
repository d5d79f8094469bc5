import torch

from grasprune.method.adapters import ModelAdapter
from grasprune.method.gates import Gates
from grasprune.method.train import gate_probs, ste_factors
from grasprune.method.units import layout_of

from conftest import tiny_model


def hard_masked_logits(model, adapter, layout, mask, ids):
    """Reference: zero the pruned units' weights directly (no hooks)."""
    import copy

    masked = copy.deepcopy(model)
    masked_adapter = ModelAdapter(masked)
    dh = adapter.head_dim
    with torch.no_grad():
        for view, (ffn, kv) in zip(masked_adapter.views, layout.split(mask)):
            view.down.weight[:, ffn == 0] = 0
            rows = kv.repeat_interleave(dh) == 0
            view.k.weight[rows] = 0
            view.v.weight[rows] = 0
        return masked(ids).logits


def test_ste_forward_equals_the_hard_masked_model():
    model = tiny_model("llama")
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    scores = torch.randn(layout.num_units)
    factors, mask = ste_factors(scores, layout, layout.budget(0.5), tau=1.5)
    ids = torch.randint(0, 256, (1, 24))
    with Gates(adapter, layout) as gates, torch.no_grad():
        gates.set(factors)
        gated = model(ids).logits
    assert (mask == 0).any() and (mask == 1).any()
    torch.testing.assert_close(gated, hard_masked_logits(model, adapter, layout, mask, ids), atol=1e-5, rtol=0)


def test_every_score_gets_a_gradient_including_pruned_units():
    model = tiny_model("llama").requires_grad_(False)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    scores = torch.nn.Parameter(torch.randn(layout.num_units))
    factors, mask = ste_factors(scores, layout, layout.budget(0.5), tau=1.5)
    ids = torch.randint(0, 256, (1, 24))
    with Gates(adapter, layout) as gates:
        gates.set(factors)
        model(input_ids=ids, labels=ids).loss.backward()
    assert scores.grad is not None
    pruned = mask == 0
    assert (scores.grad[pruned] != 0).float().mean() > 0.9  # pruned units can come back
    assert (scores.grad[~pruned] != 0).float().mean() > 0.9
    # the gradient is the sigmoid's: d z / d s = p (1 - p) / tau times d loss / d z
    p = gate_probs(scores.detach(), 1.5)
    assert torch.all(p > 0) and torch.all(p < 1)


def test_removing_gates_restores_the_model():
    model = tiny_model("qwen3")
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        before = model(ids).logits
        with Gates(adapter, layout) as gates:
            gates.set(torch.zeros(layout.num_units))
            assert not torch.allclose(model(ids).logits, before)
        after = model(ids).logits
    assert torch.equal(before, after)


def per_slice_gradient(model, adapter, layout, factors, ids):
    """Reference: each layer's factors converted to the model's dtype on their own, inside the
    hooks (how the gates worked before they converted the whole vector at once)."""
    hd = adapter.head_dim
    handles = []
    for view, (ffn, kv) in zip(adapter.views, layout.split(factors)):
        handles.append(view.down.register_forward_pre_hook(
            lambda m, args, z=ffn: (args[0] * z.to(args[0].dtype),)))
        for module in (view.key_output, view.v):
            handles.append(module.register_forward_hook(
                lambda m, args, out, z=kv: out * z.repeat_interleave(hd).to(out.dtype)))
    try:
        model(input_ids=ids, labels=ids).loss.backward()
    finally:
        for handle in handles:
            handle.remove()


def test_bf16_gates_give_the_scores_the_gradient_of_per_layer_conversion_bit_for_bit():
    model = tiny_model("llama").to(torch.bfloat16).requires_grad_(False)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    ids = torch.randint(0, 256, (1, 24))
    grads = []
    for use_gates in (True, False):
        scores = torch.nn.Parameter(torch.randn(layout.num_units, generator=torch.Generator().manual_seed(0)))
        factors, _ = ste_factors(scores, layout, layout.budget(0.6), tau=1.5)
        if use_gates:
            with Gates(adapter, layout) as gates:
                gates.set(factors)
                model(input_ids=ids, labels=ids).loss.backward()
        else:
            per_slice_gradient(model, adapter, layout, factors, ids)
        grads.append(scores.grad)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])
