"""The studio's Heal page: a real ``grasprune heal`` of a tiny pruned checkpoint started from the page, its
live loss, Stop and Resume, the healed folder; bad input in one line; the progress file's reader."""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_app import app as studio_page
from test_app import errors, runs_dir  # noqa: F401 - runs_dir: a fixture (a fresh runs folder, jobs stopped after)
from test_heal import pruned  # noqa: F401 - a fixture: the tiny pruned checkpoint test_heal.py heals

from grasprune.cli.command import heal_command
from grasprune.cli.main import build_parser
from grasprune.events import EventLog
from grasprune.method.export import load_pruned
from grasprune.method.heal import HealConfig, state_folder
from grasprune.runs.cli_jobs import CliJobs
from studio import heal_jobs
from studio.common import duration
from studio.heal_jobs import create_heal_job, heal_job_in_root, list_heal_jobs, read_progress
from studio.heal_view import merged_text

from conftest import run_cli

APP = str(Path(__file__).resolve().parent.parent / "app.py")
HEAL = "app_pages/heal.py"


def app() -> AppTest:
    """A fresh session (a new tab) on the Heal page."""
    return studio_page(HEAL)


def poll(at: AppTest, done, what: str, timeout: float = 120) -> AppTest:
    """Rerun until ``done(at)``: in AppTest a fragment's timer never fires by itself."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        at.run()
        assert not at.exception, at.exception
        if done(at):
            return at
    raise AssertionError(f"timed out waiting for {what}")


def step(n: int, loss: float) -> dict:
    return {"phase": "healing", "step": n, "total": 6, "loss": loss, "elapsed_s": n / 10}


def test_the_progress_reader_leaves_a_partial_last_line_for_later_and_folds_a_resume(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.emit("phase", phase="loading")
    log.emit("phase", phase="healing", total=6, resumed_at=0)
    log.emit("holdout", phase="healing", step=0, loss=9.5, best_step=0, best_loss=9.5)
    for n in (1, 2, 3):
        log.emit("step", **step(n, 10.0 - n))
    log.emit("holdout", phase="healing", step=3, loss=7.5, best_step=3, best_loss=7.5)
    with open(path, "a") as handle:
        handle.write('{"type":"step","phase":"healing","step":4,"total":6,"lo')  # being written
    progress = read_progress(path)
    assert progress.loss["healing"] == [(1, 9.0), (2, 8.0), (3, 7.0)]
    assert progress.training_s == pytest.approx(0.3) and progress.spans["healing"].done == 3
    with open(path, "a") as handle:
        handle.write('ss":6.5,"elapsed_s":0.4}\n')  # the line is finished
    progress = read_progress(path, progress)
    assert progress.loss["healing"][-1] == (4, 6.5) and progress.training_s == pytest.approx(0.4)
    log.emit("stopped", phase="healing", step=4, total=6)
    assert read_progress(path, progress).stopped
    # resumed from the state saved at step 2: steps 3 and 4 are replayed and replace the earlier ones
    log.emit("phase", phase="loading")
    log.emit("phase", phase="healing", total=6, resumed_at=2)
    for n in (3, 4, 5, 6):
        log.emit("step", **step(n, 5.0 - n / 10))
    log.emit("holdout", phase="healing", step=3, loss=7.4, best_step=3, best_loss=7.4)  # replayed: replaces
    log.emit("holdout", phase="healing", step=6, loss=8.0, best_step=3, best_loss=7.4)
    log.emit("phase", phase="merging")
    log.emit("done", out="healed", steps=6, elapsed_s=0.6)
    progress = read_progress(path, progress)
    assert progress.loss["healing"] == [(1, 9.0), (2, 8.0), (3, 4.7), (4, 4.6), (5, 4.5), (6, 4.4)]
    assert progress.done["steps"] == 6 and not progress.stopped and progress.attempts == 2
    assert progress.holdout == {0: 9.5, 3: 7.4, 6: 8.0} and progress.best == (3, 7.4)
    path.write_text("")  # a new file under the same name: read from its start
    assert read_progress(path, progress).loss == {}
    assert read_progress(tmp_path / "missing.jsonl").loss == {}


def test_a_jobs_state_comes_from_its_exit_code_else_from_its_events(tmp_path):
    job = create_heal_job(tmp_path, tmp_path / "pruned", tmp_path / "healed", HealConfig())
    jobs = CliJobs()

    def state(**process) -> str:
        if process:
            job.process_path.write_text(json.dumps({"pid": 2**22 + 1, "started": 0.0, **process}))
        return jobs.state(job, read_progress(job.events_path))

    assert state() == "created"
    assert state(returncode=None) == "interrupted"  # its process is gone without a word
    assert state(returncode=0) == "completed" and state(returncode=3) == "stopped"
    assert state(returncode=1) == "failed"
    assert state(returncode=-15, stop_requested=True) == "stopped"  # stopped before it handled the signal
    EventLog(job.events_path).emit("stopped", phase="healing", step=4, total=6)
    assert state(returncode=None) == "stopped"  # a job of an earlier server: its events say it
    EventLog(job.events_path).emit("error", message="boom")
    assert state(returncode=None) == "failed"


def test_the_shown_command_parses_back_to_the_same_settings(tmp_path):
    cfg = HealConfig(steps=12, minutes=2.5, lr=3e-4, rank=4, alpha=8, data="c4", samples=16, block_len=64,
                     distill=0.25, seed=3, checkpoint_every=5, holdout="wikitext2#lines=0:10%", holdout_samples=8,
                     holdout_every=7)
    command = heal_command(tmp_path / "a pruned", tmp_path / "out", cfg, overwrite=True)
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert HealConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(HealConfig)}) == cfg
    assert (args.dir, args.out, args.overwrite, args.restart) == (str(tmp_path / "a pruned"), str(tmp_path / "out"),
                                                                  True, False)


def test_the_cli_writes_why_it_failed_to_its_events_file(tmp_path):
    events = tmp_path / "heal" / "events.jsonl"
    done = run_cli("heal", str(tmp_path), "--out", str(tmp_path / "out"), "--events", str(events))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (error,) = [json.loads(line) for line in events.read_text().splitlines()]
    assert error["type"] == "error" and "is not a GRASPrune checkpoint" in error["message"]
    assert read_progress(events).error == error["message"]


def test_a_heal_started_on_the_page_shows_its_live_loss_stops_resumes_and_finishes(runs_dir, pruned):  # noqa: F811
    at = app()
    assert errors(at) == []
    at.radio(key="heal_source_kind").set_value("path").run()
    at.text_input(key="heal_path").set_value(str(pruned))
    for key, value in (("heal_steps", 100_000), ("heal_samples", 4), ("heal_block_len", 32),
                       ("heal_checkpoint_every", 1000), ("heal_minutes", 0.08), ("heal_lr", 1e-3)):
        at.number_input(key=key).set_value(value)
    at.run()
    out = runs_dir / "healed" / "pruned-healed"  # a checkpoint outside the runs folder heals into it
    command = next(c.value for c in at.code if c.value.startswith("grasprune heal"))
    assert command.startswith(f"grasprune heal {pruned} --out {out} --steps 100000 --minutes 0.08 --lr 0.001")
    at.button(key="heal_start").click().run()
    assert errors(at) == []
    job_id = at.query_params["heal"]
    job_id = job_id[0] if isinstance(job_id, list) else job_id
    job = heal_job_in_root(job_id, runs_dir)
    assert job.command() == command and list_heal_jobs(runs_dir) == [job]

    at = poll(at, lambda at: at.get("plotly_chart"), "the live loss curve")
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Loss"]) > 0 and metrics["Step"] != "0 / 100,000"
    other = app()  # a second tab (no ?heal=) shows the running job
    assert other.query_params["heal"] in (job_id, [job_id]) and f"Heal {job_id}" in [h.value for h in other.subheader]

    at.button(key=f"heal-stop-{job_id}").click().run()
    registry = heal_jobs.registry()
    at = poll(at, lambda at: not registry.alive(job), "the stop")
    at.run()
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("Stopped at step") for w in warnings), warnings
    stopped_at = read_progress(job.events_path).spans["healing"].done
    assert (state_folder(out) / "state.json").is_file() and not out.exists()

    at.button(key=f"heal-resume-{job_id}").click().run()
    assert errors(at) == []
    at = poll(at, lambda at: not registry.alive(job) and registry.state(job, read_progress(job.events_path))
              == "completed", "the end of the heal")
    at.run()
    assert errors(at) == [] and [s.value for s in at.success] == [f"Healed: {out}"]
    report = json.loads((out / "grasprune.json").read_text())["heal"]
    progress = read_progress(job.events_path)
    assert report["steps"] > stopped_at and progress.attempts == 2
    assert [s for s, _ in progress.loss["healing"]] == list(range(1, report["steps"] + 1))  # one curve
    assert report["last_losses"][-1] == pytest.approx(progress.loss["healing"][-1][1], abs=1e-5)
    assert progress.best is not None and progress.best[0] == report["holdout"]["best_step"] == report["merged_step"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics[f"Best held-out loss (step {report['holdout']['best_step']:,})"] == f"{report['holdout']['best_loss']:.4f}"
    assert metrics["Training time"] == duration(report["elapsed_s"])  # the same figure as "Trained N steps in ..."
    assert any(merged_text(report) in m.value for m in at.markdown)
    assert not state_folder(out).exists()
    assert any(c.value.startswith(f"grasprune ppl --model {out}") for c in at.code)
    model, tokenizer = load_pruned(out)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in load_pruned(pruned)[0].parameters())
    # measured once written, at the pruned checkpoint's own protocol: a heal has numbers like a run
    (metric,) = json.loads((out / "grasprune.json").read_text())["metrics"].values()
    source = json.loads((pruned / "grasprune.json").read_text())["config"]
    assert (metric["dataset"], metric["seqlen"], metric["windows"]) == ("wikitext2", source["eval_seqlen"],
                                                                        source["eval_windows"])
    from grasprune.evaluation.perplexity import perplexity

    assert metric["ppl"] == pytest.approx(perplexity(model, tokenizer, "wikitext2", metric["seqlen"],
                                                     metric["windows"]).ppl, rel=1e-5)


def test_a_completed_run_is_offered_and_heals_beside_its_checkpoint(runs_dir, pruned):  # noqa: F811
    (prune_run,) = (pruned.parent / "runs").iterdir()  # the fixture's run, its checkpoint moved into it
    shutil.copytree(prune_run, runs_dir / prune_run.name)
    shutil.copytree(pruned, runs_dir / prune_run.name / "checkpoint")
    (runs_dir / prune_run.name / "run.json").write_text(json.dumps({"out": None}))
    at = app()
    assert errors(at) == [] and at.selectbox(key="heal_run").value == prune_run.name
    command = next(c.value for c in at.code if c.value.startswith("grasprune heal"))
    checkpoint = runs_dir / prune_run.name / "checkpoint"
    assert command.startswith(f"grasprune heal {checkpoint} --out {checkpoint}-healed --steps 600")


def test_bad_input_is_one_line_and_starts_nothing(runs_dir, pruned, tmp_path_factory):  # noqa: F811
    outside = tmp_path_factory.mktemp("outside-the-runs-folder")
    at = app()
    at.button(key="heal_start").click().run()
    assert errors(at) == ["choose a pruned checkpoint: a completed run, or the path of a checkpoint folder"]
    at.radio(key="heal_source_kind").set_value("path").run()
    (runs_dir / "taken").mkdir(parents=True)
    cases = [
        ({"heal_path": str(outside)}, "is not a GRASPrune checkpoint"),
        ({"heal_path": str(pruned), "heal_out": str(runs_dir / "taken")}, "exists: pass --overwrite"),
        ({"heal_path": str(pruned), "heal_out": str(outside / "elsewhere")}, "is outside the runs folder"),
        ({"heal_path": str(pruned), "heal_out": str(pruned)}, "another folder than the checkpoint"),
        ({"heal_path": str(pruned), "heal_out": "", "heal_data": str(outside / "missing.txt")}, "missing.txt"),
        # replacing: only an earlier healed checkpoint, never a run folder or the runs folder
        ({"heal_data": "wikitext2", "heal_out": str(runs_dir / "taken"), "heal_overwrite": True},
         "exists and is no healed checkpoint"),
        ({"heal_out": str(runs_dir), "heal_overwrite": True}, "is the runs folder itself"),
    ]
    for inputs, message in cases:
        for key, value in inputs.items():
            widget = at.checkbox(key=key) if isinstance(value, bool) else at.text_input(key=key)
            widget.set_value(value)
        at.run()
        at.button(key="heal_start").click().run()
        shown = errors(at)
        assert len(shown) == 1 and message in shown[0] and "\n" not in shown[0], (inputs, shown)
    at.query_params["heal"] = "../../etc"
    at.run()
    assert any(w.value.endswith("showing no heal") for w in at.warning)
    assert list_heal_jobs(runs_dir) == [] and not (runs_dir / "healed").exists()
    assert [p.name for p in runs_dir.iterdir()] == ["taken"]


def test_the_heal_page_lists_earlier_heals_and_opens_one(runs_dir, tmp_path):  # noqa: F811
    job = create_heal_job(runs_dir, tmp_path / "pruned", runs_dir / "healed", HealConfig())
    at = app()
    assert errors(at) == []
    assert at.selectbox(key="heal_open_choice").value == job.id
    at.button(key="heal_open").click().run()
    assert at.query_params["heal"] in (job.id, [job.id])
