"""The live view's inputs: the event log read incrementally by byte offset, and a timeline whose per-step
curves stay bounded however long the run (the server's memory must not grow with a run's age)."""

from grasprune.events import EventLog, read_new_events
from grasprune.runs.timeline import HISTORY_POINTS, Timeline, timeline_of


def step(n: int, loss: float | None = None, phase: str = "gate_training") -> dict:
    return {"type": "step", "phase": phase, "step": n, "total": 10**6, "loss": float(n) if loss is None else loss,
            "churn": n % 3, "ffn_kept": [n, 1], "kv_kept": [1, 1]}


def test_the_reader_takes_complete_lines_only_and_skips_a_corrupt_one_once(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.emit("step", step=1)
    with open(path, "a") as handle:
        handle.write("not json\n")
    log.emit("step", step=2)
    with open(path, "a") as handle:
        handle.write('{"type": "step", "st')  # being written
    events, offset = read_new_events(path, 0)
    assert [e["step"] for e in events] == [1, 2]
    assert offset == len(path.read_bytes()) - len('{"type": "step", "st')
    with open(path, "a") as handle:
        handle.write('ep": 3}\n')  # the line is finished
    events, offset = read_new_events(path, offset)
    assert [e["step"] for e in events] == [3] and offset == path.stat().st_size
    assert read_new_events(path, offset) == ([], offset)
    assert read_new_events(tmp_path / "missing.jsonl", 7) == ([], 7)


def test_incremental_reading_builds_the_same_timeline_as_one_read(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    incremental, offset = Timeline(), 0
    for n in range(1, 40):
        log.emit(**step(n))
        if n % 7 == 0:
            events, offset = read_new_events(path, offset)
            incremental.extend(events)
    events, offset = read_new_events(path, offset)
    incremental.extend(events)
    whole = timeline_of(read_new_events(path)[0])
    assert incremental.loss == whole.loss and incremental.kept_history == whole.kept_history
    assert incremental.step == whole.step == 39


def test_the_timeline_keeps_the_latest_placement_for_the_placement_panel():
    first = {"type": "placement", "mode": "single", "devices": [{"device": "cpu", "peak_bytes": None}]}
    after = {"type": "placement", "mode": "single", "devices": [{"device": "cpu", "peak_bytes": 123}]}
    assert timeline_of([]).placement is None
    assert timeline_of([first, step(1), after, step(2)]).placement == after


def test_curves_stay_bounded_and_span_the_whole_run():
    tl = Timeline()
    steps = 10 * HISTORY_POINTS
    for n in range(1, steps + 1):
        tl.apply(step(n))
    for series in (tl.loss["gate_training"], tl.churn, tl.kept_history):
        assert len(series) <= HISTORY_POINTS
        assert series[0][0] == 1 and series[-1][0] == steps  # first and last step kept
        points = [p[0] for p in series]
        assert points == sorted(points) and len(set(points)) == len(points)
    assert tl.ffn_kept == [steps, 1] and tl.step == steps


def test_a_resumed_run_replaces_replayed_steps_after_thinning():
    tl = Timeline()
    for n in range(1, 3 * HISTORY_POINTS):
        tl.apply(step(n))
    resume_from = 3 * HISTORY_POINTS - 100
    for n in range(resume_from, resume_from + 10):  # a resumed run replays the steps after its checkpoint
        tl.apply(step(n, loss=-1.0))
    series = tl.loss["gate_training"]
    assert series[-1] == (resume_from + 9, -1.0)
    assert all(loss == -1.0 for s, loss in series if s >= resume_from)
    assert [s for s, _ in series] == sorted({s for s, _ in series})


def test_the_importance_pass_has_its_own_progress_and_each_phase_its_span():
    events = [{"type": "phase", "time": 0.0, "phase": "loading"},
              {"type": "phase", "time": 3.0, "phase": "importance", "total": 4},
              {"type": "progress", "time": 4.0, "phase": "importance", "done": 1, "total": 4},
              {"type": "progress", "time": 5.0, "phase": "importance", "done": 2, "total": 4}]
    tl = timeline_of(events)
    assert (tl.phase_label, tl.fraction) == ("importance scoring", 0.5)
    assert tl.spans["loading"].duration == 3.0 and tl.spans["loading"].completed
    assert tl.spans["importance"].rate(min_points=2) == 1.0 and tl.spans["importance"].rate() is None
    tl.extend([{"type": "phase", "time": 9.0, "phase": "gate_training", "total": 8}])
    assert tl.spans["importance"].duration == 6.0 and tl.fraction == 0.0
