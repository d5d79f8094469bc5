"""The studio's pages through Streamlit's AppTest: forms, live view, runs, inspect, evaluate and export,
on a tiny model in a temporary runs folder (bad input: test_bad_inputs.py; paths: test_security.py)."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from grasprune.config import PruneConfig
from grasprune.errors import UserError
from grasprune.runs import evaluations
from grasprune.runs import jobs as jobs_module
from grasprune.runs.store import create_run, list_runs, run_in_root
from studio import heal_jobs

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PRUNE = "app_pages/prune.py"
TINY = {"keep_ratio": 0.5, "calib_samples": 4, "block_len": 32, "epochs": 2, "rescale_samples": 2, "eval_windows": 1,
            "eval_seqlen": 64, "checkpoint_every": 2, "device": "cpu"}


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GRASPRUNE_RUNS", str(tmp_path))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield tmp_path
    jobs_module.registry().shutdown()
    heal_jobs.registry().shutdown()
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


def app(page: str = PRUNE, run_id: str | None = None) -> AppTest:
    """A fresh session (a new tab) on ``page`` (the studio opens on Home), with ``?run=run_id``."""
    at = AppTest.from_file(APP, default_timeout=120)
    if run_id:
        at.query_params["run"] = run_id
    at.run()
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


def test_prune_page_sets_the_projections_tie_break_and_layer_minimum(runs_dir, tiny_model_dir):
    at = app()
    at.text_input(key="prune_model").set_value(str(tiny_model_dir)).run()
    shown = next(c.value for c in at.code if c.value.startswith("grasprune prune"))
    assert "--tie-break" not in shown and "--layer-minimum" not in shown  # the variant's own rules
    at.selectbox(key="prune_tie_break").set_value("index")
    at.selectbox(key="prune_layer_minimum").set_value("after").run()
    assert errors(at) == []
    shown = next(c.value for c in at.code if c.value.startswith("grasprune prune"))
    assert "--tie-break index" in shown and "--layer-minimum after" in shown


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
    assert any(m.value.startswith("WikiText-2 perplexity: pruned ") and " · dense " in m.value for m in at.markdown)


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
    masks = [json.loads(c.proto.spec) for c in at.get("plotly_chart")
             if json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "").startswith("Mask:")]
    for figure in masks:  # the colours are named in the chart (the mask of equal layers has no blank)
        assert figure["layout"]["showlegend"] is True
        assert [t.get("name") for t in figure["data"] if t["type"] == "scatter"] == ["kept", "pruned"]
    assert any(t and t.startswith("Mask churn") for t in titles)


def test_the_mask_legend_names_blank_cells_only_where_a_layer_has_fewer_units():
    import numpy as np

    from studio.charts import mask_heatmap

    def legend(matrix) -> list[str]:
        figure = mask_heatmap(np.array(matrix, dtype=float), "Mask", "channel")
        assert figure.layout.showlegend
        return [trace.name for trace in figure.data if trace.type == "scatter"]

    assert legend([[1, 0, 1], [1, 0, np.nan]]) == ["kept", "pruned", "blank: the layer has fewer channels"]
    assert legend([[1, 0, 1], [1, 0, 0]]) == ["kept", "pruned"]


def computed_perplexity(at: AppTest):
    """The Evaluate page's perplexity table after Compute at WikiText-2, seqlen 64, one window."""
    at.multiselect(key="eval_datasets").set_value(["wikitext2"])
    at.number_input(key="eval_seqlen").set_value(64)
    at.number_input(key="eval_windows").set_value(1).run()
    finished_evaluation(at.button(key="eval_ppl").click().run())
    assert errors(at) == []
    return at.dataframe[0].value


def finished_evaluation(at: AppTest, timeout: float = 300) -> AppTest:
    """The page once the evaluation job its button started has ended (the job runs ``grasprune evaluate``)."""
    from grasprune.runs.cli_jobs import registry

    deadline = time.monotonic() + timeout
    while registry().running("evaluate") is not None:
        assert time.monotonic() < deadline, "the evaluation job did not end"
        time.sleep(0.5)
    return at.run()


def test_evaluate_page_compares_dense_and_pruned_perplexity_and_generation(runs_dir, completed_run):
    run_id = with_run(runs_dir, completed_run)
    at = app("app_pages/evaluate.py", run_id)
    assert errors(at) == []
    rows = computed_perplexity(at)
    assert sorted(rows["model"]) == ["dense", "pruned"]
    pruned = rows[rows["model"] == "pruned"]["perplexity"].iloc[0]
    assert pruned == pytest.approx(completed_run.report()["metrics"]["ppl_wikitext2"]["ppl"], rel=1e-3)
    at.slider(key="eval_new_tokens").set_value(8)
    finished_evaluation(at.button(key="eval_generate").click().run())
    assert errors(at) == []
    generated = [t.value for t in at.text if t.value.startswith("The capital of France is")]
    assert len(generated) == 2

    # another page, then back: the sidebar's links drop ?run=, and Streamlit the state of widgets not drawn
    at.switch_page("app_pages/runs.py").run()
    del at.query_params["run"]
    at.switch_page("app_pages/evaluate.py").run()
    assert errors(at) == []
    assert at.selectbox(key="evaluate_run").value == run_id
    assert at.multiselect(key="eval_datasets").value == ["wikitext2"]
    assert (at.number_input(key="eval_seqlen").value, at.number_input(key="eval_windows").value) == (64, 1)
    assert at.slider(key="eval_new_tokens").value == 8
    assert at.dataframe[0].value.equals(rows)
    assert [t.value for t in at.text if t.value.startswith("The capital of France is")] == generated
    # the generations are the run's, like its perplexities: a second tab at these settings shows them
    prompt, stored = "The capital of France is", evaluations.load(run_in_root(run_id, runs_dir))
    from grasprune.evaluation.generation import Sampling

    texts = [stored[evaluations.generation_key(role, prompt, 8, Sampling().key())]["text"] for role in ("dense", "pruned")]
    assert [prompt + text for text in texts] == generated


def test_grasprune_evaluate_stores_each_models_results_in_the_run(runs_dir, completed_run):
    from grasprune.evaluation.generation import Sampling

    from conftest import run_cli

    run = run_in_root(with_run(runs_dir, completed_run), runs_dir)
    events = runs_dir / "events.jsonl"
    done = run_cli("evaluate", str(run.folder), "--ppl", "wikitext2", "--seqlen", "64", "--windows", "1",
                   "--generate", "Hello", "--new-tokens", "4", "--events", str(events))
    assert done.returncode == 0, done.stderr[-2000:]
    stored = evaluations.load(run)
    assert set(stored) == {evaluations.ppl_key(m, "wikitext2", 64, 1) for m in ("dense", "pruned")} | \
        {evaluations.generation_key(m, "Hello", 4, Sampling().key()) for m in ("dense", "pruned")}
    assert stored[evaluations.ppl_key("pruned", "wikitext2", 64, 1)]["ppl"] == pytest.approx(
        run.report()["metrics"]["ppl_wikitext2"]["ppl"], rel=1e-3)  # the run's own number at its own protocol
    kinds = [json.loads(line)["type"] for line in events.read_text().splitlines()]
    assert kinds.count("result") == 2 and kinds[-1] == "done"  # the perplexities: stored by the run at its protocol
    again = run_cli("evaluate", str(run.folder), "--ppl", "wikitext2", "--seqlen", "64", "--windows", "1")
    assert again.returncode == 0 and again.stdout.startswith("0 results computed")  # stored ones are kept


def test_an_evaluation_job_survives_another_button_and_a_refresh_and_says_when_it_was_stopped(runs_dir,
                                                                                             completed_run):
    from grasprune.runs.cli_jobs import registry

    run_id = with_run(runs_dir, completed_run)
    at = app("app_pages/evaluate.py", run_id)
    assert (at.number_input(key="eval_seqlen").value, at.number_input(key="eval_windows").value) == (64, 1)
    at.button(key="eval_protocol_readme").click().run()  # the README's protocol, one click away
    assert (at.number_input(key="eval_seqlen").value, at.number_input(key="eval_windows").value) == (512, 64)
    at.button(key="eval_protocol_run_button").click().run()
    assert (at.number_input(key="eval_seqlen").value, at.number_input(key="eval_windows").value) == (64, 1)
    at.multiselect(key="eval_datasets").set_value(["wikitext2", "ptb"])
    at.number_input(key="eval_seqlen").set_value(16)
    at.number_input(key="eval_windows").set_value(100_000).run()  # every window: long enough to stop it
    at.button(key="eval_ppl").click().run()
    assert errors(at) == []
    at.button(key="eval_generate").click().run()  # a second computation waits: the first is not dropped
    assert any("an evaluation is already running" in e for e in errors(at)), errors(at)
    refreshed = app("app_pages/evaluate.py", run_id)  # a refresh: a new session finds the job running
    assert any("Evaluating (perplexity)" in p.text for p in refreshed.get("progress")) or registry().running("evaluate")
    refreshed.button(key="eval_stop").click().run()
    deadline = time.monotonic() + 120
    while registry().running("evaluate") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    ended = app("app_pages/evaluate.py", run_id)
    assert any("was stopped after" in i.value for i in ended.info), [i.value for i in ended.info]


def download(run_id: str, query: str = "", heal: bool = False):
    """The download route's answer to ``GET /grasprune-download/<run_id>?<query>`` (``/heal/<job id>``)."""
    from starlette.requests import Request

    from studio.routes import download as route

    params = {"job_id" if heal else "run_id": run_id}
    scope = {"type": "http", "method": "GET", "path_params": params, "query_string": query.encode()}
    return asyncio.run(route(Request(scope)))


def test_export_page_prepares_the_bf16_archive_and_the_route_serves_it(runs_dir, completed_run, tiny_model_dir,
                                                                      tmp_path):
    import hashlib
    import tarfile

    import torch
    from safetensors import safe_open

    from grasprune.method.export import load_pruned
    from grasprune.serving.convert import folder_size
    from studio.common import size

    run_id = with_run(runs_dir, completed_run)
    checkpoint = runs_dir / run_id / "checkpoint"
    at = app("app_pages/export.py", run_id)
    assert errors(at) == []
    choice = at.radio(key="export_precision")
    assert choice.value == "bf16" and choice.options == ["bf16", "fp16", "fp32 (the run's checkpoint as is)"]
    original = sum(f.stat().st_size for f in tiny_model_dir.glob("*.safetensors"))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Original download (safetensors)"] == size(original)  # listed with its own format
    dense_bf16 = completed_run.report()["params"]["total_before"] * 2
    assert metrics["Dense model (bf16)"] == size(dense_bf16)  # like for like: the dense model in the export's dtype
    assert metrics["Checkpoint (fp32)"] == size(folder_size(checkpoint))
    assert metrics["Export (bf16)"].startswith("≈ ")  # before the archive: the folder's size, from the headers
    command = next(c.value for c in at.code if c.value.startswith("grasprune export"))
    assert command == f"grasprune export {checkpoint} --dtype bf16 --out {checkpoint}-bf16"
    at.button(key="export_prepare").click().run()
    assert errors(at) == []
    response = download(run_id, "precision=bf16")
    assert response.status_code == 200
    assert f'filename="grasprune-{run_id}-bf16.tar"' in response.headers["content-disposition"]
    archive = Path(response.path)
    assert archive == runs_dir / run_id / "checkpoint-bf16.tar"  # served from disk, not from memory
    content = archive.read_bytes()
    shown = " ".join(m.value for m in at.markdown)
    assert hashlib.sha256(content).hexdigest() in shown and f"{len(content):,} bytes" in shown
    assert {m.label: m.value for m in at.metric}["Export (bf16)"] == size(len(content))
    assert f"The bf16 export is {len(content) / dense_bf16:.2f}× the dense model in bf16" in " ".join(
        c.value for c in at.caption)
    assert any(f'load_pruned("grasprune-{run_id}-bf16")  # bf16, as stored' in c.value for c in at.code)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    unpacked = tmp_path / "unpacked" / f"grasprune-{run_id}-bf16"
    weights = (unpacked / "model.safetensors").stat().st_size
    assert 0.49 < weights / (checkpoint / "model.safetensors").stat().st_size < 0.51
    with safe_open(str(unpacked / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_slice(name).get_dtype() for name in handle.keys()} == {"BF16"}  # noqa: SIM118
    model, _ = load_pruned(unpacked)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert sum(p.numel() for p in model.parameters()) == completed_run.report()["params"]["total_after"]
    for query in ("precision=int8", "precision=BF16", "precision=..%2Fcheckpoint", "precision=",
                  "precision=bf16&precision=fp32"):
        answer = download(run_id, query)
        assert answer.status_code == 400 and b"unknown precision" in answer.body and b"\n" not in answer.body
    assert download(run_id).status_code == 404  # the checkpoint as is: its archive is not prepared
    for bad in ("../etc", "20261128-120000-zzzzzz", "x" * 30):
        assert download(bad, "precision=bf16").status_code == 404


def test_export_page_fp32_serves_the_checkpoint_as_is(runs_dir, completed_run):
    run_id = with_run(runs_dir, completed_run)
    at = app("app_pages/export.py", run_id)
    at.radio(key="export_precision").set_value("fp32").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Export (fp32)"] == "≈ " + metrics["Checkpoint (fp32)"]  # nothing converted
    at.button(key="export_prepare").click().run()
    assert errors(at) == []
    for query in ("", "precision=fp32"):  # a link without a precision: the checkpoint as is
        response = download(run_id, query)
        assert response.status_code == 200 and Path(response.path) == runs_dir / run_id / "checkpoint.tar"
        assert f'filename="grasprune-{run_id}.tar"' in response.headers["content-disposition"]
    assert download(run_id, "precision=bf16").status_code == 404  # not prepared


def test_export_page_offers_gguf_with_its_modelfile_and_commands(runs_dir, completed_run):
    import tarfile

    from grasprune.serving.gguf_export import gguf_file_name
    from studio.common import size

    run_id = with_run(runs_dir, completed_run)
    checkpoint = runs_dir / run_id / "checkpoint"
    at = app("app_pages/export.py", run_id)
    at.radio(key="export_format").set_value("gguf").run()
    assert errors(at) == []
    assert at.radio(key="export_gguf_type").value == "f16"
    at.radio(key="export_gguf_type").set_value("q8_0").run()
    assert {m.label: m.value for m in at.metric}["GGUF (q8_0)"].startswith("≈ ")
    command = next(c.value for c in at.code if c.value.startswith("grasprune export"))
    assert command == f"grasprune export {checkpoint} --format gguf --type q8_0 --out {checkpoint}-gguf-q8_0"
    at.button(key="export_gguf_prepare").click().run()
    assert errors(at) == []
    response = download(run_id, "precision=gguf-q8_0")
    assert response.status_code == 200 and Path(response.path) == runs_dir / run_id / "checkpoint-gguf-q8_0.tar"
    name = gguf_file_name(checkpoint, "q8_0")
    with tarfile.open(response.path) as tar:
        members = {m.name: m.size for m in tar.getmembers()}
        modelfile = tar.extractfile(f"grasprune-{run_id}-gguf-q8_0/Modelfile").read().decode()
    assert sorted(members) == [f"grasprune-{run_id}-gguf-q8_0/{n}" for n in ("Modelfile", name)]
    shown = [c.value for c in at.code]
    assert modelfile.rstrip("\n") in shown and f"FROM ./{name}" in modelfile
    assert any("ollama create" in c and f"llama-cli -m {name}" in c for c in shown)
    assert {m.label: m.value for m in at.metric}["GGUF (q8_0)"] == size(Path(response.path).stat().st_size)
    assert download(run_id, "precision=gguf-q3_k").status_code == 400


def test_home_says_what_grasprune_does_and_links_the_flow_the_runs_and_the_cli(runs_dir, completed_run):
    run_id = with_run(runs_dir, completed_run)
    at = AppTest.from_file(APP, default_timeout=120).run()  # the studio opens on Home
    assert errors(at) == []
    assert [t.value for t in at.title] == ["GRASPrune Studio"]
    intro = at.markdown[0].value
    for words in ("FFN channels", "KV-head groups", "one global parameter budget", "Learned gates",
                  "dense checkpoint", "AutoModelForCausalLM.from_pretrained"):
        assert words in intro
    links = {link.value: (link.proto.page, link.proto.query_string) for link in at.get("page_link")}
    for title in ("Prune", "Inspect", "Evaluate", "Heal", "Export", "Explain", "Results"):
        assert links[title][0].endswith(title.lower()), links
    assert links[describe_run(runs_dir, run_id)] == (links["Prune"][0], f"run={run_id}")  # the runs so far
    assert "1 run, 1 completed" in " ".join(c.value for c in at.caption)
    command = at.code[0].value.splitlines()
    assert command[0].startswith("grasprune prune --model smollm2-135m --keep-ratio 0.7 ")
    assert command[1] == "grasprune inspect pruned-0.7"
    at.button(key="home_start").click().run()
    assert [t.value for t in at.title] == ["Prune"]


def test_evaluate_page_adds_the_runs_newest_finished_heal(runs_dir, completed_run):
    from grasprune.evaluation.perplexity import perplexity
    from grasprune.method.export import load_pruned
    from grasprune.method.heal import HealConfig, heal
    from studio.heal_jobs import create_heal_job

    run = run_in_root(with_run(runs_dir, completed_run), runs_dir)
    cfg = HealConfig(steps=2, samples=2, block_len=16, lr=1e-2)
    out = runs_dir / "healed" / "checkpoint-healed"
    create_heal_job(runs_dir, run.output_dir(), out, cfg, run_id=run.id)
    heal(run.output_dir(), out, cfg)
    rows = computed_perplexity(app("app_pages/evaluate.py", run.id))
    assert sorted(rows["model"]) == ["dense", "healed", "pruned"]
    model, tokenizer = load_pruned(out)
    expected = perplexity(model, tokenizer, "wikitext2", 64, 1).ppl
    assert rows[rows["model"] == "healed"]["perplexity"].iloc[0] == pytest.approx(expected, rel=1e-3)
    assert rows[rows["model"] == "healed"]["perplexity"].iloc[0] != rows[rows["model"] == "pruned"]["perplexity"].iloc[0]


def test_a_heal_is_listed_under_its_run_and_exports_as_bf16_and_gguf(runs_dir, completed_run, tmp_path):
    import tarfile

    from grasprune.method.export import load_pruned
    from grasprune.method.heal import HealConfig
    from studio.heal_jobs import registry, start_heal

    run = run_in_root(with_run(runs_dir, completed_run), runs_dir)
    metric = run.report()["metrics"]["ppl_wikitext2"]
    cfg = HealConfig(steps=2, samples=2, block_len=16, lr=1e-2, eval_datasets=["wikitext2"],
                     eval_seqlen=metric["seqlen"], eval_windows=metric["windows"])  # as the Heal page starts it
    out = run.output_dir().with_name("checkpoint-healed")
    job = start_heal(registry(), runs_dir, run.output_dir(), out, cfg, run_id=run.id)
    deadline = time.monotonic() + 240
    while registry().alive(job):
        assert time.monotonic() < deadline, "the heal job did not end"
        time.sleep(0.5)
    healed = job.metrics()["ppl_wikitext2"]

    at = app("app_pages/runs.py")
    assert errors(at) == []
    (row,) = at.dataframe[1].value.to_dict("records")  # the Heals table, under the runs table
    assert (row["heal"], row["of run"], row["state"]) == (job.id, run.id, "completed")
    assert row["wikitext2 healed"] == round(healed["ppl"], 2) and row["wikitext2 pruned"] == round(metric["ppl"], 2)
    at.button(key="runs_heal_export").click().run()
    assert errors(at) == [] and at.radio(key="export_source").value == job.id  # the Export page, on this heal
    at = app("app_pages/export.py", run.id)  # AppTest reruns the page it was given: open Export as the link does
    at.query_params["heal"] = job.id
    at.run()
    assert at.radio(key="export_source").value == job.id
    at.button(key="export_prepare").click().run()
    assert errors(at) == []
    response = download(job.id, "precision=bf16", heal=True)
    assert response.status_code == 200, response.body
    assert Path(response.path) == job.folder / "checkpoint-bf16.tar"
    with tarfile.open(response.path) as tar:
        tar.extractall(tmp_path / "bf16", filter="data")
    model, _ = load_pruned(tmp_path / "bf16" / f"grasprune-healed-{job.id}-bf16")
    assert {str(p.dtype) for p in model.parameters()} == {"torch.bfloat16"}
    at.radio(key="export_format").set_value("gguf").run()
    at.button(key="export_gguf_prepare").click().run()
    assert errors(at) == []
    response = download(job.id, "precision=gguf-f16", heal=True)
    assert response.status_code == 200
    with tarfile.open(response.path) as tar:
        assert any(name.endswith(".gguf") for name in tar.getnames())


def describe_run(runs_dir: Path, run_id: str) -> str:
    from studio.common import describe

    return describe(run_in_root(run_id, runs_dir))


def test_a_run_link_to_the_home_page_opens_the_run(runs_dir, completed_run):
    run_id = with_run(runs_dir, completed_run)
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = run_id  # `/?run=<id>`, the link of the time when "/" was the Prune page
    at.run()
    assert errors(at) == []
    assert [t.value for t in at.title] == ["Prune"]
    assert any("Completed" in s.value for s in at.success)


def test_keep_ratio_one_prunes_nothing_and_is_refused(runs_dir, tiny_model_dir):
    with pytest.raises(UserError, match="keeps every prunable parameter, so nothing would be pruned"):
        PruneConfig(model=str(tiny_model_dir), keep_ratio=1.0).resolved()
    assert app().slider(key="prune_keep_ratio").max == 0.99  # the studio cannot ask for it


def test_the_keep_ratio_slider_starts_at_the_models_minimum(runs_dir, tiny_model_dir):
    from grasprune.method.budget import budget_preview as preview

    at = app()
    smol = preview("smollm2-135m")
    slider = at.slider(key="prune_keep_ratio")
    assert slider.min == math.ceil(smol.minimum_keep_ratio * 100) / 100 == 0.09  # 8,899,200 of 106,168,320
    assert slider.value == 0.7
    at.slider(key="prune_keep_ratio").set_value(0.1).run()  # fine for SmolLM2, too low for the tiny model
    at.text_input(key="prune_model").set_value(str(tiny_model_dir)).run()
    assert errors(at) == []
    tiny = preview(str(tiny_model_dir))
    lowest = math.ceil(tiny.minimum_keep_ratio * 100) / 100
    assert 0.1 < lowest < 0.7 and tiny.budget(lowest) >= tiny.minimum_params
    slider = at.slider(key="prune_keep_ratio")
    assert (slider.min, slider.value) == (lowest, lowest)  # the stale 0.1 raised to the lowest possible
    assert {m.label for m in at.metric} >= {"Removed of prunable"}  # the panel shows a budget, not an error


def test_inspect_opens_on_the_newest_completed_run(runs_dir, completed_run, tiny_model_dir):
    completed_id = with_run(runs_dir, completed_run)
    newer = create_run(PruneConfig(model=str(tiny_model_dir), **TINY), runs_dir)  # failed after its start
    newer.event_log().emit("phase", phase="loading")
    newer.set_status("failed", message="out of memory")
    assert [r.id for r in list_runs(runs_dir)] == [newer.id, completed_id]
    at = app("app_pages/inspect.py")
    assert errors(at) == []
    assert at.selectbox(key="inspect_run").value == completed_id
    assert at.query_params["run"] in (completed_id, [completed_id])



def shown_cells(element):
    """The cells of a styled dataframe as the page writes them (its display values)."""
    import pyarrow as pa

    return pa.ipc.open_stream(element.proto.arrow_data.styler.display_values).read_all().to_pandas()


def make_far_worse(run, factor: float = 10.0) -> float:
    """Record ``run``'s dense perplexity as ``factor`` times lower than its pruned one (report and events):
    what a demo-sized run of a real model gives. Returns the dense figure."""
    report = run.report()
    metric = report["metrics"]["ppl_wikitext2"]
    metric["dense_ppl"] = metric["ppl"] / factor
    run.report_path.write_text(json.dumps(report))
    lines = [json.loads(line) for line in run.events_path.read_text().splitlines()]
    for event in lines:
        if event["type"] == "dense_metric":
            event["ppl"] = metric["dense_ppl"]
    run.events_path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return metric["dense_ppl"]


def test_run_page_shows_the_dense_perplexity_beside_the_pruned_one(runs_dir, completed_run):
    from grasprune.evaluation.dense_reference import perplexity_line

    run_id = with_run(runs_dir, completed_run)
    metric = completed_run.report()["metrics"]["ppl_wikitext2"]
    at = app(run_id=run_id)
    assert errors(at) == []
    line = perplexity_line(metric)
    assert line.startswith(f"WikiText-2 perplexity: pruned {metric['ppl']:,.1f} · dense {metric['dense_ppl']:,.1f} · ×")
    assert line in [m.value for m in at.markdown]
    assert not [w.value for w in at.warning]  # a random tiny model: pruned and dense are alike


def test_a_completed_runs_actions_are_buttons_that_open_their_page_on_the_run(runs_dir, completed_run):
    run_id = with_run(runs_dir, completed_run)
    at = app(run_id=run_id)
    assert [at.button(key=f"{page}-{run_id}").label for page in ("inspect", "evaluate", "export")] == [
        "Inspect the mask", "Evaluate", "Download"]
    at.button(key=f"evaluate-{run_id}").click().run()
    assert errors(at) == []
    assert at.selectbox(key="evaluate_run").value == run_id  # the Evaluate page, on this run


def test_a_run_page_gives_next_steps_even_at_x1_5_the_dense_perplexity(runs_dir, completed_run):
    run_id = with_run(runs_dir, completed_run)
    make_far_worse(run_in_root(run_id, runs_dir), factor=1.5)
    at = app(run_id=run_id)
    assert errors(at) == []
    assert not [w.value for w in at.warning]  # below the far-worse line: no warning, but still advice
    (steps,) = [m.value for m in at.markdown if m.value.startswith("**Next steps**")]
    assert "**Heal it**" in steps and "went from WikiText-2" in steps  # with the gain measured in bench/results
    assert "**Run the full settings**" in steps  # the tiny run used fewer blocks than the CLI's defaults


def test_run_page_warns_when_the_pruned_model_is_far_worse_than_dense(runs_dir, completed_run):
    run_id = with_run(runs_dir, completed_run)
    dense = make_far_worse(run_in_root(run_id, runs_dir))
    at = app(run_id=run_id)
    assert errors(at) == []
    assert any(f"· dense {dense:,.1f} · ×10.0 (seqlen 64, 1 window)" in m.value for m in at.markdown)
    (warning,) = [w.value for w in at.warning]
    assert warning.startswith("The pruned model is far worse than the dense one: its WikiText-2 perplexity is ×10.0")
    assert "a keep ratio above 0.5" in warning and "The studio's quick settings are a demo" in warning


def test_runs_page_shows_dense_beside_pruned_with_formatted_numbers(runs_dir, completed_run, tiny_model_dir):
    run_id = with_run(runs_dir, completed_run)
    create_run(PruneConfig(model=str(tiny_model_dir), **TINY), runs_dir)  # not started: empty cells
    metric = completed_run.report()["metrics"]["ppl_wikitext2"]
    at = app("app_pages/runs.py")
    assert errors(at) == []
    table, cells = at.dataframe[0].value, shown_cells(at.dataframe[0])
    columns = list(table.columns)
    assert columns.index("dense wikitext2") == columns.index("ppl wikitext2") + 1
    done = list(table["run"]).index(run_id)
    assert table["dense wikitext2"][done] == metric["dense_ppl"]  # the value sorts as a number
    assert cells["dense wikitext2"][done] == f"{metric['dense_ppl']:,.1f}"
    assert cells["ppl wikitext2"][done] == f"{metric['ppl']:,.1f}"
    assert cells["removed % of all"][done].endswith("%") and cells["keep ratio"][done] == "0.50"
    assert set(cells.iloc[1 - done][["ppl wikitext2", "dense wikitext2", "params after", "phase"]]) == {"–"}
    assert not any(text in ("None", "nan") for text in cells.to_numpy().ravel())


PHASE_LINE = re.compile(r"^(:material/[a-z_]+:) (\*\*)?([a-z ]+?)(\*\*)?: (.+)$")


def phase_lines(at: AppTest) -> dict[str, tuple[str, str]]:
    """The live view's phase list: {label: (icon, text)}, in the list's order."""
    from studio.live import ICONS

    starts = (f"{ICONS['done']} loading", f"{ICONS['current']} **loading", f"{ICONS['pending']} loading")
    (listing,) = [m.value for m in at.markdown if m.value.startswith(starts)]
    return {found[3]: (found[1], found[5]) for found in map(PHASE_LINE.match, listing.split("  \n"))}


def test_the_live_view_lists_the_runs_own_phases_importance_included_with_their_durations(runs_dir,
                                                                                         completed_run):
    run_id = with_run(runs_dir, completed_run)
    at = app(run_id=run_id)
    assert errors(at) == []
    lines = phase_lines(at)
    assert list(lines) == ["loading", "importance scoring", "gate training", "scale calibration", "export",
                           "evaluation"]  # the default variant starts from an importance pass
    for icon, text in lines.values():
        assert icon == ":material/check_circle:" and re.fullmatch(r"done in \dm \d\ds", text)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["ETA (whole run)"] == "–"


def running_run(runs_dir: Path, tiny_model_dir: Path, now: float):
    """A run the studio sees running (its status names this process) 24 s in: loaded in 2 s, importance
    in 6 s over 4 blocks, gate training at step 4 of 8 after 4 s a step; nothing measured before it."""
    from grasprune.events import EventLog

    run = create_run(PruneConfig(model=str(tiny_model_dir), **TINY), runs_dir)
    run.set_status("running")
    lines = [("phase", now - 24, {"phase": "loading", "config": run.config().resolved().to_dict()}),
             ("model", now - 22, {"total_params": 6_420_928, "prunable_params": 129_024, "budget": 64_512,
                                  "layers": [{"ffn_channels": 96, "kv_groups": 4, "q_heads": 8}] * 3}),
             ("phase", now - 22, {"phase": "importance", "total": 4}),
             *[("progress", now - 22 + 1.5 * n, {"phase": "importance", "done": n, "total": 4}) for n in range(1, 5)],
             ("phase", now - 16, {"phase": "gate_training", "total": 8}),
             *[("step", now - 16 + 4 * n, {"phase": "gate_training", "step": n, "total": 8, "loss": 3.0, "eta": 16})
               for n in range(1, 5)]]
    log = EventLog(run.events_path)
    with open(log.path, "w") as handle:
        handle.writelines(json.dumps({"type": kind, "time": time, **fields}) + "\n" for kind, time, fields in lines)
    return run


def test_a_running_run_shows_done_current_and_pending_phases_and_one_eta(runs_dir, tiny_model_dir):
    now = time.time()
    run = running_run(runs_dir, tiny_model_dir, now)
    at = app(run_id=run.id)
    waited = time.time() - now
    assert errors(at) == []
    lines = phase_lines(at)
    assert lines["loading"] == (":material/check_circle:", "done in 0m 02s")
    assert lines["importance scoring"] == (":material/check_circle:", "done in 0m 06s")
    icon, text = lines["gate training"]
    # 4 steps left at 1 step / 4 s from its own rate (steps 1 to 4), less the time since the last step
    left = re.fullmatch(r"step 4/8 \(50%\) · about 0m (\d\d)s left", text)
    assert icon == ":material/play_circle:" and left and 16 - waited - 1 <= int(left[1]) <= 16
    for label in ("scale calibration", "export", "evaluation"):
        assert lines[label] == (":material/schedule:", "pending, a few seconds")  # a tiny model: the predictions are small
    (bar,) = at.get("progress")
    assert re.fullmatch(r"gate training · step 4/8 \(50%\) · ETA 0m \d\ds", bar.proto.text)
    eta = {m.label: m.value for m in at.metric}["ETA (whole run)"]
    minutes, seconds = map(int, re.fullmatch(r"(\d+)m (\d\d)s", eta).groups())
    # the current phase's rest and the pending phases after it: a tiny model's pending phases are predicted at
    # a few seconds or less, and both figures are rounded to whole seconds, so the sum may show the rest's value
    assert int(left[1]) <= minutes * 60 + seconds <= int(left[1]) + 3 * 5  # three pending phases, each under 5 s
    run.set_status("stopped", message="test over")


def test_a_run_its_worker_took_says_starting_and_offers_no_resume(runs_dir, tiny_model_dir, monkeypatch):
    registry = jobs_module.registry()
    run = create_run(PruneConfig(model=str(tiny_model_dir), **TINY), runs_dir)  # its status file says queued
    at = app(run_id=run.id)  # no job of this server holds it: it waits for Resume
    resume_message = "Created but not started: press Resume to queue it."
    assert [i.value for i in at.info if "press Resume" in i.value] == [resume_message]
    assert at.button(key=f"resume-{run.id}")
    # the worker popped it and launched its process, which has not written "running" yet (importing PyTorch)
    taken = jobs_module.Job(run.id, run.folder, runs_dir, "cpu", state="running")
    monkeypatch.setattr(registry, "job", lambda run_id: taken if run_id == run.id else None)
    at = app(run_id=run.id)
    assert errors(at) == []
    infos = [i.value for i in at.info]
    assert any(i.startswith("Starting…") for i in infos) and not any("press Resume" in i for i in infos)
    assert not [b for b in at.button if b.key == f"resume-{run.id}"]
    assert at.button(key=f"stop-{run.id}")
    assert any(" · starting · folder " in c.value for c in at.caption)


def test_the_prune_page_shows_the_expected_duration_of_its_settings(runs_dir):
    from grasprune.method.budget import budget_preview as preview
    from grasprune.runs.estimate import ModelSize, expected_durations, rates_for
    from studio.defaults import QUICK
    from studio.estimates import about

    def expected(**changes) -> str:
        config = PruneConfig(model="smollm2-135m", device="cpu", **{**QUICK, **changes}).resolved()
        found = preview("smollm2-135m")
        seconds = sum(expected_durations(config, ModelSize(found.total_params, found.prunable_params),
                                         rates_for(runs_dir, "cpu")).values())
        return f"Expected duration: {about(seconds)} (built-in rates"

    at = app()
    assert errors(at) == []
    (caption,) = [c.value for c in at.caption if c.value.startswith("Expected duration")]
    assert caption.startswith(expected()) and expected().startswith("Expected duration: about 4 min")
    at.number_input(key="prune_epochs").set_value(4).run()
    (caption,) = [c.value for c in at.caption if c.value.startswith("Expected duration")]
    assert caption.startswith(expected(epochs=4)) and expected(epochs=4) != expected()
