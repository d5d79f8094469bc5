"""A run's phases and its expected durations: the work per phase, the rates measured on earlier runs'
event logs, and the whole-run ETA on constructed event logs (numbers, computed by hand)."""

from __future__ import annotations

import json

import pytest

from grasprune.config import PruneConfig
from grasprune.runs.estimate import (
    BUILTIN_RATES,
    ModelSize,
    Rates,
    correction,
    expected_durations,
    measured_rates,
    phase_parts,
    phase_work,
    rates_for,
    whole_run_eta,
)
from grasprune.runs.store import create_run
from grasprune.runs.timeline import run_phases, timeline_of

SIZE = ModelSize(total_params=1000, prunable_params=800)
SMALL = {"device": "cpu", "calib_samples": 4, "block_len": 10, "epochs": 2, "rescale_samples": 2,
         "eval_windows": 3, "eval_seqlen": 20, "keep_ratio": 0.5}


def config(**changes) -> PruneConfig:
    return PruneConfig(**{**SMALL, **changes}).resolved()


def test_the_phases_follow_the_config_importance_included():
    all_phases = ["loading", "importance", "gate_training", "scale_calibration", "export", "evaluation"]
    assert run_phases(config()) == all_phases  # the default variant starts from wanda-sp's importance
    assert run_phases(config(variant="paper")) == [p for p in all_phases if p != "importance"]
    assert run_phases(config(method="taylor")) == [p for p in all_phases if p != "gate_training"]
    assert run_phases(config(variant="paper", rescale_epochs=0, eval_datasets=[])) == [
        "loading", "gate_training", "export"]


def test_work_counts_tokens_passes_and_parameters_per_phase():
    pruned = 1000 - 800 * 0.5  # the sliced student and the exported model: 600 parameters
    work = phase_work(config(eval_dense=False), SIZE)  # guided: wanda-sp start, distillation 0.5
    assert work == {
        "loading": 1000,
        "importance": 40 * 1 * 1000,  # 4 blocks of 10 tokens, one forward pass
        "gate_training": 40 * 2 * (3 + 1) * 1000,  # 2 epochs, forward + backward + the teacher's KL
        "scale_calibration": 20 * (3 * pruned + 1000),  # the student, and the dense teacher's forward
        "export": 1000,
        "evaluation": 60 * pruned,  # 3 windows of 20 tokens
    }
    paper = phase_work(config(variant="paper", eval_dense=True, eval_datasets=["wikitext2", "ptb"]), SIZE)
    assert "importance" not in paper
    assert paper["gate_training"] == 40 * 2 * 3 * 1000 and paper["scale_calibration"] == 20 * 3 * pruned
    assert paper["evaluation"] == 60 * (2 * pruned + 2 * 1000)  # each dataset on the pruned and dense model
    assert phase_work(config(method="taylor"), SIZE)["importance"] == 40 * 3 * 1000  # a backward pass too
    assert phase_work(config(method="magnitude"), SIZE)["importance"] == 0  # weights only
    assert phase_parts(config(eval_dense=True, eval_datasets=["wikitext2", "ptb"]))["evaluation"] == 4


def test_expected_durations_are_work_times_rate_with_built_in_rates_for_the_rest():
    rates = Rates({"gate_training": 0.001})
    expected = expected_durations(config(eval_dense=False), SIZE, rates)
    assert expected["gate_training"] == pytest.approx(320_000 * 0.001)
    assert expected["export"] == pytest.approx(1000 * BUILTIN_RATES["cpu"]["export"])
    assert list(expected) == run_phases(config())


def write_run(root, cfg: PruneConfig, phases: list[tuple[str, float]], end: float, status: str = "completed",
              device_config: PruneConfig | None = None, dense: list[bool] = ()):
    """A run folder whose event log has ``phases`` [(phase, start time)] and ends at ``end``."""
    run = create_run(cfg, root)
    with open(run.events_path, "w") as handle:
        for i, (phase, start) in enumerate(phases):
            fields = {"config": (device_config or cfg).to_dict()} if phase == "loading" else {}
            handle.write(log_line("phase", start, phase=phase, **fields))
            if i == 0:
                handle.write(log_line("model", start, total_params=SIZE.total_params,
                                      prunable_params=SIZE.prunable_params))
        handle.writelines(log_line("dense_metric", end, dataset="wikitext2", ppl=10.0, cached=cached)
                          for cached in dense)
        handle.write(log_line("done", end))
    run.set_status(status)
    return run


def log_line(kind: str, time: float, **fields) -> str:
    return json.dumps({"type": kind, "time": time, **fields}) + "\n"


def test_rates_are_measured_on_the_newest_completed_runs_of_the_same_device_kind(tmp_path):
    cfg = config(variant="paper", eval_dense=False)  # loading, gate training, scale calibration, export, evaluation
    work = phase_work(cfg, SIZE)
    # gate training: 10 s in the first run, 30 s in the second (over the same work: 20 s on average)
    write_run(tmp_path, cfg, [("loading", 0), ("gate_training", 2), ("scale_calibration", 12), ("export", 15),
                              ("evaluation", 16)], end=20)
    write_run(tmp_path, cfg, [("loading", 100), ("gate_training", 104), ("scale_calibration", 134),
                              ("export", 137), ("evaluation", 138)], end=142)
    # not counted: a failed run, a resumed one (two attempts) and a CUDA run
    write_run(tmp_path, cfg, [("loading", 0), ("gate_training", 1)], end=1000, status="failed")
    write_run(tmp_path, cfg, [("loading", 0), ("gate_training", 1), ("loading", 50), ("gate_training", 51)],
              end=2000)
    cuda = PruneConfig(**{**cfg.to_dict(), "device": "cuda"})
    write_run(tmp_path, cfg, [("loading", 0), ("gate_training", 1), ("export", 1000)], end=1001,
              device_config=cuda)
    rates = measured_rates(tmp_path, "cpu")
    assert rates.runs == 2
    assert rates.per_unit["gate_training"] == pytest.approx(40 / (2 * work["gate_training"]))
    assert rates.per_unit["loading"] == pytest.approx(6 / (2 * work["loading"]))
    assert rates.per_unit["evaluation"] == pytest.approx(8 / (2 * work["evaluation"]))
    assert "importance" not in rates.per_unit
    assert measured_rates(tmp_path, "cpu", newest=1).runs == 1
    assert measured_rates(tmp_path, "cuda:0").per_unit["export"] == pytest.approx(1 / work["export"])
    combined = rates_for(tmp_path, "cpu")  # measured where measured, built in elsewhere
    assert combined.per_unit["importance"] == BUILTIN_RATES["cpu"]["importance"]
    assert combined.per_unit["gate_training"] == rates.per_unit["gate_training"]


def test_a_dense_evaluation_from_the_cache_is_not_counted_as_work(tmp_path):
    cfg = config(variant="paper", eval_dense=True)
    write_run(tmp_path, cfg, [("loading", 0), ("gate_training", 1), ("scale_calibration", 2), ("export", 3),
                              ("evaluation", 4)], end=10, dense=[True])
    evaluation = phase_work(cfg, SIZE, dense_evaluations=0)["evaluation"]
    assert measured_rates(tmp_path, "cpu").per_unit["evaluation"] == pytest.approx(6 / evaluation)


EXPECTED = {"loading": 10.0, "gate_training": 100.0, "scale_calibration": 50.0, "export": 5.0}
PARTS = dict.fromkeys(EXPECTED, 1)


def events(*items) -> list[dict]:
    return [{"type": kind, "time": time, **fields} for kind, time, fields in items]


def test_before_the_start_the_eta_is_the_sum_of_the_predictions():
    assert whole_run_eta(timeline_of([]), EXPECTED, PARTS, now=0) == 165


def test_the_eta_uses_the_current_phase_rate_and_corrects_the_pending_phases():
    log = events(("phase", 0, {"phase": "loading"}), ("phase", 20, {"phase": "gate_training", "total": 50}),
                 *[("step", 20 + n, {"phase": "gate_training", "step": n, "total": 50, "loss": 1.0})
                   for n in range(1, 6)])
    tl = timeline_of(log)
    assert correction(tl, EXPECTED) == 2  # loading took 20 s for a predicted 10
    # 45 steps left at 1 step/s, then scale calibration and export at twice their predictions
    assert whole_run_eta(tl, EXPECTED, PARTS, now=25) == pytest.approx(45 + 2 * 55)
    assert whole_run_eta(tl, EXPECTED, PARTS, now=30) == pytest.approx(40 + 2 * 55)  # 5 s without a step


def test_before_a_few_steps_the_current_phase_counts_its_corrected_prediction():
    log = events(("phase", 0, {"phase": "loading"}), ("phase", 5, {"phase": "gate_training", "total": 50}),
                 ("step", 9, {"phase": "gate_training", "step": 1, "total": 50, "loss": 1.0}))
    tl = timeline_of(log)
    assert correction(tl, EXPECTED) == 0.5
    assert whole_run_eta(tl, EXPECTED, PARTS, now=15) == pytest.approx((0.5 * 100 - 10) + 0.5 * 55)


def test_the_evaluation_counts_the_datasets_it_has_not_reached():
    expected = {"loading": 10.0, "export": 5.0, "evaluation": 40.0}
    log = events(("phase", 0, {"phase": "loading"}), ("phase", 10, {"phase": "export"}),
                 ("phase", 15, {"phase": "evaluation"}),
                 *[("eval_progress", 15 + w, {"dataset": "wikitext2", "window": w, "total": 8}) for w in range(1, 5)])
    tl = timeline_of(log)
    # 4 windows left of the pruned model, 8 of the dense one, at 1 window/s
    assert whole_run_eta(tl, expected, {"evaluation": 2}, now=19) == pytest.approx(12)
    tl.extend(events(*[("eval_progress", 20 + w, {"dataset": "wikitext2", "window": w, "total": 8,
                                                 "label": "wikitext2 (dense model)"}) for w in range(1, 4)]))
    assert tl.spans["evaluation"].part == 1
    assert whole_run_eta(tl, expected, {"evaluation": 2}, now=23) == pytest.approx(5)


def test_a_finished_run_has_nothing_left_and_a_stopped_one_its_unfinished_phases():
    log = events(("phase", 0, {"phase": "loading"}), ("phase", 10, {"phase": "gate_training", "total": 50}),
                 ("stopped", 30, {"phase": "gate_training", "step": 20, "total": 50}))
    tl = timeline_of(log)
    assert tl.phase_state("gate_training", list(EXPECTED)) == "stopped"
    assert whole_run_eta(tl, EXPECTED, PARTS, now=40) == pytest.approx(155)  # loading matched its prediction
    tl.extend(events(("phase", 50, {"phase": "loading"})))  # resumed
    assert tl.attempts == 2 and tl.phase_state("gate_training", list(EXPECTED)) == "pending"
    tl.extend(events(("phase", 60, {"phase": "export"}), ("done", 65, {})))
    assert whole_run_eta(tl, EXPECTED, PARTS, now=70) == 0
    assert [tl.phase_state(p, list(EXPECTED)) for p in EXPECTED] == ["done", "skipped", "skipped", "done"]


def test_the_correction_stays_within_its_range():
    log = events(("phase", 0, {"phase": "loading"}), ("phase", 1000, {"phase": "gate_training", "total": 50}))
    assert correction(timeline_of(log), EXPECTED) == 5.0
