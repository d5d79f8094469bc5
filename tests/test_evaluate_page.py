"""The Evaluate page's baseline bars come from baseline runs' own reports at the same settings."""

import importlib.util
import sys

from grasprune.atomic import write_json_atomic
from grasprune.config import PruneConfig
from grasprune.runs.store import create_run

from conftest import REPO


def completed(root, method, keep, seqlen=512, windows=8, ppl=50.0):
    run = create_run(PruneConfig(model="tiny", method=method, keep_ratio=keep), root)
    metrics = {"ppl_wikitext2": {"dataset": "wikitext2", "ppl": ppl, "seqlen": seqlen, "windows": windows,
                                 "tokens": windows * (seqlen - 1)}}
    write_json_atomic(run.report_path, {"base_model": "tiny", "method": method, "keep_ratio": keep,
                                        "metrics": metrics, "params": {}, "layers": []})
    run.set_status("completed")
    return run


def test_baseline_series_reads_matching_baseline_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("GRASPRUNE_RUNS", str(tmp_path))
    ours = completed(tmp_path, "grasprune", 0.5)
    wanda = completed(tmp_path, "wanda-sp", 0.5, ppl=900.0)
    completed(tmp_path, "taylor", 0.5, windows=64)  # other settings: not comparable, left out
    spec = importlib.util.spec_from_file_location("evaluate_page", REPO / "app_pages" / "evaluate.py")
    source = (REPO / "app_pages" / "evaluate.py").read_text().replace("\nmain()\n", "\n")  # functions only, no page
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # where a dataclass of the page finds its module
    exec(compile(source, str(spec.origin), "exec"), module.__dict__)  # noqa: S102 - our own page file
    series = module.baseline_series(ours, ["wikitext2", "ptb"], 512, 8)
    assert series == {f"wanda-sp · keep 0.5 · {wanda.id}": [900.0, None]}
