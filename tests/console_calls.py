"""Run several ``sapo`` command lines in one interpreter, as separate runs of the console command would.

Used by tests/test_cli.py: a run of the command spends about 10 s importing on a 2-core Zen 3, its work here
milliseconds. ``python console_calls.py CALLS.json RESULTS.json``: each call (``args``, ``cwd``, ``debug``)
runs :func:`sapo.cli.main` with its own working directory, ``SAPO_DEBUG`` and captured file descriptors 1 and
2 (Lightning's log handlers write to them, not to ``sys.stdout``); an exception that escapes prints its
traceback and exits 1, as the interpreter would. Calls with ``debug`` must come first: ``main`` leaves the
noise filters of a quiet call in place for the process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback


def run(call: dict) -> dict:
    from sapo.cli import DEBUG_VARIABLE, main

    os.chdir(call["cwd"])
    if call.get("debug"):
        os.environ[DEBUG_VARIABLE] = "1"
    else:
        os.environ.pop(DEBUG_VARIABLE, None)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush(), sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
        sys.argv[1:] = call["args"]  # as the console script has them (LightningCLI warns at args beside argv)
        try:
            code = main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
        out.seek(0), err.seek(0)
        return {"returncode": code, "stdout": out.read().decode(), "stderr": err.read().decode()}


if __name__ == "__main__":
    calls_file, results_file = sys.argv[1:3]  # read now: each call sets sys.argv
    calls = json.loads(open(calls_file).read())  # a list of {"name", "args", "cwd", "debug"}
    debug = [bool(call.get("debug")) for call in calls]
    if debug != sorted(debug, reverse=True):
        sys.exit("console_calls.py: the calls with debug must come first")
    results = {call["name"]: run(call) for call in calls}
    open(results_file, "w").write(json.dumps(results))
