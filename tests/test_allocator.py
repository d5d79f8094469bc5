"""keep_freed_memory: a large tensor made again after one was freed reuses the heap instead of faulting in
fresh pages; the CLI turns it on before its command."""

import json
import subprocess
import sys

import pytest

from grasprune.cli import main as cli

# Makes a 64 MB tensor 21 times (each freed before the next) and prints the minor page faults of the last
# 20: each fresh mmap faults in ~16,000 pages of 4 KiB. With the heap kept, the first few still grow it
# (the freed blocks need a few rounds to coalesce into one that fits), the rest fault nothing.
FAULTS = """
import json, resource, sys, torch
from grasprune.scaleout.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.ones(16 * 2**20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 2**20).sum()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def page_faults(mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", FAULTS, mode], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_tensors_are_reused_without_new_page_faults():
    default, kept = page_faults("default"), page_faults("keep")
    assert kept["applied"] is True
    if default["faults"] < 20 * 1_000:
        pytest.skip("this kernel backs fresh mappings with huge pages: few faults to save")
    assert default["faults"] > 20 * 15_000  # a fresh mapping per tensor
    assert kept["faults"] < default["faults"] / 3


def test_the_cli_keeps_freed_memory_before_its_command(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True) or True)
    assert cli.main(["inspect", str(tmp_path / "missing")]) == 2
    assert calls == [True]
