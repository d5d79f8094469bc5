"""Run several ``grasprune`` command lines one after another in one process (the bad-input suite's CLI
rows: one Python start-up instead of one per row).

Reads ``{name: argv}`` as JSON on stdin and writes ``{name: {"code", "stderr", "stdout"}}`` to the file
named by the first argument. Each call's output is captured at the file-descriptor level, so it holds
everything the process writes (warnings and logging included), and an uncaught exception is printed
as the interpreter would print it (a traceback, exit code 1).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback

from grasprune.cli.main import main


def call(argv: list[str]) -> dict:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code
            except BaseException:  # noqa: BLE001 - reported as the interpreter would
                traceback.print_exc()
                code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        return {"code": code, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


if __name__ == "__main__":
    cases = json.load(sys.stdin)
    results = {name: call(argv) for name, argv in cases.items()}
    with open(sys.argv[1], "w", encoding="utf-8") as handle:
        json.dump(results, handle)
