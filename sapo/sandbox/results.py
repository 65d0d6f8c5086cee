"""What a run means: :class:`SandboxResult`, its kinds, and how the parent turns what it saw into one.

The parent reads three pipes (stdout, stderr and the harness's private report pipe) and the exit status
(:class:`_RawRun`). Only ``PASS <token>`` on the report pipe, with the run's own token, is a pass: an exit
status, a fake report or a crash never is.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass, fields
from typing import Any

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
    "forged",  # a pass report without the run's token
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


def _interpret(raw: _RawRun, token: str, layer: str) -> SandboxResult:
    """Turn what the parent saw into a result. Only ``PASS <token>`` on the report pipe is a pass."""
    lines = raw.report.decode("utf-8", "replace").splitlines()
    failures = [line for line in lines if line.startswith("FAIL\t")]
    common = {
        "stdout": raw.stdout[:KEPT_OUTPUT_BYTES].decode("utf-8", "replace"),
        "stderr": raw.stderr[:KEPT_OUTPUT_BYTES].decode("utf-8", "replace"),
        "seconds": round(raw.seconds, 4),
        "returncode": raw.returncode,
        "isolation": layer,
    }
    if raw.verdict == "timeout":
        return SandboxResult(False, "timeout", "timeout", "the wall-clock limit was reached", **common)
    if raw.verdict == "output":
        return SandboxResult(False, "output", "output limit", "a stream went over its byte limit", **common)
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


def _failure_result(line: str, common: dict[str, Any]) -> SandboxResult:
    """A result from the harness's ``FAIL <kind> <stage> <detail>`` line."""
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
    if kind == "untrusted":
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
    if layer == "bwrap" and 128 < returncode < 128 + 65:
        return returncode - 128
    return None


def _isolation_detail(report: bytes) -> str:
    for line in report.decode("utf-8", "replace").splitlines():
        if line.startswith("ISOLATED "):
            return line[len("ISOLATED ") :]
    return ""
