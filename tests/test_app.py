"""The studio's pages through Streamlit's AppTest: forms, live view, runs, inspect, evaluate and export,
on a tiny model in a temporary runs folder (bad input: test_bad_inputs.py; paths: test_security.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from grasprune import jobs as jobs_module
from grasprune.config import PruneConfig
from grasprune.runs import create_run, list_runs

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TINY = {"keep_ratio": 0.5, "calib_samples": 4, "block_len": 32, "epochs": 2, "rescale_samples": 2, "eval_windows": 1,
            "eval_seqlen": 64, "checkpoint_every": 2, "device": "cpu"}


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GRASPRUNE_RUNS", str(tmp_path))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield tmp_path
    jobs_module.registry().shutdown()
    st.cache_resource.clear()


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory, tiny_model_dir):
    """One finished tiny run, shared by the read-only page tests (copied into each test's runs folder)."""
    root = tmp_path_factory.mktemp("runs")
    run = create_run(PruneConfig(model=str(tiny_model_dir), **TINY), root)
    registry = jobs_module.registry()
    registry.submit(run, root)
    assert registry.wait(run.id, timeout=240)
    assert run.status()["status"] == "completed", (run.folder / "job.log").read_text()[-2000:]
    return run


def with_run(runs_dir: Path, run) -> str:
    import shutil

    shutil.copytree(run.folder, runs_dir / run.id)
    return run.id


def app(page: str | None = None, run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if run_id:
        at.query_params["run"] = run_id
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    return at


def errors(at: AppTest) -> list[str]:
    assert not at.exception, at.exception
    return [e.value for e in at.error]


def test_prune_page_preselects_the_embedded_model_with_quick_cpu_defaults(runs_dir):
    at = app()
    assert errors(at) == []
    assert at.text_input(key="prune_model").value == "smollm2-135m"
    assert at.slider(key="prune_keep_ratio").value == pytest.approx(0.7)
    assert at.number_input(key="prune_samples").value == 32
    assert at.number_input(key="prune_block_len").value == 256
    assert at.number_input(key="prune_epochs").value == 1
    assert at.number_input(key="prune_rescale_samples").value == 32
    assert at.number_input(key="prune_eval_windows").value == 16
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Removed of prunable"] == "30.0%"
    assert metrics["Removed of all parameters"] == "23.7%"  # 31,850,496 of 134,515,008
    command = next(c.value for c in at.code if c.value.startswith("grasprune prune"))
    assert "--model smollm2-135m --keep-ratio 0.7" in command and "--calib-samples 32" in command


def test_budget_preview_follows_the_slider(runs_dir, tiny_model_dir):
    at = app()
    at.text_input(key="prune_model").set_value(str(tiny_model_dir)).run()
    at.slider(key="prune_keep_ratio").set_value(0.5).run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Removed of prunable"] == "50.0%"
    assert metrics["Parameters after (at most)"] == "6.36 M"  # 6,420,928 - 64,512


def test_start_attaches_the_run_and_the_live_view_follows_it_to_the_end(runs_dir, tiny_model_dir):
    at = app()
    at.text_input(key="prune_model").set_value(str(tiny_model_dir)).run()
    for key, value in (("prune_samples", 4), ("prune_block_len", 32), ("prune_epochs", 2),
                       ("prune_rescale_samples", 2), ("prune_eval_seqlen", 64), ("prune_eval_windows", 1)):
        at.number_input(key=key).set_value(value)
    at.slider(key="prune_keep_ratio").set_value(0.5)
    at.run()
    at.button(key="prune_start").click().run()
    assert errors(at) == []
    run_id = at.query_params["run"][0] if isinstance(at.query_params["run"], list) else at.query_params["run"]
    (run,) = list_runs(runs_dir)
    assert run.id == run_id
    assert run.config().calib_samples == 4 and run.config().keep_ratio == 0.5
    assert len(at.get("progress")) == 1
    assert jobs_module.registry().wait(run_id, timeout=240)
    time.sleep(1.1)
    at = app(run_id=run_id)  # a fresh session (page refresh) re-attaches from ?run=
    assert errors(at) == []
    assert any("Completed" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) == 2  # loss curve and per-layer kept units
    assert any("Perplexity **wikitext2**" in m.value for m in at.markdown)


def test_stop_button_stops_the_running_job(runs_dir, tiny_model_dir):
    run = create_run(PruneConfig(model=str(tiny_model_dir), **{**TINY, "calib_samples": 32, "epochs": 8}),
                     runs_dir)
    registry = jobs_module.registry()
    registry.submit(run, runs_dir)
    deadline = time.monotonic() + 120
    while not any(e["type"] == "step" for e in run.events()) and time.monotonic() < deadline:
        time.sleep(0.3)
    at = app(run_id=run.id)
    assert errors(at) == []
    at.button(key=f"stop-{run.id}").click().run()
    assert registry.wait(run.id, timeout=40)
    assert run.status()["status"] == "stopped"
    at = app(run_id=run.id)
    assert at.button(key=f"resume-{run.id}")  # resumable from the page


def test_runs_page_lists_opens_compares_and_deletes(runs_dir, completed_run):
    run_id = with_run(runs_dir, completed_run)
    at = app("app_pages/runs.py")
    assert errors(at) == []
    table = at.dataframe[0].value
    assert list(table["run"]) == [run_id]
    assert list(table["status"]) == ["completed"]
    assert table["ppl wikitext2"][0] > 1
    at.checkbox(key="runs_confirm_delete").check().run()
    at.button(key="runs_delete").click().run()
    assert errors(at) == []
    assert list_runs(runs_dir) == []


def test_runs_page_compares_two_runs(runs_dir, completed_run, tiny_model_dir):
    with_run(runs_dir, completed_run)
    other = create_run(PruneConfig(model=str(tiny_model_dir), **{**TINY, "seed": 3}), runs_dir)
    at = app("app_pages/runs.py")
    at.selectbox(key="runs_compare_a").set_value(completed_run.id)
    at.selectbox(key="runs_compare_b").set_value(other.id).run()
    assert errors(at) == []
    compared = at.dataframe[1].value
    assert "setting: seed" in list(compared[""])


def test_inspect_page_draws_the_mask(runs_dir, completed_run):
    run_id = with_run(runs_dir, completed_run)
    at = app("app_pages/inspect.py", run_id)
    assert errors(at) == []
    titles = [json.loads(c.proto.spec)["layout"].get("title", {}).get("text") for c in at.get("plotly_chart")]
    assert len(titles) == 6
    assert "Mask: layer × FFN channel" in titles and "Mask: layer × KV group" in titles
    assert any(t and t.startswith("Mask churn") for t in titles)


def test_evaluate_page_compares_dense_and_pruned_perplexity_and_generation(runs_dir, completed_run):
    run_id = with_run(runs_dir, completed_run)
    at = app("app_pages/evaluate.py", run_id)
    assert errors(at) == []
    at.multiselect(key="eval_datasets").set_value(["wikitext2"])
    at.number_input(key="eval_seqlen").set_value(64)
    at.number_input(key="eval_windows").set_value(1).run()
    at.button(key="eval_ppl").click().run()
    assert errors(at) == []
    rows = at.dataframe[0].value
    assert sorted(rows["model"]) == ["dense", "pruned"]
    pruned = rows[rows["model"] == "pruned"]["perplexity"].iloc[0]
    assert pruned == pytest.approx(completed_run.report()["metrics"]["ppl_wikitext2"]["ppl"], rel=1e-3)
    at.slider(key="eval_new_tokens").set_value(8)
    at.button(key="eval_generate").click().run()
    assert errors(at) == []
    assert len([t for t in at.text if t.value.startswith("The capital of France is")]) == 2


def test_export_page_prepares_the_archive_and_the_route_serves_it(runs_dir, completed_run, tmp_path):
    import hashlib
    import tarfile

    from starlette.requests import Request

    from grasprune.export import load_pruned
    from studio.routes import download

    def get(run_id: str):
        return asyncio.run(download(Request({"type": "http", "method": "GET", "path_params": {"run_id": run_id}})))

    run_id = with_run(runs_dir, completed_run)
    at = app("app_pages/export.py", run_id)
    at.button(key="export_prepare").click().run()
    assert errors(at) == []
    shown = " ".join(m.value for m in at.markdown)
    response = get(run_id)
    assert response.status_code == 200
    assert f'filename="grasprune-{run_id}.tar"' in response.headers["content-disposition"]
    archive = Path(response.path)
    assert archive.parent == runs_dir / run_id  # served from disk, not from memory
    content = archive.read_bytes()
    assert hashlib.sha256(content).hexdigest() in shown and f"{len(content):,} bytes" in shown
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    model, _ = load_pruned(tmp_path / "unpacked" / f"grasprune-{run_id}")
    assert sum(p.numel() for p in model.parameters()) == completed_run.report()["params"]["total_after"]
    for bad in ("../etc", "20261128-120000-zzzzzz", "x" * 30):
        assert get(bad).status_code == 404
