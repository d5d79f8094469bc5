"""Load on the studio in a real browser: three sessions start runs at once, and the server's memory
under live-view polling.

- Three browser sessions fill the Prune form and press Start within a second: the runs queue, one
  job at a time on the device, all three complete, and every event log is whole (each line parses,
  no line of another run, steps in order).
- Two sessions watch a running job's live view (re-rendered every second) for about a minute: the
  server's resident memory after the warm-up stays flat. ``bench/memory_soak.py`` runs the same
  measurement for an hour.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time

import pytest
from test_browser import ensure_chromium, fill, settle

from bench.memory_soak import CHROMIUM, CHROMIUM_ARGS, measure, serve_studio
from grasprune.config import PruneConfig
from grasprune.events import EventLog
from grasprune.runs.store import create_run, run_in_root

pytestmark = pytest.mark.browser
PHASE_ORDER = ("loading", "importance", "gate_training", "scale_calibration", "export", "evaluation")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The studio on a free port with its own runs folder (one server for the module's tests): its URL,
    runs folder and process."""
    folder = tmp_path_factory.mktemp("load")
    with serve_studio(folder / "runs", folder / "streamlit.log") as (url, proc):
        yield url, folder / "runs", proc


def browser_of(playwright):
    ensure_chromium()
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def wait_for_text(page, text: str, timeout: float, server_log) -> None:
    """Wait for ``text`` on ``page``; on a timeout, fail with what the page shows instead and the end of
    the server's log."""
    try:
        page.get_by_text(text).wait_for(timeout=timeout)
    except Exception as err:  # playwright's TimeoutError: say what the page showed instead
        state = page.locator("[data-testid='stApp']").get_attribute("data-test-script-state", timeout=5_000)
        shown = page.locator("[data-testid='stMain']").inner_text(timeout=5_000)[:1500]
        log = server_log.read_text(errors="replace")[-3000:] if server_log.is_file() else "(no server log)"
        raise AssertionError(f"{text!r} not shown on {page.url} (script {state}):\n{shown}\n"
                             f"--- server log ---\n{log}") from err


def check_event_log(run) -> None:
    """Every line is one whole JSON event of this run, in order."""
    raw = run.events_path.read_bytes()
    assert raw.endswith(b"\n")
    events = [json.loads(line) for line in raw.split(b"\n")[:-1]]  # a torn or mixed line would not parse
    assert events == run.events()
    assert events[0]["type"] == "phase" and events[0]["phase"] == "loading"
    assert events[0]["config"] == run.config().resolved().to_dict()  # this run's own log
    assert events[-1]["type"] == "done"
    times = [e["time"] for e in events]
    assert times == sorted(times)
    phases = [e["phase"] for e in events if e["type"] == "phase"]
    assert phases == sorted(phases, key=PHASE_ORDER.index) and len(set(phases)) == len(phases)
    for phase in ("gate_training", "scale_calibration"):
        steps = [e for e in events if e["type"] == "step" and e["phase"] == phase]
        assert [e["step"] for e in steps] == list(range(1, steps[0]["total"] + 1)), phase


def test_three_sessions_starting_at_once_are_queued_one_job_at_a_time(server, tiny_model_dir):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make install-dev)")
    url, runs, _ = server
    with sync_api.sync_playwright() as p:
        browser = browser_of(p)
        pages = [browser.new_context(viewport={"width": 1400, "height": 1200}).new_page() for _ in range(3)]
        for page in pages:
            page.set_default_timeout(60_000)
            page.goto(f"{url}/prune")
            settle(page, 120_000)
            fill(page, "prune_model", tiny_model_dir)
            for key, value in (("prune_samples", 4), ("prune_block_len", 32), ("prune_rescale_samples", 2)):
                fill(page, key, value)
            page.get_by_text("Evaluation and advanced settings").click()
            fill(page, "prune_eval_seqlen", 64)
            fill(page, "prune_eval_windows", 1)
        for page in pages:  # the three Start presses within a second
            page.locator(".st-key-prune_start button").click()
        run_ids = []
        for page in pages:
            page.wait_for_url(re.compile(r"[?&]run="), timeout=60_000)
            run_ids.append(re.search(r"run=([0-9a-f-]+)", page.url).group(1))
        assert len(set(run_ids)) == 3
        found = [run_in_root(run_id, runs) for run_id in run_ids]

        # while they run: never two jobs at once, and the waiting sessions say they are queued
        queued_seen, most_running = False, 0
        deadline = time.monotonic() + 900
        while not all(run.status().get("status") == "completed" for run in found):
            assert time.monotonic() < deadline, [run.status() for run in found]
            states = [run.status().get("status") for run in found]
            assert "failed" not in states, [(run.folder / "job.log").read_text()[-2000:] for run in found]
            most_running = max(most_running, states.count("running"))
            queued_seen = queued_seen or any(page.get_by_text("Queued: position").count() for page in pages)
            time.sleep(0.3)
        assert most_running == 1 and queued_seen
        for page, run_id in zip(pages, run_ids, strict=True):  # each session followed its own run to the end
            wait_for_text(page, "Completed.", 60_000, runs.parent / "streamlit.log")
            assert page.get_by_text(f"Run {run_id}").count() == 1
            assert page.locator("[data-testid='stException']").count() == 0
        browser.close()

    spans = sorted((run.events()[0]["time"], run.events()[-1]["time"]) for run in found)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start > end  # one job per device: the next one started after the previous one ended
    for run in found:
        check_event_log(run)
        assert (run.output_dir() / "grasprune.json").is_file()


class FakeJob:
    """A run that the studio sees running (status ``running``, this process's live pid) and whose event
    log grows as a gate-training job's does: a step every half second with its loss and kept counts.
    Lighter than a training process; the server reads the same files either way."""

    def __init__(self, runs, model: str):
        self.run = create_run(PruneConfig(model=model, keep_ratio=0.5, device="cpu"), runs)
        self.log = EventLog(self.run.events_path)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.work, daemon=True)

    def __enter__(self):
        layers = [{"ffn_channels": 96, "kv_groups": 4, "q_heads": 8}] * 3
        self.run.set_status("running")
        self.log.emit("phase", phase="loading", config=self.run.config().to_dict())
        self.log.emit("model", total_params=6_420_928, prunable_params=129_024, budget=64_512, layers=layers,
                      group_size=2)
        self.log.emit("phase", phase="gate_training", total=1_000_000)
        self.thread.start()
        return self

    def work(self) -> None:
        step = 0
        while not self.done.wait(0.5):
            step += 1
            self.log.emit("step", phase="gate_training", step=step, total=1_000_000, loss=round(3 + 1 / step, 5),
                          eta=1e5, churn=step % 7, ffn_kept=[48 + step % 5, 50, 52], kv_kept=[2, 3, 2])

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.run.set_status("stopped", message="the load test ended")


@pytest.mark.heavy  # 1.5 min; `python -m bench.memory_soak` runs the same measurement for an hour
def test_server_memory_stays_flat_under_live_view_polling(server, tiny_model_dir):
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make install-dev)")
    ensure_chromium()
    url, runs, proc = server
    with FakeJob(runs, str(tiny_model_dir)) as job:
        result = measure(url, job.run.id, proc.pid, duration_s=75, warmup_s=15, every_s=3, tabs=2)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print("server memory under polling:", json.dumps(summary))
    assert result["page_exceptions"] == 0
    assert result["distinct_progress_texts"] >= 10, summary  # the live view did update, every few seconds
    assert result["growth_mb"] < 5 and result["range_mb"] < 10, result
