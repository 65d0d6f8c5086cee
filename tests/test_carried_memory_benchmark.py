"""The carried-memory benchmark (benchmarks/carried_memory.py): its split of a process's memory by kind, on
hand-written /proc text and on this process, and the whole script on the smoke loop (tiny random model)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import BENCHMARKS, benchmark_script, loop_env


@pytest.fixture(scope="module")
def bench():
    return benchmark_script("carried_memory")


#: four mappings: a library, the main heap, a glibc thread heap (at a 64 MiB boundary), an unaligned block
#: (a large malloc or a thread stack); the stack itself is not counted
SMAPS = """\
7f0000000000-7f0000200000 r-xp 00000000 08:01 1234 /usr/lib/libexample.so
Size:               2048 kB
Rss:                1000 kB
55e000000000-55e000800000 rw-p 00000000 00:00 0 [heap]
Size:               8192 kB
Rss:                3000 kB
7e0004000000-7e0008000000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:                 700 kB
7e0008100000-7e0008300000 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                  50 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Size:                132 kB
Rss:                  20 kB
"""


def test_the_split_tells_files_thread_arenas_and_other_anonymous_memory_apart(bench):
    assert bench.resident_by_mapping(SMAPS) == {
        "files": 1000 * 1024,
        "main_heap": 3000 * 1024,
        "thread_arenas": 700 * 1024,
        "anonymous": 50 * 1024,
    }


def test_python_arenas_are_read_from_cpythons_report(bench):
    report = "# arenas allocated current           =                  153\n153 arenas * 1048576 bytes/arena     =  x\n"
    assert bench.python_arena_bytes(report) == 153 * 2**20
    assert bench.python_arena_bytes(bench._debugmallocstats()) > 2**20  # this interpreter's own
    with pytest.raises(ValueError, match="arena"):
        bench.python_arena_bytes("nothing here")


#: a snapshot in a fresh interpreter that has imported torch, and its VmRSS (MiB), as JSON
_SNAPSHOT_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from carried_memory import snapshot
from sapo.evolution.memory import _status_bytes
parts = snapshot()
print(json.dumps([parts, _status_bytes("VmRSS:") / 2**20]))
"""


def test_a_snapshot_accounts_for_the_resident_set():
    # in an interpreter of its own, as the script takes them: CPython's arenas count whole, and in a process
    # that has run much (a test worker) pages of them that were never touched are not resident
    result = subprocess.run(
        [sys.executable, "-c", _SNAPSHOT_PROBE, str(BENCHMARKS)], capture_output=True, text=True, check=True
    )
    parts, resident = json.loads(result.stdout.strip().splitlines()[-1])
    # the stack and the kernel's own mappings are left out: a few MiB
    assert abs(parts["rss"] - resident) < 0.05 * resident
    named = ("files", "main_heap", "thread_arenas", "python_objects", "other")
    assert abs(sum(parts[k] for k in named) - parts["rss"]) <= len(named)  # each rounded to a MiB
    assert min(parts[k] for k in ("files", "main_heap", "python_objects", "heap_in_use")) > 0
    assert parts["other"] >= 0  # CPython's arenas are among the anonymous mappings


def test_the_script_records_every_phase_of_the_smoke_loop(tmp_path):
    out = tmp_path / "carried.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "carried_memory.py"), "--out", str(out), "--",
         "--config", "configs/smoke.yaml", "--model.init_args.iterations", "1"],
        cwd=BENCHMARKS.parent, env=loop_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    phases = json.loads(out.read_text())["phases"]
    assert [p["phase"] for p in phases][:2] == ["sft", "samples_0"]
    assert phases[-1]["phase"] == "eval_1"
    for phase in phases:
        assert phase["at_start_mib"]["rss"] > 0 and phase["peak_rss_gib"] > 0
    assert "| orpo_1 |" in result.stdout


def test_an_import_is_measured_in_an_interpreter_of_its_own(bench):
    cost = bench.import_cost("xml.dom.minidom")  # not among the sapo command's imports
    assert cost["modules"] >= 3  # xml.dom, xml.dom.minidom and what they import
    assert set(cost) >= {"rss", "files", "heap_in_use", "python_objects"}
