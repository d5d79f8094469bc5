"""How long the command line takes to answer before any work: ``grasprune --help``, ``grasprune prune
--help`` and a refused input, each in a fresh process (the median of several). Issue 32's bar: ``--help``
under one second, which holds while the CLI imports no torch until a command needs it.

    python -m bench.cli_start [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from grasprune.atomic import write_json_atomic

from .common import RESULTS, cpu_name

COMMANDS = {
    "grasprune --help": ["--help"],
    "grasprune prune --help": ["prune", "--help"],
    "grasprune prune --keep-ratio 1.5 (refused)": ["prune", "--keep-ratio", "1.5"],
}


def seconds(args: list[str], repeats: int) -> float:
    """The median wall time of ``python -m grasprune ARGS`` in a fresh process."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "grasprune", *args], capture_output=True, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def imports_torch(args: list[str]) -> bool:
    code = ("import sys, runpy; sys.argv = ['grasprune', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('grasprune', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    return done.stdout.strip().splitlines()[-1] == "True"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_start", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = [{"command": name, "seconds": round(seconds(cli, args.repeats), 3), "imports_torch": imports_torch(cli)}
            for name, cli in COMMANDS.items()]
    for row in rows:
        print(f"{row['command']:<45} {row['seconds']:.3f} s  torch imported: {row['imports_torch']}")
    write_json_atomic(RESULTS / "cli_start.json", {
        "protocol": f"median of {args.repeats} fresh processes (python -m grasprune ...)",
        "setting": {"cpu": cpu_name(), "python": sys.version.split()[0],
                    "date": time.strftime("%Y-%m-%d", time.gmtime())},
        "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
