"""What the loop's process holds when each phase starts, by kind of memory: what one phase leaves the next.

A phase's peak is what it holds when it starts plus what it adds. In one process, the ORPO phase of the demo
starts from about twice what a fresh process holds (0.93 against 0.48 GiB on 2026-12-06), and that
difference is in its peak. This runs the loop with the ``sapo`` command's code in this process (``sapo.cli``'s
``main``, so with its kernel-cache settings) and, at the start of every phase, splits the resident set into:

* ``files``: file-backed pages (shared libraries' code and data, memory-mapped files);
* ``main_heap``: what is resident of glibc's main heap (``[heap]``); after a phase the loop trims it
  (:func:`sapo.callbacks.trim_heap`), so this is mostly blocks in use;
* ``thread_arenas``: what is resident in glibc's per-thread arenas (anonymous mappings at 64 MiB
  boundaries), in use or free: a trim does not return the free top of such an arena;
* ``python_objects``: CPython's own small-object arenas (``sys._debugmallocstats``), where Python objects
  live;
* ``other``: the rest of the anonymous memory (blocks too large for the heaps, mapped apart; thread stacks);

and, beside the split, ``heap_in_use``: the blocks ``malloc`` has handed out and not got back, in either
kind of heap (``mallinfo2``): C and C++ objects, oneDNN's cached kernels, tensors' storage. The split adds
up to ``rss``; ``heap_in_use`` overlaps ``main_heap`` and ``thread_arenas``. With the split come the modules
imported so far and the phase's own peak. The default run is the demo's recipe at a small size (one round,
48 gold solutions, 64 questions sampled, 12 ORPO steps: about 10 minutes on 2 cores).

``--import-cost MODULE ...`` measures instead what importing each module adds to a fresh interpreter that has
imported the ``sapo`` command (each in its own interpreter): resident MiB, by kind, and modules.

Usage::

    .venv/bin/python benchmarks/carried_memory.py --out benchmarks/results/carried_memory.json \
        [-- <sapo fit arguments, replacing the default ones>]
    .venv/bin/python benchmarks/carried_memory.py --import-cost peft bitsandbytes

Linux with glibc only (``/proc``, ``mallinfo2``). Writes the JSON (one entry per phase) and prints a table.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 2**20
#: glibc's per-thread heaps are mapped at multiples of their maximum size (``HEAP_MAX_SIZE``, 64 MiB on 64-bit)
THREAD_HEAP_ALIGNMENT = 64 * MIB

#: the demo's recipe at a small size: the same phases, models and batch sizes, far fewer steps and questions
SMALL_DEMO = [
    "--config", "configs/demo.yaml",
    "--model.init_args.iterations", "1",
    "--model.init_args.sft.epochs", "1",
    "--data.init_args.gold_solutions", "48",
    "--model.init_args.sampling.questions_per_iteration", "64",
    "--model.init_args.labelling.per_iteration", "8",
    "--model.init_args.verifier.epochs", "1",
    "--model.init_args.orpo.max_steps", "12",
    "--model.init_args.evaluation.questions", "64",
]  # fmt: skip


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost",
        )
    ]  # fmt: skip


def resident_by_mapping(smaps: str) -> dict[str, int]:
    """Resident bytes of ``/proc/<pid>/smaps`` text by kind: ``files`` (mappings of a file), ``main_heap``
    (``[heap]``), ``thread_arenas`` (anonymous mappings starting at a 64 MiB boundary: glibc's per-thread
    heaps) and ``anonymous`` (the other anonymous mappings; ``[stack]``, ``[vdso]`` and the like are left
    out)."""
    totals = {"files": 0, "main_heap": 0, "thread_arenas": 0, "anonymous": 0}
    kind = None
    for line in smaps.splitlines():
        fields = line.split()
        if not fields:
            continue
        # a mapping's header: range, permissions, offset, device, inode, [path]
        if "-" in fields[0] and not fields[0].endswith(":"):
            path = fields[5] if len(fields) > 5 else ""
            start = int(fields[0].split("-")[0], 16)
            if path.startswith("/"):
                kind = "files"
            elif path == "[heap]":
                kind = "main_heap"
            elif path == "":
                kind = "thread_arenas" if start % THREAD_HEAP_ALIGNMENT == 0 else "anonymous"
            else:
                kind = None
        elif fields[0] == "Rss:" and kind is not None:
            totals[kind] += int(fields[1]) * 1024
    return totals


def python_arena_bytes(stats: str) -> int:
    """Bytes in CPython's small-object arenas, from ``sys._debugmallocstats``'s report."""
    count = size = None
    for line in stats.splitlines():
        if line.startswith("# arenas allocated current"):
            count = int(line.split("=")[-1].replace(",", ""))
        elif "bytes/arena" in line:
            size = int(line.split("*")[1].split("bytes/arena")[0].replace(",", ""))
    if count is None or size is None:
        raise ValueError("no arena counts in sys._debugmallocstats' report")
    return count * size


def _debugmallocstats() -> str:
    """``sys._debugmallocstats()``'s report, which CPython writes to the C-level stderr."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return capture.read().decode(errors="replace")


def snapshot() -> dict[str, Any]:
    """The process's memory now, by kind (MiB)."""
    gc.collect()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    split = resident_by_mapping(Path("/proc/self/smaps").read_text())
    python = python_arena_bytes(_debugmallocstats())
    mib = {
        "rss": sum(split.values()),
        "files": split["files"],
        "main_heap": split["main_heap"],
        "thread_arenas": split["thread_arenas"],
        # CPython maps its arenas itself: they are among the anonymous mappings
        "python_objects": python,
        "other": split["anonymous"] - python,
        "heap_in_use": info.uordblks + info.hblkhd,
    }
    return {
        **{name: round(value / MIB) for name, value in mib.items()},
        "modules": len(sys.modules),
        "python_objects_tracked": len(gc.get_objects()),
    }


#: a fresh interpreter: the sapo command's imports, then one module's; prints the two snapshots
_IMPORT_PROBE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
from carried_memory import snapshot
import sapo.cli, sapo.evolution.loop
before = snapshot()
importlib.import_module(sys.argv[2])
print(json.dumps([before, snapshot()]))
"""


def import_cost(module: str) -> dict[str, int]:
    """What importing ``module`` adds to an interpreter that has imported the sapo command (MiB, modules)."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, str(Path(__file__).parent), module],
        capture_output=True,
        text=True,
        check=True,
    )
    before, after = json.loads(result.stdout.strip().splitlines()[-1])
    return {key: after[key] - before[key] for key in before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/carried_memory.json"))
    parser.add_argument("--import-cost", nargs="+", metavar="MODULE", help="measure these imports instead")
    parser.add_argument(
        "fit_args", nargs="*", help="after --: sapo fit's arguments (default: the small demo)"
    )
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("carried_memory.py reads /proc and glibc's mallinfo2: Linux only")
    if args.import_cost:
        for module in args.import_cost:
            print(module, json.dumps(import_cost(module)))
        return

    from training_speed import cpu_info, memory_environment  # this script's folder is on sys.path

    from sapo.cli import main as sapo_main
    from sapo.evolution import memory

    records: list[dict[str, Any]] = []
    start, summary = memory.PhaseMemory.start, memory.PhaseMemory.summary

    def start_and_record(self: memory.PhaseMemory) -> None:
        records.append({"at_start_mib": snapshot()})
        start(self)

    def summary_and_record(self: memory.PhaseMemory) -> dict[str, Any]:
        result = summary(self)
        records[-1]["peak_rss_gib"] = result["peak_rss_gib"]
        return result

    memory.PhaseMemory.start = start_and_record  # type: ignore[method-assign]
    memory.PhaseMemory.summary = summary_and_record  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="sapo-carried-memory-") as folder:
        run_dir = str(Path(folder) / "run")
        fit_args = args.fit_args or SMALL_DEMO
        began = time.time()
        sys.argv[1:] = []  # this script's own arguments are not the command's
        code = sapo_main(
            ["fit", *fit_args, "--model.init_args.run_dir", run_dir, "--trainer.default_root_dir", run_dir]
        )
        if code:
            raise SystemExit(f"sapo fit failed (exit {code})")
        phases = list(json.loads((Path(run_dir) / "manifest.json").read_text())["phases"])
    for phase, record in zip(phases, records, strict=True):
        record["phase"] = phase
    result = {
        "command": " ".join(["fit", *fit_args]),
        "machine": {"cpu": cpu_info()},
        "environment": memory_environment(),
        "seconds": round(time.time() - began),
        "phases": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    columns = [
        "rss",
        "files",
        "main_heap",
        "thread_arenas",
        "python_objects",
        "other",
        "heap_in_use",
        "modules",
    ]
    print("| phase | " + " | ".join(columns) + " | phase peak GiB |")
    print("|---" * (len(columns) + 2) + "|")
    for record in records:
        cells = [str(record["at_start_mib"][c]) for c in columns]
        print(f"| {record['phase']} | " + " | ".join(cells) + f" | {record.get('peak_rss_gib', '')} |")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
