"""How many MBPP reference solutions pass their own tests in the sandbox, and how fast the sandbox runs.

Runs every reference solution of the four MBPP splits (974 programs) with its tests and setup code through
one :class:`~sapo.sandbox.Sandbox` with the cache off, lists every reference that fails (with the
sandbox's reason), and reports throughput in programs per second with the worker count, the isolation
layer and the machine's load (the figures are only comparable at similar load). A second, smaller run of
trivial programs measures the floor: the cost of one sandboxed interpreter start.

    python benchmarks/sandbox.py --source ../shared/data/mbpp/mbpp.jsonl --workers 2

HumanEval's 164 canonical solutions run through the same sandbox afterwards (``--humaneval ''`` skips
them). Both report who decided each run (``verdict``: the trusted parent, or the harness inside).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from sapo.data.tasks.base import Question
from sapo.data.tasks.humaneval import HumanEvalTask
from sapo.data.tasks.mbpp import MBPP_SPLITS, MBPPTask
from sapo.sandbox import Sandbox, SandboxResult

#: the shared data beside the checkout (developers and CI have it)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source", default=str(SHARED_DATA / "mbpp" / "mbpp.jsonl"), help="MBPP file or hub id"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="programs run at once")
    parser.add_argument("--isolation", default="auto", help="auto, bwrap, landlock or none")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program")
    parser.add_argument("--repeat", type=int, default=1, help="timed passes over the references")
    parser.add_argument("--trivial", type=int, default=200, help="trivial programs for the start-up floor")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--humaneval",
        default=str(SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz"),
        help="also run HumanEval's canonical solutions from this file or hub id ('' to skip)",
    )
    return parser.parse_args(argv)


def load_questions(source: str) -> list[Question]:
    """Every MBPP question (all four splits), in task-id order."""
    questions = [q for split in MBPP_SPLITS for q in MBPPTask(source=source, split=split).load()]
    return sorted(questions, key=lambda q: q.meta["task_id"])


def timed_run(
    sandbox: Sandbox, jobs: list[tuple[str, list[str], str | None]]
) -> tuple[list[SandboxResult], float, float]:
    """Results, wall-clock seconds, and CPU seconds of the sandboxed processes (user + system, from
    ``RUSAGE_CHILDREN``: unlike wall-clock time it does not depend on what else the machine runs)."""
    cpu_before = _children_cpu()
    started = time.perf_counter()
    results = sandbox.run_many(jobs)
    return results, time.perf_counter() - started, _children_cpu() - cpu_before


def cpu_text(sandbox: Sandbox, cpu: float, count: int) -> str:
    """CPU per program, where it can be measured: bubblewrap does not pass its sandbox's usage up."""
    if sandbox.isolation == "bwrap":
        return "CPU per program not measurable under bwrap"
    return f"{1000 * cpu / count:.1f} ms CPU per program"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sandbox = Sandbox(timeout=args.timeout, workers=args.workers, isolation=args.isolation, cache_size=0)
    task = MBPPTask(source=args.source)
    questions = load_questions(args.source)
    jobs = [task.job(q.solution or "", q) for q in questions]
    print(f"sandbox: {sandbox!r}; CPUs: {os.cpu_count()}; Python {sys.version.split()[0]}")

    passes = []
    for attempt in range(args.repeat):
        load_before = os.getloadavg()[0]
        results, seconds, cpu = timed_run(sandbox, jobs)
        passes.append(
            {
                "seconds": seconds,
                "per_second": len(jobs) / seconds,
                "cpu_seconds": cpu,
                "load_before": load_before,
            }
        )
        print(
            f"pass {attempt + 1}: {len(jobs)} programs in {seconds:.1f} s = {len(jobs) / seconds:.1f} programs/s; "
            f"{cpu_text(sandbox, cpu, len(jobs))} (load average before: {load_before:.2f})"
        )
    failures = [(q, r) for q, r in zip(questions, results, strict=True) if not r.passed]
    kinds = Counter(r.kind for r in results)
    per_program = sorted(r.seconds for r in results)
    verdicts = Counter(r.verdict for r in results)
    print(
        f"references passing their own tests: {len(jobs) - len(failures)} / {len(jobs)}; kinds: {dict(kinds)}; "
        f"decided by: {dict(verdicts)}"
    )
    print(
        f"seconds per program: median {statistics.median(per_program):.3f}, "
        f"p95 {per_program[int(0.95 * (len(per_program) - 1))]:.3f}, max {per_program[-1]:.3f}"
    )
    for question, result in failures:
        print(f"  FAIL {question.id}: {result.reason} - {result.detail[:160]}")

    trivial = [(f"def f():\n    return {i}\n", [f"assert f() == {i}"], None) for i in range(args.trivial)]
    trivial_results, trivial_seconds, trivial_cpu = timed_run(sandbox, trivial)
    trivial_rate = len(trivial) / trivial_seconds
    print(
        f"trivial programs: {sum(r.passed for r in trivial_results)} / {len(trivial)} passed, "
        f"{trivial_rate:.1f} programs/s; {cpu_text(sandbox, trivial_cpu, len(trivial))}"
    )

    humaneval = run_humaneval(args.humaneval, sandbox) if args.humaneval else None

    if args.json:
        figures = {
            "isolation": sandbox.isolation,
            "isolation_detail": sandbox.isolation_detail,
            "workers": sandbox.workers,
            "cpus": os.cpu_count(),
            "programs": len(jobs),
            "passed": len(jobs) - len(failures),
            "failures": [{"id": q.id, "reason": r.reason, "detail": r.detail} for q, r in failures],
            "passes": passes,
            "verdicts": dict(verdicts),
            "trivial_per_second": trivial_rate,
            "trivial_cpu_seconds_each": trivial_cpu / len(trivial),
            "humaneval": humaneval,
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)
    return 0 if not failures and (humaneval is None or not humaneval["failures"]) else 1


def run_humaneval(source: str, sandbox: Sandbox) -> dict:
    """HumanEval's canonical solutions through the same sandbox: how many pass, and who decided them."""
    task = HumanEvalTask(source=source)
    questions = task.load()
    results = sandbox.run_many([task.job(task.extract_answer(q.solution or "") or "", q) for q in questions])
    failures = [
        {"id": q.id, "reason": r.reason} for q, r in zip(questions, results, strict=True) if not r.passed
    ]
    verdicts = dict(Counter(r.verdict for r in results))
    print(
        f"HumanEval canonical solutions passing: {len(results) - len(failures)} / {len(results)}; decided by: {verdicts}"
    )
    for failure in failures:
        print(f"  FAIL {failure['id']}: {failure['reason']}")
    return {"programs": len(results), "failures": failures, "verdicts": verdicts}


if __name__ == "__main__":
    sys.exit(main())
