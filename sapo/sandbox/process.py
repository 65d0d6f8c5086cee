"""One run: driving the sandboxed child process from the parent.

:class:`_Runner` prepares the job (tests rewritten, a fresh token, a fresh user id as root, a private
directory), starts the interpreter (under bubblewrap when that is the layer) in its own session, feeds it
the job on stdin, reads its stdout, stderr and report pipe with byte caps, enforces the wall-clock deadline
and then kills its whole process group. What it saw is interpreted by :mod:`sapo.sandbox.results`.
"""

from __future__ import annotations

import itertools
import marshal
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence

from sapo.sandbox.asserts import _prepare_test
from sapo.sandbox.harness import _bootstrap, _harness_source
from sapo.sandbox.isolation import (
    _bwrap_command,
    _environment,
    _Interpreter,
    _landlock_rules,
    _Limits,
    _running_as_root,
    _world_reachable,
)
from sapo.sandbox.results import SandboxResult, _interpret, _invalid_test_result, _isolation_detail, _RawRun
from sapo.sandbox.verdict import split_test, static_names

#: when the parent is root, each run gets its own unprivileged user id from this range (no account needs to
#: exist): the process limit then counts that run's processes alone, and concurrent runs cannot signal or
#: trace one another
UNPRIVILEGED_BASE = 1 << 31
UNPRIVILEGED_SPAN = 1 << 24
#: the report pipe carries a few short lines and the values of split tests; more is an attack on the
#: parent's memory (and fails the run as ``output``)
REPORT_LIMIT_BYTES = 1 << 20
#: how long the parent waits for the pipes to close after the program's process has exited
EXIT_GRACE_SECONDS = 0.2


class _Runner:
    """Runs programs under one layer, one per call; the threads of a :class:`Sandbox` call it at once."""

    def __init__(self, layer: str, interpreter: _Interpreter, limits: _Limits) -> None:
        self.layer = layer
        self.interpreter = interpreter
        self.limits = limits
        self.as_root = _running_as_root()
        self.bootstrap = _bootstrap(_harness_source(), precompiled=interpreter.is_parent)
        self.bwrap = _bwrap_command(interpreter, limits, self.as_root) if layer == "bwrap" else []
        self.spawned = 0
        self._lock = threading.Lock()
        self._next_user = itertools.count(secrets.randbelow(UNPRIVILEGED_SPAN))
        dropping = self.as_root and layer != "bwrap"
        self.unreachable = [d for d in interpreter.directories if dropping and not _world_reachable(d)]

    def run(self, code: str, tests: Sequence[str], setup: str | None) -> tuple[SandboxResult, str]:
        """Run one program; return its result and the isolation detail the harness reported. Tests that do
        not compile are the caller's error: reported as ``invalid_test`` without starting a process."""
        stage: object = "setup"
        try:
            prepared_setup = _prepare_test(setup, "<setup>") if setup else None
            prepared_tests = []
            for stage, test in enumerate(tests):
                prepared_tests.append(_prepare_test(test, f"<test {stage}>"))
        except (SyntaxError, ValueError) as error:
            return _invalid_test_result(stage, error, self.layer), ""
        defined = static_names(code) | static_names(setup)
        splits = [split_test(test, defined) for test in tests]
        token = secrets.token_hex(16)
        user = self._user_id()
        workdir = None if self.layer == "bwrap" else self._make_workdir(user)
        try:
            job_tests = [
                ("values", list(zip(split.expressions, split.names, strict=True)), [])
                if split is not None
                else ("exec", *prepared)
                for split, prepared in zip(splits, prepared_tests, strict=True)
            ]
            job = self._job(code, job_tests, prepared_setup, token, workdir, user)
            raw = self._spawn_and_drive(marshal.dumps(job), workdir)
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        return _interpret(raw, token, self.layer, splits), _isolation_detail(raw.report)

    def _user_id(self) -> int | None:
        """A fresh unprivileged user id for one run when the parent is root (see ``UNPRIVILEGED_BASE``)."""
        if not self.as_root:
            return None
        with self._lock:
            return UNPRIVILEGED_BASE + next(self._next_user) % UNPRIVILEGED_SPAN

    def _make_workdir(self, user: int | None) -> str:
        workdir = tempfile.mkdtemp(prefix="sapo-sandbox-")
        if user is not None:
            os.chown(workdir, user, user)
        return workdir

    def _job(
        self,
        code: str,
        tests: list[tuple[str, object, list[str]]],
        setup: tuple[str, list[str]] | None,
        token: str,
        workdir: str | None,
        user: int | None,
    ) -> dict:
        """What the harness reads on stdin (marshalled). The token is in it: the harness keeps it out of the
        program's namespaces and writes it only after the last test. Each test is ``("exec", source,
        names)`` (the harness decides it) or ``("values", [(expression, names), ...], [])`` (the harness
        sends the values back and the parent decides, :mod:`sapo.sandbox.verdict`)."""
        counts_processes = self.layer != "none" or self.as_root
        return {
            "token": token,
            "program": code,
            "setup": setup,
            "tests": tests,
            "limits": self.limits.rlimits(counts_processes),
            "drop": [user, user] if user is not None else None,
            "reach": self.unreachable,
            "landlock": _landlock_rules(self.interpreter, workdir) if self.layer == "landlock" else None,
            "isolation": self.layer,
        }

    def _command(self, report_fd: int) -> list[str]:
        python = [self.interpreter.executable, "-I", "-S", "-B", "-u", "-c", self.bootstrap, str(report_fd)]
        return self.bwrap + python

    def _spawn_and_drive(self, job: bytes, workdir: str | None) -> _RawRun:
        with self._lock:
            self.spawned += 1
        report_r, report_w = os.pipe()
        try:
            process = subprocess.Popen(
                self._command(report_w),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(report_w,),
                cwd=workdir or "/",
                env=_environment(workdir or "/sandbox"),
                start_new_session=True,
            )
        except BaseException:
            os.close(report_r)
            raise
        finally:
            os.close(report_w)
        try:
            return _drive(process, job, report_r, self.limits)
        finally:
            os.close(report_r)


def _drive(process: subprocess.Popen, job: bytes, report_fd: int, limits: _Limits) -> _RawRun:
    """Feed the job, read the three pipes with caps, enforce the deadline, then kill the process group.

    Output is read as it comes and never buffered past its cap: going over the cap kills the program.
    The loop ends when every pipe is closed, or shortly after the process exits (a child it left behind
    may keep a pipe open), or at the deadline.
    """
    started = time.monotonic()
    deadline = started + limits.timeout
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    caps = {
        process.stdout.fileno(): limits.max_output_bytes,
        process.stderr.fileno(): limits.max_output_bytes,
    }
    caps[report_fd] = REPORT_LIMIT_BYTES
    buffers = {fd: bytearray() for fd in caps}
    pending = memoryview(job)
    verdict = None
    with selectors.DefaultSelector() as selector:
        for fd in caps:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        stdin_fd = process.stdin.fileno()
        os.set_blocking(stdin_fd, False)
        selector.register(stdin_fd, selectors.EVENT_WRITE)
        exited_at = None
        while selector.get_map() and verdict is None:
            now = time.monotonic()
            if now >= deadline:
                verdict = "timeout"
                break
            if exited_at is None and process.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > EXIT_GRACE_SECONDS:
                break
            for key, _ in selector.select(timeout=min(deadline - now, 0.05)):
                if key.fd == stdin_fd:
                    pending = _feed(process, stdin_fd, pending, selector)
                elif not _read_capped(key.fd, buffers[key.fd], caps[key.fd], selector):
                    verdict = "output"
    _kill_group(process)
    seconds = time.monotonic() - started
    returncode = None if verdict else process.returncode
    stdout, stderr = bytes(buffers[process.stdout.fileno()]), bytes(buffers[process.stderr.fileno()])
    for stream in (process.stdin, process.stdout, process.stderr):
        stream.close()
    return _RawRun(returncode, stdout, stderr, bytes(buffers[report_fd]), seconds, verdict)


def _feed(
    process: subprocess.Popen, fd: int, pending: memoryview, selector: selectors.BaseSelector
) -> memoryview:
    """Write what the pipe takes of the job; close stdin when all is written (or the reader is gone)."""
    assert process.stdin is not None
    try:
        pending = pending[os.write(fd, pending[: 1 << 16]) :]
    except BlockingIOError:
        return pending
    except (BrokenPipeError, ConnectionResetError):
        pending = pending[:0]
    if not pending:
        selector.unregister(fd)
        process.stdin.close()
    return pending


def _read_capped(fd: int, buffer: bytearray, cap: int, selector: selectors.BaseSelector) -> bool:
    """Read what is there into ``buffer`` up to ``cap``; ``False`` when the stream went over its cap."""
    try:
        chunk = os.read(fd, 1 << 16)
    except BlockingIOError:
        return True
    if not chunk:
        selector.unregister(fd)
        return True
    room = cap - len(buffer)
    buffer += chunk[:room]
    return len(chunk) <= room


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the program's whole process group (its own session), then reap the process.

    Under bubblewrap this kills bwrap, whose death takes the sandbox's PID namespace with it.
    """
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
