"""``--compile``: the gated training passes through torch.compile learn what the eager passes learn."""

import pytest
import torch

from grasprune.cli.command import prune_command
from grasprune.cli.main import build_parser, config_from_args
from grasprune.config import PruneConfig
from grasprune.errors import UserError
from grasprune.method.adapters import ModelAdapter
from grasprune.method.export import sliced_model
from grasprune.method.gates import Gates
from grasprune.method.train import LoopConfig, calibrate_scales, train_gates
from grasprune.method.units import layout_of, project

from conftest import tiny_training_setup


def test_compiled_gate_training_and_scale_calibration_match_the_eager_ones():
    """Same scores, mask and scales up to float rounding (fused kernels sum in another order), with
    distillation on, so the eager teacher and the compiled student run side by side."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model, adapter, layout, blocks, budget = tiny_training_setup(block_seed=7)
    results = {}
    for compiled in (False, True):
        loop = LoopConfig(epochs=2, lr=5e-2, distill=0.5, compile=compiled)
        with Gates(adapter, layout) as gates:
            scores = train_gates(model, gates, layout, blocks, budget, loop)
            mask = project(torch.sigmoid(scores / loop.tau), layout, budget)
            student = sliced_model(adapter, layout, mask)
            with Gates(ModelAdapter(student), layout_of(ModelAdapter(student))) as student_gates:
                gamma = calibrate_scales(model, gates, layout, mask, blocks, loop, student=(student, student_gates))
        results[compiled] = scores, mask, gamma
    # compiled for real, once per phase and pass kind, not once per step (new factors reuse the graph)
    assert 1 <= torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 6
    (eager_scores, eager_mask, eager_gamma), (scores, mask, gamma) = results[False], results[True]
    assert (eager_scores != 0).any() and (eager_gamma[eager_mask > 0] - 1).abs().max() > 1e-3  # both learned
    assert torch.equal(mask, eager_mask)
    torch.testing.assert_close(scores, eager_scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(gamma, eager_gamma, atol=1e-4, rtol=0)


def test_compile_is_refused_with_a_device_map_or_fsdp_and_shown_in_the_command():
    for extra in ({"device_map": "auto"}, {"fsdp": True}):
        with pytest.raises(UserError, match="--compile works on one device only"):
            PruneConfig(model="smollm2-135m", compile=True, **extra).validate()
    config = config_from_args(build_parser().parse_args(["prune", "--model", "smollm2-135m", "--compile"]))
    assert config.compile and config.resolved().compile
    assert "--compile" in prune_command(config).split()
    assert "--compile" not in prune_command(PruneConfig(model="smollm2-135m")).split()
