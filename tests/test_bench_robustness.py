"""bench.robustness: the default prune over seeds and thread counts, its report, and the trajectory trace."""

import json

import pytest
import torch

from bench import robustness

pytestmark = pytest.mark.slow

TINY = ["--set", "calib_samples=2", "--set", "block_len=32", "--set", "rescale_samples=2", "--set", "epochs=2",
        "--windows", "2", "--seqlen", "32"]


def test_the_grid_measures_each_seed_and_thread_count_once_and_reports_the_spread(tiny_model_dir, tmp_path):
    threads = torch.get_num_threads()
    argv = ["grid", "--model", str(tiny_model_dir), "--keep-ratios", "0.6", "--seeds", "0,1", "--threads", "1,2",
            "--out", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"), *TINY]
    try:
        robustness.main(argv)
        robustness.main(argv)  # everything measured: nothing runs again
    finally:
        torch.set_num_threads(threads)
    entries = json.loads((tmp_path / "results" / "robustness.json").read_text())["entries"]
    assert sorted((e["settings"]["seed"], e["settings"]["threads"]) for e in entries) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(e["settings"]["second_moment"] == "unit" for e in entries)  # the resolved defaults are the identity
    (row,) = json.loads((tmp_path / "results" / "summary.json").read_text())
    ppl = [e["ppl"] for e in entries]
    assert row["n"] == 4 and row["ratio"] == pytest.approx(max(ppl) / min(ppl))
    assert row["mean"] == pytest.approx(sum(ppl) / 4) and 0 < row["min_overlap"] <= 1
    table = (tmp_path / "results" / "robustness.md").read_text()
    assert f"| default | {tiny_model_dir} | 0.6 | 4 | {row['mean']:,.2f} | {row['min']:,.2f} |" in table


def test_a_trace_records_every_gate_step_and_compares_with_itself(tiny_model_dir, tmp_path, capsys):
    trace = tmp_path / "trace.safetensors"
    robustness.main(["trace", "--model", str(tiny_model_dir), "--keep-ratio", "0.6", "--threads", "1",
                     "--out", str(trace), "--runs-dir", str(tmp_path / "runs"), *TINY])
    nudged = tmp_path / "nudged.safetensors"
    robustness.main(["trace", "--model", str(tiny_model_dir), "--keep-ratio", "0.6", "--threads", "1",
                     "--perturb", "1.0", "--out", str(nudged), "--runs-dir", str(tmp_path / "runs"), *TINY])
    same = robustness.robustness_trace.compare(trace, trace)
    assert len(same["rows"]) == 4 and same["start"] is None  # 2 blocks x 2 epochs
    assert all(r["mask_diff"] == 0 for r in same["rows"])
    apart = robustness.robustness_trace.compare(trace, nudged)
    assert apart["start"] is not None and apart["rows"][0]["score_diff_max"] > 0
    assert "first differing step" in capsys.readouterr().out


def test_a_mask_is_kept_as_one_bit_per_unit_in_layout_order():
    report = {"layers": [{"ffn_channels_before": 3, "kv_groups_before": 2}, {"ffn_channels_before": 2, "kv_groups_before": 1}],
              "mask": {"ffn": [[0, 2], [1]], "kv": [[1], [0]]}}
    bits = robustness.mask_bits(report)
    assert robustness.kept_units(bits) == {0, 2, 4, 6, 7}
    assert robustness.min_overlap([{0, 2, 4, 6}, {0, 2, 4, 7}, {0, 2, 4, 6}]) == 0.75
