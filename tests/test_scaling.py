"""Scaling out on CPU (gloo, loopback only): torchrun data parallel on one machine and on two "nodes",
FSDP, and a device map that splits the model in two parts all give the single-process result bit for
bit (scores, scales and exported weights compared byte for byte); a run resumes on another number of
processes.

Every multi-process run here is a real ``torchrun`` launch of ``python -m grasprune prune``; the
single-process references run in this process with one thread, as torchrun's workers do.
"""

import json
import os
import shlex
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from grasprune.cli.command import prune_command
from grasprune.config import PruneConfig
from grasprune.errors import Stopped, UserError
from grasprune.method.collectives import batch_gradient
from grasprune.method.devices import execution_device
from grasprune.method.train import LoopConfig, _Loop
from grasprune.runs.pipeline import prune_run
from grasprune.runs.store import create_run, open_run
from grasprune.scaleout.placement import check_fsdp, load_for_training

from conftest import REPO


def tiny_config(model_dir, **overrides) -> PruneConfig:
    settings = {"model": str(model_dir), "keep_ratio": 0.6, "calib_samples": 4, "block_len": 32, "epochs": 2,
                "rescale_samples": 4, "eval_datasets": [], "device": "cpu", "dtype": "bf16",
                "batch_blocks": 2, "variant": "distill"}
    return PruneConfig(**{**settings, **overrides})


def single_process(config: PruneConfig, root, stop=None):
    """A run in this process, single-threaded like each torchrun worker (OMP_NUM_THREADS=1)."""
    run = create_run(config, root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prune_run(run, stop=stop)
    finally:
        torch.set_num_threads(threads)
    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_machine(processes: int = 2) -> list[str]:
    port = str(free_port())
    return ["--nproc-per-node", str(processes), "--master-addr", "127.0.0.1", "--master-port", port]


def torchrun(launch: list[str], args: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "grasprune", "prune", *args]
    loopback = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **loopback})


def finish(*procs: subprocess.Popen) -> None:
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]


def prune_args(config: PruneConfig) -> list[str]:
    """The CLI flags of ``config`` (the studio's equivalent command, without ``grasprune prune``)."""
    return shlex.split(prune_command(config))[2:]


def the_run(root):
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    return open_run(folder)


def assert_same_result(run, reference, exact: bool = True) -> None:
    """The same scores, scales and checkpoint bit for bit; with ``exact`` False, gate training bit for bit
    and the scales and checkpoint to their rounding. One process calibrates the scales on the model cut to
    its mask, FSDP and a device map on the gated full model: the same function, whose bf16 matmuls the
    CPU may block differently at the two widths (bit-identical on the Xeons CI has run on; up to 1.5e-4
    apart on gammas near 1 on an AMD EPYC without AVX-512)."""
    assert run.status()["status"] == "completed"
    assert run.scores_path.read_bytes() == reference.scores_path.read_bytes()
    if exact:
        assert run.gamma_path.read_bytes() == reference.gamma_path.read_bytes()
        assert (run.output_dir() / "model.safetensors").read_bytes() == \
            (reference.output_dir() / "model.safetensors").read_bytes()
        return
    gamma, expected_gamma = (load_file(str(r.gamma_path))["gamma"] for r in (run, reference))
    torch.testing.assert_close(gamma, expected_gamma, rtol=0, atol=1e-3)
    weights, expected = (load_file(str(r.output_dir() / "model.safetensors")) for r in (run, reference))
    assert weights.keys() == expected.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, expected[name], rtol=2e-3, atol=1e-5, msg=name)


def placements(run) -> list[dict]:
    return [e for e in run.events() if e["type"] == "placement"]


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """One process, global batch 2 (4 blocks: 2 steps per epoch)."""
    return single_process(tiny_config(tiny_model_dir), tmp_path_factory.mktemp("reference"))


def test_a_global_batch_is_the_mean_of_its_block_gradients_summed_in_block_order():
    param = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
    blocks = torch.tensor([[1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [7.0, -1.0, 0.5]])

    def loss_of(block):
        return (param * block).sum() ** 2, {"first": block[0].item()}

    loss, fields = batch_gradient(param, blocks, loss_of)
    per_block = [2 * (param * b).sum().detach() * b for b in blocks]
    assert torch.equal(param.grad, (per_block[0] + per_block[1] + per_block[2]) / 3)
    assert loss == pytest.approx(sum(((param * b).sum() ** 2).item() for b in blocks) / 3)
    assert fields == {"first": 1.0}


def test_every_epoch_visits_each_block_once_in_batches_of_the_global_batch_size():
    blocks = torch.arange(5).unsqueeze(1)
    cfg = LoopConfig(epochs=2, batch_blocks=2)
    param = torch.nn.Parameter(torch.zeros(2))
    loop = _Loop("gate_training", param, blocks, cfg, lambda *a, **k: None, None, None)
    assert loop.total == 6  # ceil(5 / 2) steps per epoch
    for epoch in range(2):
        batches = [loop.step_blocks(step).flatten().tolist() for step in range(3 * epoch, 3 * epoch + 3)]
        assert [len(b) for b in batches] == [2, 2, 1]
        assert sorted(block for batch in batches for block in batch) == [0, 1, 2, 3, 4]


def test_two_processes_give_the_single_process_result_bit_for_bit(tiny_model_dir, tmp_path):
    # a global batch of 3 blocks over 2 processes: rank 0 computes two blocks per step, rank 1 one
    config = tiny_config(tiny_model_dir, calib_samples=6, rescale_samples=3, batch_blocks=3)
    alone = single_process(config, tmp_path / "one")
    finish(torchrun(one_machine(), [*prune_args(config), "--runs-dir", str(tmp_path / "two")]))
    run = the_run(tmp_path / "two")
    assert_same_result(run, alone)
    steps = [e for e in run.events() if e["type"] == "step"]
    assert len(steps) == 2 * 2 + 1  # rank 0 alone writes the run folder: each step logged once
    last = placements(run)[-1]
    assert last["world_size"] == 2 and [d["rank"] for d in last["devices"]] == [0, 1]


def test_two_nodes_on_loopback_give_the_single_process_result(reference, tiny_model_dir, tmp_path):
    port, args = str(free_port()), prune_args(tiny_config(tiny_model_dir))
    nodes = [torchrun(["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr",
                       "127.0.0.1", "--master-port", port],
                      [*args, "--runs-dir", str(tmp_path / f"node{rank}")])
             for rank in (0, 1)]
    finish(*nodes)
    assert_same_result(the_run(tmp_path / "node0"), reference)
    assert not (tmp_path / "node1").exists()  # the second machine needs no shared or local run folder


def test_fsdp_shards_the_backbone_and_gives_the_single_process_result(reference, tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, fsdp=True)
    finish(torchrun(one_machine(), [*prune_args(config), "--runs-dir", str(tmp_path)]))
    run = the_run(tmp_path)
    assert_same_result(run, reference, exact=False)
    devices = placements(run)[0]["devices"]
    (whole,) = placements(reference)[0]["devices"]
    full = whole["param_bytes"]  # the bf16 weights on the one device of the reference run
    assert placements(run)[0]["mode"] == "fsdp" and len(devices) == 2
    assert all(d["param_bytes"] < 0.51 * full for d in devices)  # each rank holds half of the bf16 weights


class StopAfter:
    """A stop request that arrives after ``checks`` step boundaries (deterministic, unlike a signal)."""

    def __init__(self, checks: int):
        self.checks = checks

    def is_set(self) -> bool:
        self.checks -= 1
        return self.checks < 0


def test_a_run_resumes_on_a_different_number_of_processes(reference, tiny_model_dir, tmp_path):
    with pytest.raises(Stopped, match="gate_training at step 2 of 4"):
        single_process(tiny_config(tiny_model_dir), tmp_path, stop=StopAfter(2))
    run = the_run(tmp_path)
    finish(torchrun(one_machine(), ["--resume", str(run.folder)]))
    assert_same_result(run, reference)


@pytest.fixture
def split_map(tmp_path):
    """The tiny model in two parts: embeddings and layer 0 in RAM, layers 1-2 offloaded to disk."""
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"model.embed_tokens": "cpu", "model.rotary_emb": "cpu",
                                "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
                                "model.norm": "cpu", "lm_head": "cpu"}))
    return path


def test_a_device_map_in_two_parts_gives_the_unsplit_result(reference, tiny_model_dir, split_map, tmp_path):
    run = single_process(tiny_config(tiny_model_dir, device_map=str(split_map)), tmp_path)
    assert_same_result(run, reference, exact=False)
    rows = {d["device"]: d for d in placements(run)[0]["devices"]}
    assert rows["cpu"]["layers"] == [0] and rows["disk"]["layers"] == [1, 2]
    assert rows["cpu"]["peak_bytes"] > 0 and rows["disk"]["peak_bytes"] is None


@pytest.mark.parametrize("choice", [{"method": "wanda-sp"}, {"score_init": "magnitude"}])
def test_a_criterion_that_reads_weights_refuses_layers_kept_on_disk(tiny_model_dir, split_map, tmp_path, choice):
    config = tiny_config(tiny_model_dir, device_map=str(split_map), **choice)
    with pytest.raises(UserError, match=r"reads whole weight matrices, but the device map keeps some on disk"):
        single_process(config, tmp_path)


def test_offloaded_layers_really_load_per_forward(tiny_model_dir, split_map):
    placed = load_for_training(tiny_config(tiny_model_dir, device_map=str(split_map)).resolved())
    layers = placed.model.model.layers
    assert layers[0].mlp.down_proj.weight.device.type == "cpu"
    assert layers[1].mlp.down_proj.weight.device.type == "meta"  # weights come from disk at each forward
    assert execution_device(layers[1], torch.device("meta")) == torch.device("cpu")


def test_prune_help_lists_the_scaling_flags(capsys):
    from grasprune.cli.main import build_parser

    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["prune", "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert "--device-map" in shown and "--fsdp" in shown and "--batch-blocks" in shown


@pytest.mark.parametrize("overrides, message", [
    ({"device_map": "everywhere"}, "neither auto, balanced"),
    ({"device_map": "auto", "fsdp": True}, "exclude each other"),
    ({"batch_blocks": 0}, "--batch-blocks must be at least 1"),
])
def test_bad_scaling_settings_are_one_line_errors(overrides, message, tiny_model_dir):
    with pytest.raises(UserError, match=message):
        tiny_config(tiny_model_dir, **overrides).resolved()


@pytest.mark.parametrize("overrides, world, message", [
    ({"method": "magnitude"}, 2, "one-shot importance"),
    ({"batch_blocks": 3}, 2, "multiple of the 2 processes"),
    ({"distill": 0.5, "distill_topk": 64, "experimental": True}, 2, "--distill-topk 0"),
])
def test_what_fsdp_cannot_do_is_refused_before_loading(overrides, world, message, tiny_model_dir):
    with pytest.raises(UserError, match=message):
        check_fsdp(tiny_config(tiny_model_dir, fsdp=True, **overrides).resolved(), world)


def test_the_prune_page_shows_placement_and_memory_per_device_and_the_device_map_flag(reference, tmp_path,
                                                                                       monkeypatch):
    import shutil

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from grasprune.runs import jobs

    monkeypatch.setenv("GRASPRUNE_RUNS", str(tmp_path))
    st.cache_resource.clear()
    st.cache_data.clear()
    shutil.copytree(reference.folder, tmp_path / reference.id)
    gib = 2**30
    open_run(tmp_path / reference.id).event_log().emit("placement", mode="device_map", world_size=1, devices=[
        {"device": "cuda:0", "layers": [0, 1, 2, 5], "modules": ["model.embed_tokens"],
         "param_bytes": 3 * gib, "peak_bytes": 5 * gib, "rank": 0},
        {"device": "disk", "layers": [6], "modules": [], "param_bytes": gib, "peak_bytes": None, "rank": 0}])
    try:
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        at.query_params["run"] = reference.id
        at.run()
        assert not at.exception, at.exception
        assert "Placement: a device map (accelerate)" in [e.label for e in at.expander]
        table = at.dataframe[0].value
        assert table["device"].tolist() == ["cuda:0", "disk"]
        assert table["layers"].tolist() == ["0-2, 5", "6"]
        assert table["peak memory"].tolist() == ["5.0 GB", "– (disk)"]
        at.selectbox(key="prune_device_map").set_value("balanced").run()
        command = next(c.value for c in at.code if c.value.startswith("grasprune prune"))
        assert "--device-map balanced" in command
    finally:
        jobs.registry().shutdown()
        st.cache_resource.clear()
