"""Runs that never lose work: SIGKILL and resume, torn files, full disks, read-only folders."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from grasprune.config import PruneConfig
from grasprune.errors import UserError
from grasprune.runs.store import create_run, open_run

from conftest import REPO


def tiny_config(model_dir, **overrides) -> PruneConfig:
    settings = {"model": str(model_dir), "keep_ratio": 0.6, "calib_samples": 4, "block_len": 32, "epochs": 4,
                    "rescale_samples": 4, "checkpoint_every": 2, "eval_datasets": [], "device": "cpu"}
    return PruneConfig(**{**settings, **overrides})


def start(run, root):
    return subprocess.Popen([sys.executable, "-m", "grasprune", "prune", "--resume", str(run.folder),
                             "--runs-dir", str(root)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for_step(run, phase, step, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(e.get("phase") == phase and e.get("step", 0) >= step for e in run.events() if e["type"] == "step"):
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError(f"never reached {phase} step {step}")


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    run = create_run(tiny_config(tiny_model_dir), root)
    proc = start(run, root)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    return run


@pytest.mark.parametrize("phase, step", [("gate_training", 7), ("scale_calibration", 3)])
def test_sigkill_then_resume_gives_the_identical_checkpoint(phase, step, uninterrupted, tiny_model_dir, tmp_path):
    run = create_run(tiny_config(tiny_model_dir), tmp_path)
    proc = start(run, tmp_path)
    wait_for_step(run, phase, step, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert open_run(run.folder).status()["status"] == "interrupted"
    proc = start(run, tmp_path)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert run.status()["status"] == "completed"
    clean = uninterrupted.output_dir()
    resumed = run.output_dir()
    assert json.loads((resumed / "grasprune.json").read_text())["mask"] == \
        json.loads((clean / "grasprune.json").read_text())["mask"]
    assert (resumed / "model.safetensors").read_bytes() == (clean / "model.safetensors").read_bytes()


def test_stop_signal_checkpoints_and_resume_finishes(tiny_model_dir, tmp_path, uninterrupted):
    run = create_run(tiny_config(tiny_model_dir), tmp_path)
    proc = start(run, tmp_path)
    wait_for_step(run, "gate_training", 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 3  # stopped, resumable
    assert run.status()["status"] == "stopped"
    assert run.gates_checkpoint.is_file()
    proc = start(run, tmp_path)
    assert proc.wait(timeout=600) == 0
    assert (run.output_dir() / "model.safetensors").read_bytes() == \
        (uninterrupted.output_dir() / "model.safetensors").read_bytes()


def test_a_torn_event_line_is_skipped_not_fatal(tmp_path):
    from grasprune.events import EventLog, read_events

    log = EventLog(tmp_path / "events.jsonl")
    log.emit("step", step=1)
    with open(tmp_path / "events.jsonl", "a") as handle:
        handle.write('{"type": "step", "st')  # a crash mid-write
    assert [e["step"] for e in read_events(tmp_path / "events.jsonl")] == [1]


def test_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    from grasprune import atomic

    target = tmp_path / "status.json"
    atomic.write_json_atomic(target, {"status": "running"})

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(UserError, match="disk full"):
        atomic.write_json_atomic(target, {"status": "completed"})
    assert json.loads(target.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_read_only_runs_folder_is_a_clear_error(tmp_path, tiny_model_dir):
    root = tmp_path / "ro"
    root.mkdir()
    os.chmod(root, 0o555)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("this user can write to read-only folders (root): simulated with a file in the way")
        with pytest.raises(UserError, match="cannot create a run"):
            create_run(tiny_config(tiny_model_dir), root)
    finally:
        os.chmod(root, 0o755)


def test_runs_root_that_is_a_file_is_a_clear_error(tmp_path, tiny_model_dir):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create a run"):
        create_run(tiny_config(tiny_model_dir), blocker)
