"""The Explain page through AppTest on the in-process tiny GQA Llama: every number it shows is checked
against the engine driven here (the same lab, stepped at the same budget)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from grasprune.method.units import project
from studio import explain

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "explain.py")


@pytest.fixture
def reference() -> explain.Lab:
    return explain.open_lab("tiny-gqa")


def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def shown_moves(at: AppTest) -> tuple[str, str]:
    step = metrics(at)["Step"]
    lines = {m.value.split(":** ")[0]: m.value.split(":** ")[1] for m in at.markdown if ":** " in m.value}
    return lines[f"**Entered at step {step}"], lines[f"**Left at step {step}"]


def moves(layout, record) -> tuple[str, str]:
    names = [
        ", ".join(explain.unit_name(layout, u) for u in units) or "none"
        for units in (record.entered, record.left)
    ]
    return names[0], names[1]


def budget_line(at: AppTest) -> float:
    ranking = next(
        json.loads(c.proto.spec)
        for c in at.get("plotly_chart")
        if json.loads(c.proto.spec)["layout"]["title"]["text"].startswith("Ranking")
    )
    (line,) = [s for s in ranking["layout"]["shapes"] if s["type"] == "line"]
    assert line["x0"] == line["x1"]
    return line["x0"]


def test_the_budget_line_and_kept_counts_follow_the_slider(reference):
    at = page()
    layout = reference.layout
    for keep in (0.5, 0.73, 0.2):
        if keep != 0.5:
            at.slider(key="explain_keep").set_value(keep).run()
        budget = layout.budget(keep)
        mask = project(reference.stepper.probs(), layout, budget)
        shown = metrics(at)
        assert shown["Budget B (parameters)"] == f"{budget:,}"
        assert shown["Kept (parameters)"] == f"{layout.kept_params(mask):,}"
        assert shown["Units kept"] == f"{int(mask.sum())} of {layout.num_units}"
        assert budget_line(at) == budget
        table = at.table[0].value
        ffn, kv = layout.kept_counts(mask)
        assert list(table["FFN channels kept"]) == ffn and list(table["KV groups kept"]) == kv
        assert list(table["FFN channels"]) == [64] * 4 and list(table["KV groups"]) == [4] * 4


def test_step_ten_steps_and_play_show_the_engines_loss_and_moving_units(reference):
    at = page()
    at.slider(key="explain_keep").set_value(0.6).run()
    budget = reference.layout.budget(0.6)
    at.button(key="explain_step").click().run()
    record = reference.stepper.step(budget)
    shown = metrics(at)
    assert shown["Step"] == "1" and shown["Loss"] == f"{record.loss:.4f}"
    assert shown["Entered the mask"] == str(len(record.entered)) and shown["Left the mask"] == str(
        len(record.left)
    )
    assert shown_moves(at) == moves(reference.layout, record)
    assert metrics(at)["Units kept"] == f"{int(record.next_mask.sum())} of {reference.layout.num_units}"

    at.button(key="explain_step10").click().run()
    for _ in range(10):
        record = reference.stepper.step(budget)
    assert metrics(at)["Step"] == "11" and shown_moves(at) == moves(reference.layout, record)

    at.button(key="explain_play").click().run()  # playing: every run of the fragment takes one step
    assert at.button(key="explain_play").label == "Pause" and at.button(key="explain_step").disabled
    at.run()
    at.button(key="explain_play").click().run()  # paused: no more steps
    at.run()
    for _ in range(2):
        record = reference.stepper.step(budget)
    assert metrics(at)["Step"] == "13" and metrics(at)["Loss"] == f"{record.loss:.4f}"
    assert shown_moves(at) == moves(reference.layout, record)
    assert at.button(key="explain_play").label == "Play"

    ste = dict(zip(at.table[1].value["quantity"], at.table[1].value["value"], strict=True))
    unit = at.selectbox(key="explain_ste_unit").value
    chain = explain.ste_chain(record, unit)
    assert record.mask[unit] == 0
    assert (
        abs(chain.autograd) >= sorted(record.score_grad[record.mask == 0].abs().tolist())[-20]
    )  # in the top 20
    assert ste["hard gate m (forward)"] == "0"
    assert ste["dL/ds from autograd"] == f"{chain.autograd:.6e}"
    assert ste["dL/ds = dL/dz · dp/ds"] == f"{chain.chained:.6e}"

    at.button(key="explain_reset").click().run()
    assert "Step" not in metrics(at)


def test_kv_view_draws_the_real_shapes_of_gqa_and_mha(reference):
    at = page()
    at.selectbox(key="explain_kv_layer").set_value(3).run()
    table = at.table[1].value
    assert list(table["query heads"]) == ["0, 1", "2, 3", "4, 5", "6, 7"]
    assert list(table["parameters"]) == [reference.layout.kv_costs[3]] * 4
    mask = project(reference.stepper.probs(), reference.layout, reference.layout.budget(0.5))
    assert list(table["kept"]) == [
        "yes" if k else "no" for k in (reference.layout.split(mask)[3][1] > 0).tolist()
    ]
    assert any("GQA (grouped-query: 2 query heads share each K/V head)" in m.value for m in at.markdown)

    at.text_input(key="explain_model").set_value("tiny-mha").run()
    assert not at.exception and not at.error
    table = at.table[1].value
    assert list(table["query heads"]) == [str(h) for h in range(8)]
    assert set(table["parameters"]) == {4 * 16 * 64}  # K, V, one query head, its o_proj columns
    assert any("MHA (multi-head" in m.value for m in at.markdown)


def test_scale_calibration_prints_the_engines_losses_and_an_exact_fold(reference):
    at = page()
    at.button(key="explain_step").click().run()
    at.button(key="explain_calibrate").click().run()
    assert not at.exception and not at.error
    budget = reference.layout.budget(0.5)
    reference.stepper.step(budget)
    report = explain.calibrate_and_fold(
        reference, explain.ranking(reference.stepper.probs(), reference.layout, budget).mask
    )
    shown = metrics(at)
    assert shown["Loss with γ = 1"] == f"{report.loss_before:.4f}"
    assert shown["Loss with calibrated γ"] == f"{report.loss_after:.4f}"
    assert float(shown["Max |folded − gated| logit"]) <= 1e-4
    scales = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Scales" in c.proto.spec)
    shown_gamma = {x: y for trace in scales["data"] for x, y in zip(trace["x"], trace["y"], strict=True)}
    kept = (report.mask > 0).nonzero().flatten().tolist()
    assert sorted(shown_gamma) == kept
    assert all(shown_gamma[u] == pytest.approx(float(report.gamma[u]), abs=1e-6) for u in kept)
    at.button(key="explain_step").click().run()
    assert any("The mask has changed since this calibration" in c.value for c in at.caption)


@pytest.mark.parametrize("spec", ["no-such-model", "/nonexistent/model.gguf", "/"])
def test_a_bad_model_spec_is_one_line_and_no_traceback(spec):
    at = page()
    at.text_input(key="explain_model").set_value(spec).run()
    assert not at.exception
    assert len(at.error) == 1 and "\n" not in at.error[0].value
    assert not at.get("plotly_chart")
    at.text_input(key="explain_model").set_value("tiny-gqa").run()  # and the page recovers
    assert not at.exception and not at.error and metrics(at)["Budget B (parameters)"]
