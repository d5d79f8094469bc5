"""The bad-input suite: one table of (surface, input, expected message) across the CLI, the library API
and the studio, each refused with one line and nothing left half-written.

- ``cli`` rows run ``grasprune.cli.main.main`` in one batch process (tests/cli_batch.py captures each row's
  stderr at the file-descriptor level): exit code 2, exactly one ``error:`` line, the last, never a
  traceback, and no checkpoint, partial folder or run that claims to be alive. Two rows also run as
  real ``python -m grasprune`` processes.
- ``api`` rows call the library: a ``UserError`` whose message is one line.
- ``app`` rows fill the Prune form (AppTest) and press Start: the message in ``st.error``, no run
  created, nothing attached.

Placeholders: ``{files}`` the prepared bad files, ``{tiny}`` a tiny model folder, ``{case}`` a folder
of the row's own.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from grasprune.config import DEFAULT_CALIB, DEFAULT_RESCALE, PruneConfig
from grasprune.errors import UserError

from conftest import REPO, run_cli

SMALL = ["--calib-samples", "4", "--block-len", "32", "--epochs", "2", "--rescale-samples", "2",
         "--eval-seqlen", "64", "--eval-windows", "2"]
GOOD_ARC = {"query": "Question: Why?", "choices": ["a", "b", "c", "d"], "gold": 2}


@dataclass(frozen=True)
class Bad:
    surface: str  # cli, api or app
    input: tuple | dict | str  # cli: argv; app: Prune form settings; api: a label for ``call``
    message: str  # a fragment of the one-line message
    call: Callable | None = None  # api rows: call(ctx) must raise the UserError

    @property
    def id(self) -> str:
        shown = " ".join(self.input) if self.surface == "cli" else str(self.input)
        return f"{self.surface}: {shown}"


def cli(*argv: str, message: str) -> Bad:
    return Bad("cli", argv, message)


def api(label: str, call: Callable, message: str) -> Bad:
    return Bad("api", label, message, call)


def app(message: str, **settings) -> Bad:
    return Bad("app", settings, message)


def config(**fields):
    return lambda c: PruneConfig(**{"model": str(c.tiny), **fields}).resolved()


def from_dict(data):
    return lambda c: PruneConfig.from_dict(data)


def source(spec: str, purpose: str = "calibration"):
    from grasprune.data import read_source

    return lambda c: read_source(c.format(spec), purpose)


def blocks(spec: str, num: int, length: int):
    from grasprune.data import calibration_blocks

    return lambda c: calibration_blocks(c.format(spec), c.tokenizer, num, length)


def task_file(task: str, *rows):
    """Write ``rows`` as the task's local file in the row's own data root and check it as the CLI does."""

    def call(c):
        from grasprune.cli.zeroshot import check_task_files
        from grasprune.evaluation.zeroshot_tasks import LOCAL_SOURCES

        path = c.case / "zeroshot" / LOCAL_SOURCES[task][0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        c.monkeypatch.setenv("GRASPRUNE_DATA", str(c.case))
        check_task_files([task])

    return call


def model(spec: str):
    from grasprune.method.models import load_model

    return lambda c: load_model(c.format(spec))


def impossible_projection(c):
    import torch

    from grasprune.method.adapters import LayerShape
    from grasprune.method.units import UnitLayout, project

    layout = UnitLayout(shapes=[LayerShape(4, 2, 4)] * 2, ffn_costs=[1, 1], kv_costs=[3, 3], group_size=2)
    project(torch.rand(layout.num_units), layout, layout.minimum_params() - 1)


def budget_preview(keep_ratio: float):
    from grasprune.method.budget import budget_preview as preview

    return lambda c: preview(str(c.tiny)).check(keep_ratio)


BAD_INPUTS = [
    # ---- the CLI: models, budgets, data, config files, run ids, paths, arguments
    cli("prune", "--model", "no-such-model", message="unknown model 'no-such-model'"),
    cli("prune", "--model", "{files}/empty-folder", message="has no config.json"),
    cli("prune", "--model", "{files}/missing.gguf", message="GGUF file not found"),
    cli("prune", "--model", "{tiny}", "--keep-ratio", "0", message="outside (0, 1]"),
    cli("prune", "--model", "{tiny}", "--keep-ratio", "1.5", message="outside (0, 1]"),
    cli("prune", "--model", "{tiny}", "--keep-ratio", "1", message="nothing would be pruned"),
    cli("prune", "--model", "{tiny}", "--keep-ratio", "abc",
        message="argument --keep-ratio: 'abc' is not a number"),
    cli("prune", "--model", "{tiny}", "--keep-ratio", "0.001",
        message="cannot keep one FFN channel and one KV group per layer"),
    cli("prune", "--model", "{tiny}", "--seed", "-1", message="--seed must be from 0 to 4294967295"),
    cli("prune", "--model", "{tiny}", "--calib-data", "{files}/missing.txt", message="data file not found"),
    cli("prune", "--model", "{tiny}", "--calib-data", "{files}/empty.txt", message="is empty"),
    cli("prune", "--model", "{tiny}", "--eval", "{files}/weights.bin", message="is not a text file"),
    cli("prune", "--model", "{tiny}", "--block-len", "10000000", message="fewer than one block"),
    cli("prune", "--model", "{tiny}", "--calib-data", "{files}/short.txt", message="fewer than one block"),
    cli("prune", "--model", "{tiny}", "--calib-samples", "100000", message="pass --calib-samples"),
    cli("prune", "--model", "{tiny}", "--rescale-data", "{files}/short.txt", message="fewer than one block"),
    cli("prune", "--model", "nobody/not-cached", message="cannot be reached (offline)"),
    cli("prune", "--model", "{tiny}", "--out", "{files}", message="exists: pass --overwrite"),
    cli("prune", "--model", "{tiny}", "--device", "tpu", message="unknown device 'tpu'"),
    cli("prune", "--model", "{tiny}", "--dtype", "fp16", message="argument --dtype: invalid choice: 'fp16'"),
    cli("prune", "--model", "{tiny}", "--config", "{files}/bad-config.json",
        message="config key 'epochs' must be int | None, got str ('two')"),
    cli("prune", "--model", "{tiny}", "--config", "{files}/broken-config.json",
        message="broken-config.json is not valid JSON (line 1)"),
    cli("prune", "--resume", "../../etc", message="invalid run id '../../etc'"),
    cli("prune", "--resume", "20261128-120000-abcdef", message="no run 20261128-120000-abcdef in"),
    cli("ppl", "--model", "{files}/pickled",
        message="holds only pickled weights (pytorch_model.bin), which can run code when loaded: convert them "
                "to safetensors"),
    cli("ppl", "--model", "{files}/custom",
        message="ships custom modeling code (auto_map), which would run on load: pass --trust-remote-code"),
    cli("ppl", message="the following arguments are required: --model"),
    cli("inspect", "{files}/empty-folder", message="is not a GRASPrune checkpoint (no grasprune.json)"),
    # ---- the library: config dicts and files
    api("PruneConfig.from_dict([1])", from_dict([1]), "config must be a JSON object of prune settings"),
    api("PruneConfig.from_dict({'epoks': 2})", from_dict({"epoks": 2}), "unknown config key 'epoks'"),
    api("PruneConfig.from_dict({'keep_ratio': '0.5'})", from_dict({"keep_ratio": "0.5"}),
        "config key 'keep_ratio' must be float, got str ('0.5')"),
    api("PruneConfig.from_dict({'trust_remote_code': 1})", from_dict({"trust_remote_code": 1}),
        "config key 'trust_remote_code' must be bool, got int (1)"),
    api("PruneConfig.from_dict({'eval_datasets': 'ptb'})", from_dict({"eval_datasets": "ptb"}),
        "config key 'eval_datasets' must be list[str]"),
    api("PruneConfig.from_dict({'seed': True})", from_dict({"seed": True}), "config key 'seed' must be int"),
    api("PruneConfig.load(latin-1 file)", lambda c: PruneConfig.load(c.files / "latin1.txt"),
        "is not valid JSON (not UTF-8)"),
    api("PruneConfig.load(missing file)", lambda c: PruneConfig.load(c.files / "missing.json"),
        "cannot read config"),
    # ---- the library: settings out of range
    api("variant='fast'", config(variant="fast"), "unknown variant 'fast'"),
    api("method='sparsegpt'", config(method="sparsegpt"), "unknown method 'sparsegpt'"),
    api("score_init='best'", config(score_init="best"), "unknown --score-init 'best'"),
    api("distill=2", config(distill=2.0), "--distill is a loss weight in [0, 1]"),
    api("warmup=1", config(warmup=1.0), "--warmup is a fraction of the steps in [0, 1)"),
    api("lr=0", config(lr=0.0), "--lr must be positive"),
    api("tau=nan", config(tau=math.nan), "--tau must be a finite number"),
    api("dtype='fp16'", config(dtype="fp16"), "unknown dtype 'fp16'"),
    api("calib_samples=0", config(calib_samples=0), "--calib-samples must be at least 1"),
    api("rescale_epochs=-1", config(rescale_epochs=-1), "--rescale-epochs must be 0 or more"),
    api("eval_seqlen=1", config(eval_seqlen=1), "--eval-seqlen must be at least 2"),
    api("model='  '", config(model="  "), "no model given"),
    # ---- the library: budgets
    api("preview(tiny).check(0.05)", budget_preview(0.05), "cannot keep one FFN channel and one KV group per layer"),
    api("preview(tiny).check(1.5)", budget_preview(1.5), "keep ratio 1.5 is outside (0, 1]"),
    api("project(budget below the minimum)", impossible_projection,
        "cannot keep one FFN channel and one KV group per layer"),
    # ---- the library: models
    api("load_model('')", model(""), "no model given"),
    api("load_model(a folder without weights)", model("{files}/no-weights"), "has no weights (*.safetensors)"),
    api("load_model(a file that is not .gguf)", model("{files}/weights.bin"),
        "is not a model folder or a .gguf file"),
    # ---- the library: data files
    api("read_source('')", source(""), "no data given"),
    api("read_source('/nonexistent/calib.txt')", source("/nonexistent/calib.txt"), "data file not found"),
    api("read_source('wikitext2#rows=1:2')", source("wikitext2#rows=1:2"), "bad data slice"),
    api("read_source('wikitext2-test')", source("wikitext2-test"), "never calibrate on it"),
    api("read_source(blank lines)", source("{files}/blank.txt"), "is empty"),
    api("read_source(a folder)", source("{files}/empty-folder"), "is not a file"),
    api("read_source(latin-1 text)", source("{files}/latin1.txt"), "is not UTF-8 text"),
    api("read_source(jsonl without text)", source("{files}/missing-text.jsonl"),
        "missing-text.jsonl:2: each line needs a string 'text' field"),
    api("read_source(broken jsonl)", source("{files}/broken.jsonl"), "broken.jsonl:2: not valid JSON"),
    api("read_source(parquet without text)", source("{files}/notext.parquet"), "has no 'text' column"),
    api("calibration_blocks(short file, 256)", blocks("{files}/short.txt", 1, 256), "fewer than one block"),
    api("calibration_blocks(wikitext2, 100000 blocks)", blocks("wikitext2", 100_000, 256),
        "holds only"),
    # ---- the library: zero-shot task files (the message names the file and the line)
    *[api(f"arc_easy row 3: {problem}", task_file("arc_easy", GOOD_ARC, GOOD_ARC, row),
          f"{{case}}/zeroshot/arc_easy/arc_easy.jsonl, line 3: {problem}") for row, problem in [
        ({"choices": ["a", "b"], "gold": 0}, "field 'query' is missing"),
        ({**GOOD_ARC, "choices": "a"}, "field 'choices' is missing or not a non-empty list"),
        ({**GOOD_ARC, "gold": 4}, "label 4 out of range for 4 choices"),
        ({**GOOD_ARC, "gold": -1}, "label -1 out of range"),
        ({**GOOD_ARC, "gold": "1"}, "field 'gold' is missing or not an integer"),
        ({**GOOD_ARC, "query": "Why?"}, "field 'query' does not start with 'Question: '"),
        ('{"query": "Question: x", ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ]],
    api("winogrande label 2 of 2", task_file("winogrande", {"context_options": ["A so B", "A so C"],
                                                             "continuation": "won.", "gold": 2}),
        "winogrande.jsonl, line 1: label 2 out of range for 2 choices"),
    api("boolq without 'Passage: '", task_file("boolq", {"query": "Question: is it?", "choices": ["no", "yes"],
                                                          "gold": 1}),
        "boolq.jsonl, line 1: field 'query' does not start with 'Passage: '"),
    api("openbookqa missing", lambda c: _load_task(c, "openbookqa"), "zero-shot data for openbookqa not found at"),
    api("unknown task 'mmlu'", lambda c: _load_task(c, "mmlu"), "unknown zero-shot task 'mmlu'"),
    # ---- the studio's Prune form (Start pressed)
    app("unknown model 'no-such-model'", model="no-such-model"),
    app("is not in the local Hugging Face cache and the Hub cannot be reached (offline)",
        model="someone/missing-model"),
    app("holds only pickled weights", model="{files}/pickled"),
    app("ships custom modeling code (auto_map)", model="{files}/custom"),
    app("data file not found", calib="/nonexistent/calibration.txt"),
    app("is not a file", calib="{files}/empty-folder"),
    app("is not a text file", calib="{files}/weights.bin"),
    app("bad data slice", rescale="wikitext2#rows=1:2"),
]


def _load_task(c, name: str):
    from grasprune.evaluation.zeroshot_tasks import load_task

    return load_task(name, data_root_dir=c.case)


def test_the_table_has_at_least_30_distinct_bad_inputs_on_every_surface():
    ids = [case.id for case in BAD_INPUTS]
    assert len(set(ids)) == len(ids) >= 30
    assert {case.surface for case in BAD_INPUTS} == {"cli", "api", "app"}
    assert all(sum(case.surface == s for case in BAD_INPUTS) >= 8 for s in ("cli", "api", "app"))


@dataclass
class Context:
    files: Path
    tiny: Path
    case: Path
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest

    def format(self, text: str) -> str:
        return text.format(files=self.files, tiny=self.tiny, case=self.case)

    @property
    def tokenizer(self):
        return self.request.getfixturevalue("smol_tokenizer")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir) -> Path:
    """Every bad file the table refers to, made once."""
    root = tmp_path_factory.mktemp("bad-files")
    (root / "empty-folder").mkdir()
    (root / "empty.txt").write_text("\n")
    (root / "blank.txt").write_text("\n\n  \n")
    (root / "short.txt").write_text("just a few words\n")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me, na\xefve".encode("latin-1"))
    (root / "missing-text.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    (root / "broken.jsonl").write_text('{"text": "ok"}\n{oops\n')
    (root / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (root / "bad-config.json").write_text(json.dumps({"epochs": "two"}))
    (root / "broken-config.json").write_text("{epochs: 2")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a b", "c d"]}), root / "notext.parquet")
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    custom = root / "custom"
    shutil.copytree(tiny_model_dir, custom)
    settings = json.loads((custom / "config.json").read_text())
    settings["auto_map"] = {"AutoModelForCausalLM": "evil.Model"}
    (custom / "config.json").write_text(json.dumps(settings))
    (root / "no-weights").mkdir()
    shutil.copy(tiny_model_dir / "config.json", root / "no-weights" / "config.json")
    return root


def case_folder(base: Path, case: Bad) -> Path:
    return base / f"case-{BAD_INPUTS.index(case):03d}"


def cli_argv(case: Bad, files: Path, tiny: Path, folder: Path) -> list[str]:
    argv = [a.format(files=files, tiny=tiny, case=folder) for a in case.input]
    if argv[0] == "prune":  # tiny settings first: the row's own flags win
        argv = ["prune", *SMALL, *argv[1:], "--runs-dir", str(folder / "runs")]
        if "--out" not in argv:
            argv += ["--out", str(folder / "never")]
    return argv


@pytest.fixture(scope="module")
def cli_results(files, tiny_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    """Every CLI row, run in one batch process."""
    base = tmp_path_factory.mktemp("cli-cases")
    rows = {case.id: cli_argv(case, files, tiny_model_dir, case_folder(base, case))
            for case in BAD_INPUTS if case.surface == "cli"}
    out = base / "results.json"
    done = subprocess.run([sys.executable, str(REPO / "tests" / "cli_batch.py"), str(out)], input=json.dumps(rows),
                          capture_output=True, text=True, timeout=900, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return base, json.loads(out.read_text())


@pytest.fixture(scope="module")
def studio(files, tiny_model_dir, tmp_path_factory):
    """One Prune page (AppTest) for the app rows, in a runs folder of its own."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from grasprune.runs import jobs

    runs = tmp_path_factory.mktemp("app-runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRASPRUNE_RUNS", str(runs))
        patch.setenv("HF_HUB_OFFLINE", "1")  # an uncached hub id is refused the same with or without a network
        st.cache_data.clear()
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        at.run()
        at.switch_page("app_pages/prune.py").run()
        yield at, runs
        jobs.registry().shutdown()
        st.cache_resource.clear()


def one_line(message: str) -> str:
    assert message and "\n" not in message.strip() and "Traceback" not in message, message
    return message


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.id for case in BAD_INPUTS])
def test_bad_input_is_refused_with_one_line(case, request, files, tiny_model_dir, tmp_path, monkeypatch):
    if case.surface == "cli":
        base, results = request.getfixturevalue("cli_results")
        check_cli(case, results[case.id], case_folder(base, case), files, tiny_model_dir)
    elif case.surface == "api":
        context = Context(files, tiny_model_dir, tmp_path, monkeypatch, request)
        with pytest.raises(UserError) as err:
            case.call(context)
        assert context.format(case.message) in one_line(str(err.value))
    else:
        check_app(case, *request.getfixturevalue("studio"), files, tiny_model_dir)


def check_cli(case: Bad, result: dict, folder: Path, files: Path, tiny: Path) -> None:
    from grasprune.runs.store import list_runs

    stderr = result["stderr"]
    assert result["code"] == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], stderr[-2000:]
    assert case.message.format(files=files, tiny=tiny) in errors[0]
    # nothing written: no checkpoint, no partial folder, and no run folder (check_inputs refuses every row
    # before a run exists), so the whole stderr is the one line
    assert not (folder / "never").exists()
    assert not [p for p in folder.rglob("*") if p.name.endswith(".partial")]
    assert list_runs(folder / "runs") == [] and not (folder / "runs").exists()
    assert len(lines) == 1, stderr


def check_app(case: Bad, at, runs: Path, files: Path, tiny: Path) -> None:
    from grasprune.runs.store import list_runs

    settings = {k: v.format(files=files) if isinstance(v, str) else v for k, v in case.input.items()}
    at.text_input(key="prune_model").set_value(settings.get("model", str(tiny)))
    at.slider(key="prune_keep_ratio").set_value(settings.get("keep_ratio", 0.5))
    at.text_input(key="prune_rescale_data").set_value(settings.get("rescale", DEFAULT_RESCALE))
    at.selectbox(key="prune_calib_choice").set_value("custom" if "calib" in settings else DEFAULT_CALIB).run()
    if "calib" in settings:
        at.text_input(key="prune_calib_custom").set_value(settings["calib"]).run()
    at.button(key="prune_start").click().run()
    assert not at.exception, at.exception
    shown = [e.value for e in at.error]
    assert any(case.message in one_line(e) for e in shown), shown
    assert list_runs(runs) == []
    assert "run" not in at.query_params


@pytest.mark.parametrize("argv, message", [
    (["prune", "--keep-ratio", "nope"], "error: grasprune prune: argument --keep-ratio: 'nope' is not a number"),
    (["prune", "--model", "no-such-model"], "error: unknown model 'no-such-model'"),
])
def test_the_entry_point_exits_2_with_one_line(argv, message, tmp_path):
    result = run_cli(*argv, "--runs-dir", str(tmp_path / "runs"), timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "runs").exists()


LIGHT_CHECK = """import sys
from grasprune.cli.main import main
code = main(sys.argv[1:])
print("transformers loaded" if "transformers" in sys.modules else "transformers not loaded")
sys.exit(code)
"""


@pytest.mark.parametrize("argv", [
    ["prune", "--keep-ratio", "7"],
    ["heal", "{missing}", "--out", "{case}/healed"],
    ["export", "{missing}", "--out", "{case}/exported"],
])
def test_a_refused_command_answers_before_transformers_is_imported(argv, tmp_path):
    """A typo costs the time torch takes to import, not the seconds transformers and the engine add."""
    argv = [a.format(missing=tmp_path / "no-checkpoint", case=tmp_path) for a in argv]
    result = subprocess.run([sys.executable, "-c", LIGHT_CHECK, *argv], capture_output=True, text=True,
                            timeout=120, cwd=REPO, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
    assert result.stdout.strip() == "transformers not loaded"


@pytest.mark.parametrize("fields, message", [
    ({"keep_ratio": 0.001}, "cannot keep one FFN channel and one KV group per layer"),
    ({"calib_samples": 100_000}, "pass --calib-samples"),
    ({"rescale_data": "wikitext2#lines=0:3"}, "fewer than one block of 256"),
    ({"rescale_samples": 100_000}, "pass --rescale-samples"),
])
def test_grasprune_prune_refuses_before_a_run_folder_exists(fields, message, tiny_model_dir, tmp_path):
    """The library call makes the CLI's and the studio's checks (check_inputs) before it creates anything."""
    import grasprune

    with pytest.raises(UserError, match=message):
        grasprune.prune(PruneConfig(model=str(tiny_model_dir), **fields), out=tmp_path / "out",
                        runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
