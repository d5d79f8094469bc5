"""The issue's bar: a studio run of the embedded SmolLM2 with the Prune page's defaults completes in
under 10 minutes on CPU, and its checkpoint equals the one the shown CLI command produces."""

from __future__ import annotations

import json
import shlex
import time

import pytest
from safetensors.torch import load_file

from grasprune.cli.command import prune_command
from grasprune.config import PruneConfig
from grasprune.runs.jobs import JobRegistry
from grasprune.runs.store import create_run, list_runs
from studio.defaults import QUICK

from conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def test_default_studio_run_matches_the_cli_and_finishes_in_ten_minutes(tmp_path):
    config = PruneConfig(model="smollm2-135m", device="cpu", **QUICK)
    run = create_run(config, tmp_path / "app-runs")
    jobs = JobRegistry()
    started = time.monotonic()
    jobs.submit(run, tmp_path / "app-runs")
    assert jobs.wait(run.id, timeout=900)
    assert run.status()["status"] == "completed", (run.folder / "job.log").read_text()[-2000:]
    assert time.monotonic() - started < 600

    out = tmp_path / "cli-out"
    args = shlex.split(prune_command(config, out))[1:]
    result = run_cli(*args, "--runs-dir", str(tmp_path / "cli-runs"), timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    app_weights = load_file(str(run.output_dir() / "model.safetensors"))
    cli_weights = load_file(str(out / "model.safetensors"))
    assert app_weights.keys() == cli_weights.keys()
    for name, tensor in app_weights.items():
        assert tensor.equal(cli_weights[name]), name
    # the dense figure beside the pruned one: the same for both, measured once and then taken from the cache
    cli_report = json.loads((out / "grasprune.json").read_text())
    assert cli_report["metrics"]["ppl_wikitext2"]["dense_ppl"] == run.report()["metrics"]["ppl_wikitext2"]["dense_ppl"]
    (cli_run,) = list_runs(tmp_path / "cli-runs")
    assert [e["cached"] for e in cli_run.events() if e["type"] == "dense_metric"] == [True]
