"""The job queue: runs as subprocesses one at a time per device, queued not dropped, stop and resume."""

from __future__ import annotations

import os
import time

import pytest

from grasprune.config import PruneConfig
from grasprune.errors import UserError
from grasprune.runs.jobs import JobRegistry
from grasprune.runs.processes import log_tail, process_rss
from grasprune.runs.store import create_run


def tiny_config(model_dir, **overrides) -> PruneConfig:
    settings = {"model": str(model_dir), "keep_ratio": 0.5, "calib_samples": 4, "block_len": 32, "epochs": 2,
                    "rescale_samples": 2, "eval_windows": 1, "eval_seqlen": 64, "checkpoint_every": 2, "device": "cpu"}
    return PruneConfig(**{**settings, **overrides})


@pytest.fixture
def jobs():
    registry = JobRegistry(stop_grace_s=20)
    yield registry
    registry.shutdown()


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_second_submit_is_queued_behind_the_first_and_both_complete(tmp_path, tiny_model_dir, jobs):
    first = create_run(tiny_config(tiny_model_dir), tmp_path)
    second = create_run(tiny_config(tiny_model_dir, seed=1), tmp_path)
    jobs.submit(first, tmp_path)
    jobs.submit(second, tmp_path)
    wait_for(lambda: jobs.job(first.id).state == "running", 30, "the first job to start")
    assert jobs.queue_position(second.id) == 1
    assert jobs.state()["queues"]["cpu"] == [second.id]
    assert second.status()["status"] == "queued"
    assert jobs.wait(second.id, timeout=240)
    for run in (first, second):
        assert run.status()["status"] == "completed", (run.folder / "job.log").read_text()[-2000:]
        assert jobs.job(run.id).returncode == 0
        assert (run.output_dir() / "grasprune.json").is_file()
    # one at a time: the second started only after the first ended
    assert jobs.job(second.id).started >= jobs.job(first.id).ended
    with pytest.raises(UserError, match="already completed"):
        jobs.submit(first, tmp_path)


def test_stop_checkpoints_and_resume_finishes_the_same_steps(tmp_path, tiny_model_dir, jobs):
    run = create_run(tiny_config(tiny_model_dir, calib_samples=16, epochs=4), tmp_path)
    jobs.submit(run, tmp_path)
    wait_for(lambda: any(e["type"] == "step" and e["step"] >= 3 for e in run.events()), 120, "a few steps")
    assert process_rss(run.status().get("pid")) > 10_000_000
    with pytest.raises(UserError, match="already running"):
        jobs.submit(run, tmp_path)
    assert jobs.stop(run.id)
    assert jobs.wait(run.id, timeout=30)
    assert jobs.job(run.id).returncode == 3
    status = run.status()
    assert status["status"] == "stopped"
    stopped = [e for e in run.events() if e["type"] == "stopped"]
    assert len(stopped) == 1 and 3 <= stopped[0]["step"] < 64
    assert run.gates_checkpoint.is_file()

    jobs.submit(run, tmp_path)
    assert jobs.wait(run.id, timeout=240)
    assert run.status()["status"] == "completed"
    steps = [e["step"] for e in run.events() if e["type"] == "step" and e["phase"] == "gate_training"]
    resumed = steps[steps.index(stopped[0]["step"]) + 1 :]
    assert resumed[0] == stopped[0]["step"] + 1  # resumed from the checkpoint written at the stop
    assert steps[-1] == 64


def test_stop_of_a_queued_job_cancels_it_without_starting_it(tmp_path, tiny_model_dir, jobs):
    first = create_run(tiny_config(tiny_model_dir), tmp_path)
    second = create_run(tiny_config(tiny_model_dir), tmp_path)
    jobs.submit(first, tmp_path)
    jobs.submit(second, tmp_path)
    assert jobs.stop(second.id)
    assert jobs.job(second.id).state == "cancelled"
    assert second.status()["status"] == "stopped"
    assert jobs.wait(first.id, timeout=240)
    assert jobs.job(second.id).pid is None and not second.events()


def test_process_rss_reads_live_processes_only():
    assert process_rss(os.getpid()) > 0
    assert process_rss(None) is None
    assert process_rss(2**22 + 12345) is None


def test_the_log_tail_reads_only_the_end_of_a_long_log(tmp_path):
    log = tmp_path / "job.log"
    assert log_tail(log) is None
    log.write_bytes(b"".join(b"step %d\r" % n for n in range(100_000)) + b"done\n\xff")
    assert log_tail(log, lines=3) == "step 99999\ndone\n\ufffd"  # progress-bar updates are lines too
    assert log_tail(log, lines=10**6).count("\n") < 16384 // 10  # only the last 16 KiB were read
    log.write_text("")
    assert log_tail(log) == ""


def test_a_run_taken_by_the_worker_is_starting_until_its_process_says_running():
    from grasprune.runs.jobs import shown_state

    assert shown_state("queued", None) == "queued"  # created, or left queued by an earlier server: Resume
    assert shown_state("queued", "queued") == "queued"
    assert shown_state("stopped", "queued") == "queued"  # resubmitted; the status file follows right after
    assert shown_state("queued", "running") == "starting"  # popped and launched, PyTorch still importing
    assert shown_state("running", "running") == "running"
    assert shown_state("stopped", "running") == "stopped"  # it stopped; its process is exiting
    assert shown_state("queued", "finished") == "queued"  # its process died before writing anything
    assert shown_state("completed", None) == "completed"
