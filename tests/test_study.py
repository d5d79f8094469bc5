"""The studies (bench.study, bench.kvcache, bench.study_report) end to end on a tiny model: every point has
its seeds, its mean and spread, and the plots and tables are drawn (the real runs are not tests)."""

import json
import sys

import pytest

from conftest import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import kvcache, study, study_report

TINY = ["--calib-samples", "2", "--block-len", "16", "--epochs", "1", "--rescale-samples", "2",
        "--seqlen", "32", "--limit-windows", "2"]


@pytest.fixture(scope="module")
def keep_study(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study-keep")
    argv = ["keep", "--model", str(tiny_model_dir), "--seeds", "0,1", "--keep-ratios", "0.8,0.5",
            "--baselines", "magnitude", "--out", str(tmp / "results"), "--runs-dir", str(tmp / "runs"), *TINY]
    assert study.main(argv) == 0
    return tmp


def test_the_keep_sweep_measures_grasprune_per_seed_and_the_baselines_once(keep_study):
    summary = json.loads((keep_study / "results" / "summary.json").read_text())
    points = {(p["group"], p["x"]): p for p in summary["points"]}
    assert set(points) == {("dense", 1.0), ("grasprune (guided)", 0.8), ("grasprune (guided)", 0.5),
                           ("magnitude +scales", 0.8), ("magnitude +scales", 0.5)}
    ours = points[("grasprune (guided)", 0.5)]
    assert ours["seeds"] == [0, 1]
    ppl = ours["metrics"]["wikitext2"]
    entries = json.loads((keep_study / "results" / "quality.json").read_text())["entries"]
    measured = [e["metrics"]["wikitext2"] for e in entries
                if e["settings"]["method"] == "grasprune" and e["settings"]["keep_ratio"] == 0.5]
    assert ppl["n"] == 2 and ppl["min"] == min(measured) and ppl["max"] == max(measured)
    assert ppl["mean"] == pytest.approx(sum(measured) / 2)
    assert points[("magnitude +scales", 0.5)]["seeds"] == [0]
    assert points[("grasprune (guided)", 0.5)]["params_after"]["mean"] < points[("grasprune (guided)", 0.8)]["params_after"]["mean"]
    table = (keep_study / "results" / "study.md").read_text()
    assert "python -m bench.study keep" in table and "| grasprune (guided) | 0.5 | 2 |" in table
    assert (keep_study / "results" / "keep.png").stat().st_size > 10_000


def test_the_keep_sweep_keeps_only_the_keep_half_checkpoints_one_per_seed(keep_study):
    kept = sorted(p.name for p in (keep_study / "runs" / "checkpoints").iterdir())
    assert kept == ["grasprune-keep0.5-rescale1-guided", "grasprune-keep0.5-rescale1-guided-seed1"]


def test_kv_cache_study_measures_bytes_and_decode_speed_against_dense(keep_study, tiny_model_dir, tmp_path):
    checkpoints = sorted((keep_study / "runs" / "checkpoints").iterdir())
    argv = ["--model", str(tiny_model_dir), "--checkpoints", *map(str, checkpoints), "--contexts", "8,24",
            "--steps", "2", "--rounds", "2", "--out", str(tmp_path)]
    assert kvcache.main(argv) == 0
    rows = json.loads((tmp_path / "kvcache.json").read_text())["rows"]
    assert len(rows) == 3 * 2
    for row in rows:
        assert row["kv_bytes"] == row["kv_bytes_expected"] > 0 and len(row["decode_s"]) == 2
    dense = {r["context"]: r for r in rows if r["method"] == "dense"}
    for row in (r for r in rows if r["method"] != "dense"):
        assert row["kv_bytes"] < dense[row["context"]]["kv_bytes"]
    assert dense[24]["kv_bytes"] == 3 * dense[8]["kv_bytes"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    pruned = [p for p in summary["points"] if p["group"] != "dense"]
    assert [p["x"] for p in pruned] == [8, 24] and all(p["seeds"] == [0, 1] for p in pruned)
    assert (tmp_path / "kvcache.png").stat().st_size > 10_000


def test_the_calibration_study_crosses_sizes_and_domains_and_evaluates_on_both(tiny_model_dir, tmp_path):
    argv = ["calibration", "--model", str(tiny_model_dir), "--seeds", "0", "--samples", "2,4",
            "--out", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"), *TINY]
    assert study.main(argv) == 0
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    points = {(p["group"], p["x"]): p for p in summary["points"]}
    assert set(points) == {("wikitext2", 2), ("wikitext2", 4), ("c4", 2), ("c4", 4)}
    assert all(set(p["metrics"]) == {"wikitext2", "c4"} for p in points.values())
    entries = json.loads((tmp_path / "results" / "quality.json").read_text())["entries"]
    c4 = [e["settings"] for e in entries if e["settings"].get("calib_data", "").startswith("c4")]
    assert {s["calib_data"] for s in c4} == {study.CALIBRATION["c4"][0]}
    assert {s["rescale_data"] for s in c4} == {study.CALIBRATION["c4"][1]}
    assert not (tmp_path / "runs" / "checkpoints").exists() or not any((tmp_path / "runs" / "checkpoints").iterdir())
    assert (tmp_path / "results" / "calibration.png").stat().st_size > 10_000


def test_an_unknown_calibration_domain_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit):
        study.parse_args(["calibration", "--domains", "wikitext2,pile"])
    assert "unknown calibration domain pile" in capsys.readouterr().err


def test_spread_is_the_mean_min_max_and_population_deviation():
    assert study_report.spread([1.0, 3.0]) == {"mean": 2.0, "min": 1.0, "max": 3.0, "std": 1.0, "n": 2}
    assert study_report.spread([5.0])["std"] == 0.0
