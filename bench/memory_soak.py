"""Server memory under live-view polling: does the studio's resident memory stay flat while browser
tabs watch a running job for a long time?

``python -m bench.memory_soak [--duration 3600] [--tabs 2]`` starts the studio (``streamlit run app.py``
with a runs folder of its own), starts a long prune job on a tiny random model (the studio sees it
running, so the live view re-renders every second), opens ``--tabs`` Chromium tabs on its live view
and samples the server's RSS every ``--every`` seconds. After ``--warmup`` seconds (imports, first
renders, caches) it fits a line to the samples and writes ``bench/results/memory_soak.json``: the
samples, the growth from the start to the end of the measured window, and the slope in MB per hour.

``tests/test_load.py`` runs the same measurement for about a minute in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
# a job that runs until it is stopped, at a few steps a second on one thread
SOAK_JOB = {"keep_ratio": 0.5, "calib_samples": 64, "block_len": 128, "epochs": 100_000, "rescale_samples": 2,
            "checkpoint_every": 64, "eval_datasets": [], "device": "cpu"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_studio(runs: Path, log_path: Path, timeout_s: float = 300) -> Iterator[tuple[str, subprocess.Popen]]:
    """``streamlit run app.py`` on a free port with ``runs`` as its runs folder, started as Streamlit's
    own e2e suite starts it; yields its URL and process (the server itself: its pid is the one to watch)."""
    port = free_port()
    env = {**os.environ, "GRASPRUNE_RUNS": str(runs), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
             str(port), "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("streamlit did not start:\n" + Path(log_path).read_text()[-3000:])
                time.sleep(0.5)
            yield url, proc
        finally:
            stop_group(proc, timeout_s=30)  # SIGTERM: the server stops its jobs on exit


def stop_group(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it if it is still there after ``timeout_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            continue


def rss_mb(pid: int) -> float:
    from grasprune.runs.processes import process_rss

    value = process_rss(pid)
    if value is None:
        raise RuntimeError(f"process {pid} is gone")
    return value / 2**20


@contextmanager
def running_job(model: str, runs: Path, log_path: Path, **overrides) -> Iterator[str]:
    """A prune run in ``runs`` whose process runs (niced, one thread) until the block ends; yields its id."""
    from grasprune.config import PruneConfig
    from grasprune.runs.store import create_run

    run = create_run(PruneConfig(model=model, **{**SOAK_JOB, **overrides}), runs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "grasprune", "prune", "--resume",
                                 str(run.folder), "--runs-dir", str(runs)], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not any(e["type"] == "step" for e in run.events()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the soak job did not start:\n" + Path(log_path).read_text()[-3000:])
                time.sleep(0.5)
            yield run.id
        finally:
            stop_group(proc, timeout_s=30)


def measure(url: str, run_id: str, server_pid: int, duration_s: float, warmup_s: float = 20, every_s: float = 5,
            tabs: int = 2, report: Callable[[str], None] | None = None) -> dict:
    """Keep ``tabs`` browser sessions on the live view of ``run_id`` for ``duration_s`` seconds, sampling
    the server's RSS every ``every_s`` seconds; the summary of the samples after ``warmup_s``."""
    from playwright.sync_api import sync_playwright

    samples: list[tuple[float, float]] = []
    progress: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pages = [browser.new_context(viewport={"width": 1400, "height": 1200}).new_page() for _ in range(tabs)]
            for page in pages:
                page.goto(f"{url}/?run={run_id}")
                page.locator("[data-testid='stProgress']").first.wait_for(timeout=120_000)
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < duration_s:
                samples.append((round(elapsed, 1), round(rss_mb(server_pid), 2)))
                progress.append(pages[0].locator("[data-testid='stProgress']").first.inner_text(timeout=30_000))
                if report:
                    report(f"{elapsed:7.0f} s  server RSS {samples[-1][1]:8.1f} MB  {progress[-1]}")
                time.sleep(max(0.0, every_s - (time.monotonic() - start - elapsed)))
            exceptions = sum(page.locator("[data-testid='stException']").count() for page in pages)
        finally:
            browser.close()
    return summarize(samples, warmup_s) | {"tabs": tabs, "distinct_progress_texts": len(set(progress)),
                                           "page_exceptions": exceptions}


def summarize(samples: list[tuple[float, float]], warmup_s: float) -> dict:
    """Growth over the measured window (medians of its first and last three samples) and the slope of a
    least-squares line, in MB per hour."""
    measured = [(t, mb) for t, mb in samples if t >= warmup_s]
    if len(measured) < 6:
        raise ValueError(f"too few samples after the warm-up: {len(measured)}")
    times, values = zip(*measured, strict=True)
    slope = statistics.linear_regression(times, values).slope
    return {
        "duration_s": samples[-1][0],
        "warmup_s": warmup_s,
        "measured_s": round(times[-1] - times[0], 1),
        "rss_start_mb": statistics.median(values[:3]),
        "rss_end_mb": statistics.median(values[-3:]),
        "growth_mb": round(statistics.median(values[-3:]) - statistics.median(values[:3]), 2),
        "range_mb": round(max(values) - min(values), 2),
        "slope_mb_per_hour": round(slope * 3600, 2),
        "samples": samples,
    }


def tiny_model(folder: Path) -> Path:
    """A tiny random Llama with the embedded model's tokenizer (no download)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from grasprune.method.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=16, max_position_embeddings=512)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_soak", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3600, help="seconds of polling (default 3600)")
    parser.add_argument("--warmup", type=float, default=60, help="seconds left out of the fit (default 60)")
    parser.add_argument("--every", type=float, default=10, help="seconds between samples (default 10)")
    parser.add_argument("--tabs", type=int, default=2, help="browser sessions on the live view (default 2)")
    parser.add_argument("--model", help="model of the job (default: a tiny random Llama built here)")
    parser.add_argument("--out", type=Path, default=RESULTS / "memory_soak.json")
    args = parser.parse_args(argv)
    # a plain SIGTERM would end this process without its cleanup and leave the studio and the job running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from grasprune.runs.store import run_in_root

    with tempfile.TemporaryDirectory(prefix="memory-soak-") as tmp:
        tmp = Path(tmp)
        model = args.model or str(tiny_model(tmp / "tiny-llama"))
        with serve_studio(tmp / "runs", tmp / "streamlit.log") as (url, server), \
                running_job(model, tmp / "runs", tmp / "job.log") as run_id:
            result = measure(url, run_id, server.pid, args.duration, args.warmup, args.every, args.tabs,
                             report=lambda line: print(line, flush=True))
            steps = max(e["step"] for e in run_in_root(run_id, tmp / "runs").events() if e["type"] == "step")
    result = {"what": "streamlit server RSS while browser tabs poll a running job's live view",
              "job": {"model": args.model or "tiny random Llama (3 layers, hidden 64)", **SOAK_JOB,
                      "gate_steps_done": steps},
              "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['measured_s']:.0f} s measured: growth {result['growth_mb']:+.1f} MB, slope "
          f"{result['slope_mb_per_hour']:+.1f} MB/h, range {result['range_mb']:.1f} MB -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
