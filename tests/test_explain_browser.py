"""The Explain page in a real browser (Debian's Chromium driven by Playwright): every view on the
in-process tiny GQA Llama, its numbers checked against the engine run here, and a screenshot of each
view saved for the README's teaching section."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from test_browser import CHROMIUM, CHROMIUM_ARGS, ensure_chromium, server, settle  # noqa: F401 - server is a fixture

from grasprune.method.units import project
from studio import explain

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def metrics(page, view: str) -> dict[str, str]:
    """Label -> value of the view's metrics, read in one go (a rerun may be redrawing them)."""
    pairs = page.locator(f".st-key-{view} [data-testid='stMetric']").evaluate_all(
        """metrics => metrics.map(m => [m.querySelector("[data-testid='stMetricLabel']"),
                                        m.querySelector("[data-testid='stMetricValue']")])
                             .filter(([label, value]) => label && value)
                             .map(([label, value]) => [label.innerText.trim(), value.innerText.trim()])"""
    )
    return dict(pairs)


def steady_metrics(page, view: str) -> dict[str, str]:
    """The view's metrics once two reads a second apart agree."""
    settle(page)
    previous, current = None, metrics(page, view)
    deadline = time.monotonic() + 30
    while current != previous and time.monotonic() < deadline:
        time.sleep(1)
        settle(page)
        previous, current = current, metrics(page, view)
    return current


def table_rows(page, view: str, index: int = 0) -> list[list[str]]:
    table = page.locator(f".st-key-{view} [data-testid='stTable'] table").nth(index)
    return [row.locator("th, td").all_inner_texts() for row in table.locator("tbody tr").all()]


def moves(layout, record) -> tuple[str, str]:
    return (
        ", ".join(explain.unit_name(layout, u) for u in record.entered) or "none",
        ", ".join(explain.unit_name(layout, u) for u in record.left) or "none",
    )


def shown_moves(page) -> tuple[str, str]:
    text = page.locator(".st-key-explain_moves").inner_text()
    entered = re.search(r"Entered at step \d+: (.*)", text).group(1).strip()
    left = re.search(r"Left at step \d+: (.*)", text).group(1).strip()
    return entered, left


def click_until(page, key: str, view: str, label: str, value: str) -> None:
    """Click a button and wait until the run it starts shows ``label: value`` (the click returns first)."""
    page.locator(f".st-key-{key} button").click()
    deadline = time.monotonic() + 60
    while metrics(page, view).get(label) != value:
        assert time.monotonic() < deadline, f"{label} never became {value}: {metrics(page, view)}"
        time.sleep(0.2)
    settle(page)


def toggle_until(page, key: str, label: str, becomes: str, attempts: int = 6) -> None:
    """Click the button labelled ``label`` until it reads ``becomes``. Retried: a click that lands while
    the playing fragment's own timed rerun is under way can be dropped by Streamlit (seen once in CI,
    streamlit/streamlit#11030 describes the neighbouring behaviour); a user would simply click again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    button = page.locator(f".st-key-{key} button")
    for _ in range(attempts):
        try:
            button.filter(has_text=label).click(timeout=5_000)
        except PlaywrightTimeout:
            pass  # the previous click took effect after all: the label already changed
        try:
            button.filter(has_text=becomes).wait_for(timeout=10_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"{key} never changed from {label!r} to {becomes!r}")


def choose_option(page, key: str, option: str, attempts: int = 8) -> None:
    """Pick ``option`` in the selectbox with widget key ``key``. Retried: a fragment rerun that redraws
    the widget closes a list that was just opened, and depending on timing a click or ArrowDown opens it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.locator(f".st-key-{key} [role='combobox']")
    wanted = page.get_by_role("option", name=option, exact=True)
    for attempt in range(attempts):
        if attempt % 2:
            box.focus()
            box.press("ArrowDown")
        else:
            box.click()
        try:
            wanted.click(timeout=5_000)
            return
        except PlaywrightTimeout:  # the list closed or never opened: try again
            page.keyboard.press("Escape")
            time.sleep(0.5)
    raise AssertionError(f"could not pick {option!r} in the {key} selectbox after {attempts} attempts")


def check_ranking(page, reference: explain.Lab, budget: int) -> None:
    """The ranking view's numbers, budget line and per-layer counts are the projection's."""
    layout = reference.layout
    mask = project(reference.stepper.probs(), layout, budget)
    shown = metrics(page, "explain_ranking")
    assert shown["Budget B (parameters)"] == f"{budget:,}"
    assert shown["Kept (parameters)"] == f"{layout.kept_params(mask):,}"
    assert shown["Units kept"] == f"{int(mask.sum())} of {layout.num_units}"
    chart = page.locator(".st-key-explain_ranking .js-plotly-plot").first
    line = chart.evaluate("plot => plot.layout.shapes.filter(s => s.type === 'line')[0]")
    assert line["x0"] == line["x1"] == budget
    assert f"budget B = {budget:,}" in chart.locator(".annotation-text").all_text_contents()
    ffn, kv = layout.kept_counts(mask)
    assert [[int(c) for c in row[:5]] for row in table_rows(page, "explain_ranking")] == [
        [i, ffn[i], s.ffn_channels, kv[i], s.kv_groups] for i, s in enumerate(layout.shapes)
    ]


def test_explain_views_show_the_engines_numbers(server):  # noqa: F811 - the fixture imported above
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (make install-dev)"
    )
    ensure_chromium()
    url, _ = server
    reference = explain.open_lab("tiny-gqa")
    layout = reference.layout
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1600})
        page.set_default_timeout(60_000)
        page.goto(url)
        settle(page, 120_000)
        page.locator("[data-testid='stSidebarNavLink']", has_text="Explain").click()
        page.locator(".st-key-explain_ranking").wait_for(timeout=120_000)
        settle(page)
        assert page.locator("a[href='https://arxiv.org/abs/2604.19398']").count() == 1

        # 1. the ranking: the budget line and the kept counts follow the slider
        slider = page.locator(".st-key-explain_keep input[type='range']")
        assert slider.input_value() == "0.5"
        slider.focus()
        deadline = time.monotonic() + 60
        while float(slider.input_value()) < 0.595 and time.monotonic() < deadline:
            slider.press("ArrowRight")
        time.sleep(1)
        settle(page)
        keep = float(slider.input_value())
        assert keep == pytest.approx(0.6)
        budget = layout.budget(keep)
        check_ranking(page, reference, budget)

        # 2. one step, ten steps, play and pause: loss and moving units as the engine's own steps
        click_until(page, "explain_step", "explain_stepping", "Step", "1")
        record = reference.stepper.step(budget)
        shown = metrics(page, "explain_stepping")
        assert shown["Step"] == "1" and shown["Loss"] == f"{record.loss:.4f}"
        assert shown["Entered the mask"] == str(len(record.entered))
        assert shown["Left the mask"] == str(len(record.left))
        assert shown_moves(page) == moves(layout, record)
        click_until(page, "explain_step10", "explain_stepping", "Step", "11")
        for _ in range(10):
            record = reference.stepper.step(budget)
        assert metrics(page, "explain_stepping")["Step"] == "11"
        assert shown_moves(page) == moves(layout, record)
        toggle_until(page, "explain_play", "Play", "Pause")
        deadline = time.monotonic() + 60
        while int(metrics(page, "explain_stepping").get("Step", "0")) < 13 and time.monotonic() < deadline:
            time.sleep(0.3)
        toggle_until(page, "explain_play", "Pause", "Play")
        shown = steady_metrics(page, "explain_stepping")  # a tick already under way may still land
        steps = int(shown["Step"])
        assert steps >= 13
        while reference.stepper.taken < steps:
            record = reference.stepper.step(budget)
        assert shown["Loss"] == f"{record.loss:.4f}"
        assert shown_moves(page) == moves(layout, record)
        ste = dict(row[:2] for row in table_rows(page, "explain_stepping"))
        assert ste["hard gate m (forward)"] == "0"
        assert float(ste["dL/ds = dL/dz · dp/ds"]) == pytest.approx(
            float(ste["dL/ds from autograd"]), rel=1e-5
        )
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.locator(".st-key-explain_stepping").screenshot(path=str(SHOTS / "explain-step.png"))
        check_ranking(page, reference, budget)  # after training: the learned order
        page.locator(".st-key-explain_ranking").screenshot(path=str(SHOTS / "explain-ranking.png"))

        # 3. the KV groups of layer 2, with the parameters the engine counts
        choose_option(page, "explain_kv_layer", "2")
        settle(page)
        page.get_by_text("Layer 2: query heads grouped").wait_for()
        kept = layout.split(project(reference.stepper.probs(), layout, budget))[2][1]
        expected = ["yes" if k else "no" for k in kept.tolist()]
        deadline = time.monotonic() + 30  # on a loaded machine the table may still show the previous rerun's
        rows = table_rows(page, "explain_kv")
        while [row[7] for row in rows] != expected and time.monotonic() < deadline:
            time.sleep(0.5)
            rows = table_rows(page, "explain_kv")
        assert [row[1] for row in rows] == ["0, 1", "2, 3", "4, 5", "6, 7"]
        assert {row[6] for row in rows} == {f"{layout.kv_costs[2]}"}
        assert [row[7] for row in rows] == expected
        page.locator(".st-key-explain_kv").screenshot(path=str(SHOTS / "explain-kv.png"))

        # 4. scale calibration of the current mask: the fold is exact
        page.locator(".st-key-explain_calibrate button").click()
        page.get_by_text("Max |folded − gated| logit").wait_for(timeout=120_000)
        shown = metrics(page, "explain_scales")
        report = explain.calibrate_and_fold(
            reference, explain.ranking(reference.stepper.probs(), layout, budget).mask
        )
        assert shown["Loss with γ = 1"] == f"{report.loss_before:.4f}"
        assert shown["Loss with calibrated γ"] == f"{report.loss_after:.4f}"
        assert float(shown["Max |folded − gated| logit"]) <= 1e-4
        page.locator(".st-key-explain_scales").screenshot(path=str(SHOTS / "explain-scales.png"))
        assert page.locator("[data-testid='stException']").count() == 0
        browser.close()
    assert report.max_diff <= 1e-4 and torch.all(report.gamma[report.mask == 0] == 1)
