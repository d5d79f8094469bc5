"""A refactoring guard: a short run's checkpoint is bit for bit what the reference commit's code makes.

``REFERENCE`` is the last commit before the package moved into its layers (tests/test_layers.py). Its
``grasprune`` is taken from git into a temporary folder and run on the same tiny model, data and flags
as the working tree's; the checkpoints' weights, masks and configs must be byte-identical. A change
meant to move the numbers (a new rounding, another default) updates ``REFERENCE`` to its own commit,
saying so in its message. Skipped where the repository's history is not at hand (an sdist, a shallow
clone without that commit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

from conftest import REPO

REFERENCE = "746f83d"
FLAGS = ["--keep-ratio", "0.6", "--calib-samples", "4", "--block-len", "32", "--epochs", "2",
         "--rescale-samples", "2", "--checkpoint-every", "2", "--eval", "none", "--no-eval-dense", "--device", "cpu",
         "--dtype", "fp32", "--seed", "3"]
COMPARED = ("model.safetensors", "config.json")

pytestmark = pytest.mark.slow


def reference_source(into: Path) -> Path:
    """The reference commit's ``grasprune`` package, extracted into ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", REFERENCE, "grasprune"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        pytest.skip(f"commit {REFERENCE} is not in this checkout's history: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def prune(model: Path, out: Path, runs: Path, code: Path | None, flags: list[str]) -> None:
    env = {**os.environ, "GRASPRUNE_RUNS": str(runs)}
    if code is not None:
        env["PYTHONPATH"] = f"{code}{os.pathsep}{env.get('PYTHONPATH', '')}"
        where = subprocess.run([sys.executable, "-c", "import grasprune; print(grasprune.__file__)"], env=env,
                               capture_output=True, text=True, cwd=code, check=True).stdout
        assert where.startswith(str(code)), where  # the reference's code runs, not the installed one
    done = subprocess.run([sys.executable, "-m", "grasprune", "prune", "--model", str(model), *flags,
                           "--out", str(out)], env=env, capture_output=True, text=True, cwd=code or REPO,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


# the default variant in every suite; `paper` (also pinned step by step by tests/test_paper_variant.py) in make test-all
@pytest.mark.parametrize("variant", ["guided", pytest.param("paper", marks=pytest.mark.heavy)])
def test_a_short_run_is_bit_identical_to_the_reference_commit(variant, tiny_model_dir, tmp_path):
    code = reference_source(tmp_path / "reference")
    for name, source in (("reference", code), ("current", None)):
        prune(tiny_model_dir, tmp_path / f"{name}-out", tmp_path / f"{name}-runs", source, [*FLAGS, "--variant", variant])
    for name in COMPARED:
        assert (tmp_path / "reference-out" / name).read_bytes() == (tmp_path / "current-out" / name).read_bytes(), name
    masks = [json.loads((tmp_path / f"{n}-out" / "grasprune.json").read_text())["mask"] for n in ("reference", "current")]
    assert masks[0] == masks[1]
