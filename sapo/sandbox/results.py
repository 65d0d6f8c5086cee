"""What a run means: :class:`SandboxResult`, its kinds, and how the parent turns what it saw into one.

The parent reads three pipes (stdout, stderr and the harness's private report pipe) and the exit status
(:class:`_RawRun`). Only ``PASS <token>`` on the report pipe, with the run's own token, is a pass: an exit
status, a fake report or a crash never is.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass, fields
from typing import Any

from sapo.sandbox.verdict import MalformedValues, SplitTest, decide, decode_values

#: what :attr:`SandboxResult.kind` can be
RESULT_KINDS = (
    "passed",  # the harness reported the run's token after the last test
    "assertion",  # a test's assert failed
    "untrusted",  # a test compared a value whose comparison or truth the program could redefine
    "error",  # the program, the setup or a test raised another exception
    "syntax",  # the program does not compile
    "exit",  # the program ended the process (or raised SystemExit) before the tests finished
    "timeout",  # the wall-clock limit
    "memory",  # MemoryError under the address-space limit
    "recursion",  # RecursionError
    "cpu",  # the CPU-time limit (SIGXCPU)
    "output",  # stdout, stderr or the report pipe went over its limit
    "crash",  # killed by a signal (SIGSEGV after a C stack overflow, SIGKILL, ...)
    "forged",  # a pass report without the run's token, or a value report the harness did not write
    "invalid_test",  # a test or the setup does not compile: the caller's data is wrong
    "sandbox",  # the sandbox itself failed (never cached)
)

#: bytes of stdout and stderr kept in a result (the limit that kills a program is ``max_output_bytes``)
KEPT_OUTPUT_BYTES = 8192


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of running one program against its tests.

    Attributes:
        passed: the harness reported the run's secret token after the last test.
        kind: a stable category, one of :data:`RESULT_KINDS` (for code that branches on it).
        reason: a short human reason: ``"passed"``, ``"timeout"``, ``"assertion failed at test 2"``,
            ``"exited before the tests finished"``, ``"output limit"``, ``"syntax error"``...
        detail: more about the reason (the exception message, the signal, the untrusted type), or ``""``.
        stdout, stderr: the first :data:`KEPT_OUTPUT_BYTES` of each stream, decoded leniently.
        seconds: wall-clock time of the run (of the original run, for a cached result).
        returncode: the sandbox process's exit status (negative: killed by that signal), ``None`` if it
            was killed by the parent.
        failed_test: the index (from 0) of the test that failed, or ``None``.
        isolation: the isolation layer the program ran under.
        cached: the result came from the cache (no process was started).
        verdict: who decided the tests: ``"parent"`` (every test was split, and its comparisons evaluated
            outside the program's process on the values it sent back: a program cannot forge this verdict),
            ``"harness"`` (no test split: decided inside the sandbox, where a program that attacks the
            harness can forge it), ``"mixed"``, or ``""`` (no test ran: the tests were invalid).
    """

    passed: bool
    kind: str
    reason: str
    detail: str = ""
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    returncode: int | None = None
    failed_test: int | None = None
    isolation: str = ""
    cached: bool = False
    verdict: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class _RawRun:
    """What the parent saw of one run, before interpretation."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    report: bytes
    seconds: float
    verdict: str | None  # "timeout", "output" or None


def _interpret(raw: _RawRun, token: str, layer: str, splits: list[SplitTest | None]) -> SandboxResult:
    """Turn what the parent saw into a result. A pass needs ``PASS <token>`` on the report pipe and, for each
    split test, its values sent back and its comparisons holding here (:func:`~sapo.sandbox.verdict.decide`).
    The first test that fails, in order, is the one reported."""
    lines = raw.report.decode("utf-8", "replace").splitlines()
    failures = [line for line in lines if line.startswith("FAIL\t")]
    common = {
        "stdout": raw.stdout[:KEPT_OUTPUT_BYTES].decode("utf-8", "replace"),
        "stderr": raw.stderr[:KEPT_OUTPUT_BYTES].decode("utf-8", "replace"),
        "seconds": round(raw.seconds, 4),
        "returncode": raw.returncode,
        "isolation": layer,
        "verdict": _verdict_kind(splits),
    }
    if raw.verdict == "timeout":
        return SandboxResult(False, "timeout", "timeout", "the wall-clock limit was reached", **common)
    if raw.verdict == "output":
        return SandboxResult(False, "output", "output limit", "a stream went over its byte limit", **common)
    try:
        decided = _decide_split_tests(lines, splits, failures[0] if failures else None)
    except MalformedValues as error:
        return SandboxResult(False, "forged", "forged value report", str(error), **common)
    if decided is not None:
        test, kind, detail = decided
        if kind != "missing":
            return _failure_result(f"FAIL\t{kind}\t{test}\t{detail}", common, split=True)
        if "PASS " + token in lines:  # the harness's loop was cut short from inside, then the pass written
            detail = f"a pass report without the values of test {test}"
            return SandboxResult(False, "forged", "forged pass report", detail, failed_test=test, **common)
    if failures:
        return _failure_result(failures[0], common)
    if "PASS " + token in lines:
        return SandboxResult(True, "passed", "passed", **common)
    if any(line.startswith("PASS") for line in lines):
        return SandboxResult(
            False, "forged", "forged pass report", "a PASS line without the run's token", **common
        )
    if "READY" not in lines:
        return SandboxResult(False, "sandbox", "sandbox error", "the harness did not start", **common)
    return _ended_result(raw.returncode, layer, common)


def _verdict_kind(splits: list[SplitTest | None]) -> str:
    """``"parent"`` when every test split, ``"harness"`` when none did (or there are none), else ``"mixed"``."""
    split = sum(s is not None for s in splits)
    return "harness" if split == 0 else "parent" if split == len(splits) else "mixed"


def _decide_split_tests(
    lines: list[str], splits: list[SplitTest | None], failure: str | None
) -> tuple[int, str, str] | None:
    """The first split test that fails here, before any failure the harness reported, as ``(test, kind,
    detail)``, or ``(test, "missing", "")`` for the first whose values never came; ``None`` when every split
    test holds. More than one value report for a test is a forgery (the harness sends one)."""
    reports: dict[int, str] = {}
    for line in lines:
        if line.startswith("VALUE\t"):
            _, test, text = (line.split("\t", 2) + ["", ""])[:3]
            if not test.isdigit() or int(test) in reports or int(test) >= len(splits):
                raise MalformedValues(f"an unexpected value report for test {test[:20]!r}")
            reports[int(test)] = text
    stage = failure.split("\t", 3)[2] if failure and failure.count("\t") >= 2 else None
    if failure is not None and not (stage or "").isdigit():
        return None  # the program or the setup failed before any test
    for test, split in enumerate(splits):
        if failure is not None and stage == str(test):
            return None
        if split is None:
            continue
        if test not in reports:
            return test, "missing", ""
        outcome = decide(split, decode_values(reports[test]))
        if outcome is not None:
            return (test, *outcome)
    return None


def _failure_result(line: str, common: dict[str, Any], split: bool = False) -> SandboxResult:
    """A result from the harness's ``FAIL <kind> <stage> <detail>`` line (or the parent's own, for a split
    test, whose ``untrusted`` detail already says which value could not be sent back)."""
    _, kind, stage, detail = (line.split("\t", 3) + ["", "", ""])[:4]
    test = int(stage) if stage.isdigit() else None
    where = f"at test {test}" if test is not None else f"in {stage}"
    reasons = {
        "assertion": f"assertion failed {where}",
        "untrusted": f"untrusted value {where}",
        "error": f"error {where}",
        "exit": "exited before the tests finished",
        "memory": "memory limit",
        "recursion": "recursion limit",
        "syntax": "syntax error",
        "invalid_test": f"invalid test: {stage} does not compile",
        "sandbox": "sandbox error",
    }
    if kind not in reasons:
        kind, detail = "forged", f"an unknown report line: {line[:200]!r}"
    if kind == "untrusted" and not split:
        detail = (
            f"a test compared a value of type {detail}, whose comparison or truth the program can redefine"
        )
    elif kind in ("exit", "memory", "recursion"):
        detail = f"{detail} {where}"
    return SandboxResult(
        False, kind, reasons.get(kind, "forged pass report"), detail, failed_test=test, **common
    )


def _invalid_test_result(stage: object, error: Exception, layer: str) -> SandboxResult:
    """The result for a test (or setup) that does not compile: the job is wrong, not the program."""
    detail = f"{type(error).__name__}: {getattr(error, 'msg', None) or error}"
    test = stage if isinstance(stage, int) else None
    return SandboxResult(
        False,
        "invalid_test",
        f"invalid test: {stage} does not compile",
        detail,
        failed_test=test,
        isolation=layer,
    )


def _ended_result(returncode: int | None, layer: str, common: dict[str, Any]) -> SandboxResult:
    """A result for a process that ended without a report: a signal, or an exit before the tests ended."""
    number = _signal_number(returncode, layer)
    if number is None:
        return SandboxResult(
            False, "exit", "exited before the tests finished", f"exit status {returncode}", **common
        )
    name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
    if number == signal.SIGXCPU:
        return SandboxResult(False, "cpu", "cpu time limit", name, **common)
    return SandboxResult(False, "crash", f"crashed ({name})", f"killed by {name}", **common)


def _signal_number(returncode: int | None, layer: str) -> int | None:
    """The signal that killed the program, if one did (bubblewrap reports it as 128 + the number)."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    if layer in ("bwrap", "landlock") and 128 < returncode < 128 + 65:  # their init's way to pass a signal on
        return returncode - 128
    return None


def _isolation_detail(report: bytes) -> str:
    for line in report.decode("utf-8", "replace").splitlines():
        if line.startswith("ISOLATED "):
            return line[len("ISOLATED ") :]
    return ""
