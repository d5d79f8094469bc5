"""The Results page draws each study from its summary.json, with its command, and says which are missing."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import kvcache, robustness, study_report
from grasprune.config import PruneConfig
from studio.results_view import (
    heal_figure,
    heal_rows,
    measured_spread,
    robustness_rows,
    study_figure,
    study_rows,
    summaries,
)

APP = str(REPO / "app.py")
QUALITY = REPO / "bench" / "results" / "quality.json"  # real measured entries: the study's input format
HEAL = sorted((REPO / "bench" / "results").glob("heal-*/heal.json"))


def keep_entries() -> list[dict]:
    """The committed quality grid's GRASPrune (guided), taylor +scales and dense entries."""
    entries = json.loads(QUALITY.read_text())["entries"]
    return [e for e in entries if e["label"] in ("dense", "grasprune (guided)", "taylor +scales")]


def kv_results() -> dict:
    rows = []
    for seed, (kv, speed) in enumerate([(1.0, 30.0), (1.2, 32.0)]):
        for context in (512, 2048):
            rows.append({"name": f"s{seed}", "method": "grasprune", "variant": "guided", "keep_ratio": 0.5,
                         "seed": seed, "context": context, "kv_bytes": int(kv * context * 1024),
                         "decode_tokens_per_s": speed, "decode_speedup": 1.4, "prefill_s": 1.0})
    rows += [{"name": "dense", "method": "dense", "keep_ratio": 1.0, "seed": None, "context": c,
              "kv_bytes": 2 * c * 1024, "decode_tokens_per_s": 22.0, "decode_speedup": 1.0, "prefill_s": 2.0}
             for c in (512, 2048)]
    return {"setting": {"model": "smollm2-135m", "threads": 2}, "rows": rows}


def results(tmp_path: Path, with_kv: bool = True) -> Path:
    folder = tmp_path / "results"
    study_report.write_study("keep", keep_entries(), folder / "study-keep")
    if with_kv:
        (folder / "study-kvcache").mkdir(parents=True)
        kvcache.write_reports(kv_results(), folder / "study-kvcache")
    for path in HEAL:
        shutil.copytree(path.parent, folder / path.parent.name)
    return folder


def test_the_views_read_what_the_studies_wrote(tmp_path):
    folder = results(tmp_path)
    found = summaries(folder)
    assert set(found) == {"keep", "kvcache"}
    keep = found["keep"]
    figure = study_figure(keep)
    names = {trace.name for trace in figure.data}
    assert {"grasprune (guided)", "taylor +scales", "dense"} <= names
    ours = next(t for t in figure.data if t.name == "grasprune (guided)" and t.showlegend)
    measured = sorted((e["params"]["total_after"] / 1e6, e["metrics"]["wikitext2"])
                      for e in keep_entries() if e["label"] == "grasprune (guided)")
    assert list(zip(ours.x, ours.y, strict=True)) == measured
    kv = study_figure(found["kvcache"])
    pruned = next(t for t in kv.data if t.name.startswith("grasprune") and t.showlegend)
    assert list(pruned.y) == pytest.approx([1.1 * 512 * 1024 / 2**20, 1.1 * 2048 * 1024 / 2**20], rel=1e-5)
    assert list(pruned.error_y.array) == pytest.approx([0.1 * 512 * 1024 / 2**20, 0.1 * 2048 * 1024 / 2**20], rel=1e-4)
    rows = study_rows(found["kvcache"])
    assert {r["seeds"] for r in rows if r["group"] != "dense"} == {2}
    if HEAL:
        curves = heal_rows(folder)
        assert curves and len(heal_figure(curves).data) == len(curves)


def test_the_results_page_shows_each_study_its_command_and_the_missing_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("GRASPRUNE_RESULTS", str(results(tmp_path, with_kv=False)))
    monkeypatch.setenv("GRASPRUNE_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(str(REPO / "app_pages" / "results.py"))
    at.run()
    assert not at.exception, at.exception
    assert next(s.value for s in at.subheader).startswith("Keep ratio 0.9")
    codes = " ".join(c.value for c in at.code)
    assert "python -m bench.study keep" in codes and "python -m bench.study kvcache" in codes
    missing = " ".join(i.value for i in at.info)
    assert "study-calibration/summary.json" in missing and "study-kvcache/summary.json" in missing
    assert "robustness/summary.json" in missing and "python -m bench.robustness grid" in codes
    assert "study-keep" not in missing
    table = at.dataframe[0].value
    assert set(table["group"]) == {"dense", "grasprune (guided)", "taylor +scales"}


def test_a_run_page_states_the_default_prunes_measured_spread_at_its_keep_ratio(tmp_path):
    points = [{"settings": {"tag": "default", "model": "smollm2-135m", "keep_ratio": 0.5, "seed": seed, "threads": threads, "dtype": "bf16"},
               "ppl": ppl, "wall_s": 100.0, "mask_bits": "c0", "setting": {"cpu": "AMD EPYC"}}
              for (seed, threads), ppl in zip([(0, 1), (0, 2), (1, 1), (1, 2)], [120.0, 120.0, 130.0, 130.0],
                                             strict=True)]
    (tmp_path / "robustness").mkdir()
    (tmp_path / "robustness" / "summary.json").write_text(json.dumps(robustness.summarise(points)))
    (row,) = robustness_rows(tmp_path)
    assert (row["mean"], row["min"], row["max"], row["runs"], row["threads"]) == (125.0, 120.0, 130.0, 4, "1, 2")
    line = measured_spread(PruneConfig(keep_ratio=0.5), tmp_path)
    assert "125.00 on average, 120.00–130.00 over 4 runs (seeds 0, 1 × threads 1, 2" in line
    assert measured_spread(PruneConfig(keep_ratio=0.7), tmp_path) is None  # not measured at this ratio
    assert measured_spread(PruneConfig(model="other/model", keep_ratio=0.5), tmp_path) is None
