"""bench.report: docs/results.md holds the values of bench/results in the right table, is up to date,
and every relative link of the README and the docs pages points at a file that exists."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import headline, report

RESULTS = REPO / "bench" / "results"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> list[tuple[str, list[dict]]]:
    """Every table of a freshly generated page: (caption, rows as {header: cell})."""
    folder = tmp_path_factory.mktemp("report")
    out, readme = folder / "results.md", folder / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    assert report.main(["--results", str(RESULTS), "--out", str(out), "--readme", str(readme)]) == 0
    return parse_tables(out.read_text())


def parse_tables(text: str) -> list[tuple[str, list[dict]]]:
    found, caption, header = [], "", None
    for line in text.splitlines():
        if line.startswith("**"):
            caption, header = line, None
        elif line.startswith("|") and header is None:
            header = cells(line)
            found.append((caption, []))
        elif line.startswith("|") and not line.startswith("|---"):
            found[-1][1].append(dict(zip(header, cells(line))))
        elif not line.startswith("|"):
            header = None
    return found


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def rows_of(tables, machine: str, file: str, column: str) -> list[dict]:
    """The rows of the one table captioned with this machine and file that has this column."""
    matches = [rows for caption, rows in tables
               if caption.startswith(f"**{machine}**") and f"`{file}`" in caption and column in rows[0]]
    assert len(matches) == 1, (machine, file, column, len(matches))
    return matches[0]


def entry(path: Path, label: str, keep: float) -> dict:
    return next(e for e in json.loads(path.read_text())["entries"]
                if e["label"] == label and e["settings"].get("keep_ratio") == keep)


def test_quality_rows_sit_in_their_machines_table(tables):
    xeon = rows_of(tables, "Intel(R) Xeon(R) Processor, 2 cores", "bench/results/quality.json", "PTB ppl")
    guided = entry(RESULTS / "quality.json", "grasprune (guided)", 0.7)
    row = next(r for r in xeon if r["method"] == "grasprune (guided)" and r["keep"] == "0.70")
    assert row["WikiText-2 ppl"] == f"{guided['metrics']['wikitext2']:.2f}" == "53.05"
    assert row["PTB ppl"] == f"{guided['metrics']['ptb']:.2f}"
    epyc = rows_of(tables, "AMD EPYC, 2 cores", "bench/results/allocator-2026-11-29/quality.json", "PTB ppl")
    assert {r["WikiText-2 ppl"] for r in epyc if r["method"] == "grasprune (guided)"} >= {"57.06"}
    assert not any(r["method"] == "taylor +scales" for r in epyc)
    assert "57.06" not in {r["WikiText-2 ppl"] for r in xeon}


def test_llamacpp_gpu_and_unrecorded_machines(tables):
    path = RESULTS / "llamacpp-2026-12-06" / "llamacpp-1-thread.json"
    rows = rows_of(tables, "AMD EPYC, 2 cores", "bench/results/llamacpp-2026-12-06/llamacpp-1-thread.json",
                   "decode tok/s")
    q8 = next(r for r in json.loads(path.read_text())["rows"]
              if r["type"] == "q8_0" and r["model"] == "keep 0.5")
    row = next(r for r in rows if r["type"] == "q8_0" and r["model"] == "keep 0.5")
    assert row["decode tok/s"] == f"{q8['decode']:.1f}" == "65.9"
    gpu = rows_of(tables, "NVIDIA H200 (host Intel(R) Xeon(R) Processor, 16 cores)", "bench/results/gpu.json",
                  "ratio")
    assert gpu[0]["ratio"] == "1.200×"
    soak = rows_of(tables, report.NOT_RECORDED, "bench/results/memory_soak.json", "slope MB/h")
    assert soak[0]["slope MB/h"] == "3.47"


def test_check_passes_on_the_committed_page_and_fails_on_a_stale_one(tmp_path):
    assert report.main(["--check"]) == 0
    stale = tmp_path / "results.md"
    stale.write_text("# Results\n")
    assert report.main(["--check", "--out", str(stale)]) == 1


def test_check_fails_on_a_stale_readme_table(tmp_path):
    readme = tmp_path / "README.md"
    text = (REPO / "README.md").read_text()
    start, end = text.index(headline.START), text.index(headline.END)
    readme.write_text(text[: start + len(headline.START)] + "\n| old | table |\n" + text[end:])
    assert report.main(["--check", "--readme", str(readme)]) == 1
    assert report.main(["--readme", str(readme), "--out", str(tmp_path / "results.md")]) == 0
    assert readme.read_text() == text  # rewritten: the committed README's table, untouched around it


def test_the_readme_table_holds_the_files_numbers_and_leaves_out_rows_without_a_file(tmp_path):
    keep = json.loads((RESULTS / "study-keep" / "summary.json").read_text())
    (ours,) = [p for p in keep["points"] if p["group"] == "grasprune (guided)" and p["x"] == 0.5]
    full = headline.table(RESULTS)
    # today's defaults over seeds and threads (bench.robustness) take the place of the keep study's older point
    (row,) = [r for r in json.loads((RESULTS / "robustness" / "summary.json").read_text())
              if r["tag"] == "default" and r["keep_ratio"] == 0.5]
    assert (f"GRASPrune {row['mean']:,.2f} ({row['min']:,.2f}–{row['max']:,.2f}, ×{row['ratio']:.2f} over "
            f"{row['n']} runs: seeds 0, 1, 2 × threads 1, 2, ") in full
    assert f"GRASPrune {ours['metrics']['wikitext2']['mean']:,.2f} (" not in full
    newest = {}  # per keep ratio and method (ours and LLM-Pruner-style taylor + LoRA), the newest file's row
    for path in sorted(RESULTS.glob("heal-*/heal*.json")):
        data = json.loads(path.read_text())
        if not data["conditions"].get("marks_steps"):  # the row is "by minutes of CPU"
            newest.update({(row["keep_ratio"], row["method"]): (path, row) for row in data["rows"]})
    assert {method for _, method in newest} == {"grasprune", "taylor"}
    for path, row in newest.values():
        before, *marks = (p["wikitext2"] for p in row["points"])
        shown = [f"**{m:,.2f}**" if m == min(marks) else f"{m:,.2f}" for m in marks]
        assert f"{before:,.2f} → {shown[0]} (" in full and all(f"{m} (" in full for m in shown), path
    calibration = json.loads((RESULTS / "study-calibration" / "summary.json").read_text())
    point = {(p["group"], p["x"]): p["metrics"] for p in calibration["points"]}
    assert (f"WikiText-2 {point['wikitext2', 16]['wikitext2']['mean']:,.2f} → "
            f"{point['wikitext2', 64]['wikitext2']['mean']:,.2f} → {point['wikitext2', 256]['wikitext2']['mean']:,.2f} "
            f"(calibrated on C4: {point['c4', 256]['wikitext2']['mean']:,.2f})") in full
    (tmp_path / "study-keep").mkdir()
    (tmp_path / "study-keep" / "summary.json").write_text(json.dumps(keep))
    only_keep = headline.table(tmp_path)  # no robustness file: the keep study's own GRASPrune point
    assert f"GRASPrune {ours['metrics']['wikitext2']['mean']:,.2f} (" in only_keep
    assert only_keep.count("\n| WikiText-2 perplexity") == 2 and "heal" not in only_keep
    assert "KV cache" not in only_keep and "Gate-training" not in only_keep and "gate-training blocks" not in only_keep


def test_report_imports_no_torch():
    code = "import sys, bench.report; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO).returncode == 0


def test_every_relative_link_of_readme_and_docs_exists():
    pages = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = [f"{page.relative_to(REPO)}: {target}"
              for page in pages for target in LINK.findall(page.read_text()) if not resolves(page, target)]
    assert broken == []


def resolves(page: Path, target: str) -> bool:
    """A URL or an in-page anchor counts as resolved; a relative path must name an existing file."""
    return bool(re.match(r"[a-z]+:|#", target)) or (page.parent / target.split("#")[0]).exists()
