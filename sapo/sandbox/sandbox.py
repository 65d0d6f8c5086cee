"""The public :class:`Sandbox`: choosing the isolation layer, the result cache and the worker pool.

Which layers work is found out once per process and interpreter by running a trivial program under each
(:func:`detect_isolation`); ``"auto"`` takes the strongest usable one and warns when that is not bubblewrap.
Results are cached by a hash of (code, tests, setup) and every setting that can change the outcome, in
memory (and optionally on disk), and :meth:`Sandbox.run_many` runs programs in parallel, each driven by a
thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

from sapo.sandbox.isolation import (
    ISOLATION_LAYERS,
    IsolationUnavailable,
    _find_interpreter,
    _Interpreter,
    _Limits,
)
from sapo.sandbox.process import _Runner
from sapo.sandbox.results import SandboxResult

logger = logging.getLogger(__name__)

#: changes when the way a verdict is reached changes, so that results cached before are not reused
VERDICT_PROTOCOL = 2
#: what the landlock layer reports when it could not set up its PID namespace or its Unix-socket filter
#: (an older kernel, another architecture): a process could then outlive its run, or reach a socket file
PARTIAL_LANDLOCK = ("no-pidns", "unix-allowed")
#: detection cache: (layer, interpreter executable, euid) -> (usable, detail). The only module-level state.
_DETECTED: dict[tuple[str, str, int], tuple[bool, str]] = {}
_DETECTED_LOCK = threading.Lock()


def detect_isolation(python: str | None = None) -> dict[str, tuple[bool, str]]:
    """For each layer of :data:`ISOLATION_LAYERS`: whether it works here and a detail (why not, or what it
    applied). Each layer is tried once per interpreter by running a tiny program in it; the answer is
    cached for the life of the process."""
    interpreter = _find_interpreter(python)
    return {layer: _probe(layer, interpreter) for layer in ISOLATION_LAYERS}


def _probe(layer: str, interpreter: _Interpreter) -> tuple[bool, str]:
    """Whether ``layer`` runs a trivial program correctly (cached)."""
    key = (layer, interpreter.executable, os.geteuid())
    with _DETECTED_LOCK:
        if key in _DETECTED:
            return _DETECTED[key]
    if layer == "bwrap" and shutil.which("bwrap") is None:
        answer = (False, "the bwrap executable is not installed (Debian package: bubblewrap)")
    else:
        answer = _probe_run(layer, interpreter)
    with _DETECTED_LOCK:
        _DETECTED.setdefault(key, answer)
        return _DETECTED[key]


def _probe_run(layer: str, interpreter: _Interpreter) -> tuple[bool, str]:
    limits = _Limits(
        timeout=20.0,
        memory_mb=512,
        max_processes=16,
        max_file_mb=1,
        max_open_files=64,
        disk_mb=1,
        max_output_bytes=1 << 16,
    )
    runner = _Runner(layer, interpreter, limits)
    try:
        result, detail = runner.run("def f():\n    return 1\n", ["assert f() == 1"], None)
    except OSError as error:
        return False, f"{type(error).__name__}: {error}"
    if result.passed:
        return True, detail or layer
    return False, f"{result.reason}: {result.detail} {result.stderr.strip()[:300]}".strip()


def _resolve_isolation(requested: str, interpreter: _Interpreter) -> tuple[str, str]:
    """The layer to use for ``requested`` and its detail; warns when ``"auto"`` has to settle for less than
    bubblewrap, and raises :class:`IsolationUnavailable` when an explicit layer cannot run."""
    if requested == "auto":
        reasons = []
        for layer in ISOLATION_LAYERS:
            usable, detail = _probe(layer, interpreter)
            partial = (
                [gap for gap in PARTIAL_LANDLOCK if gap in detail.split()] if layer == "landlock" else []
            )
            if partial:  # Landlock without its PID namespace or socket filter: auto does not take it
                reasons.append(f"{layer}: runs, but {' '.join(partial)}")
                continue
            if usable:
                if reasons:
                    _warn_fallback(layer, reasons)
                return layer, detail
            reasons.append(f"{layer}: {detail}")
        raise IsolationUnavailable("no isolation layer can run a program here: " + "; ".join(reasons))
    if requested not in ISOLATION_LAYERS:
        raise ValueError(f"isolation must be 'auto' or one of {ISOLATION_LAYERS}, got {requested!r}")
    usable, detail = _probe(requested, interpreter)
    if not usable:
        raise IsolationUnavailable(f"isolation {requested!r} cannot run here: {detail}")
    return requested, detail


def _warn_fallback(layer: str, reasons: list[str]) -> None:
    weaker = "it does NOT protect files or the network" if layer == "none" else "see docs/sandbox.md"
    message = f"sandbox: falling back to isolation {layer!r} ({weaker}); unusable: {'; '.join(reasons)}"
    warnings.warn(message, RuntimeWarning, stacklevel=4)
    logger.warning(message)


class Sandbox:
    """Runs untrusted Python programs against their tests, in parallel, with a result cache.

    Args:
        timeout: wall-clock seconds per program (interpreter start-up, program and tests together).
        memory_mb: address-space limit of the program's process.
        workers: programs run at once by :meth:`run_many` (default: the number of CPUs).
        isolation: ``"auto"`` (the strongest usable layer, warning when it is not bubblewrap), or one of
            :data:`ISOLATION_LAYERS` (an explicit layer that cannot run raises
            :class:`IsolationUnavailable`).
        max_processes: processes and threads the program may have at once (``RLIMIT_NPROC``).
        max_output_bytes: bytes of stdout, and of stderr, after which the program is killed.
        max_file_mb: size of the largest file the program may write (``RLIMIT_FSIZE``).
        max_open_files: file descriptors (``RLIMIT_NOFILE``).
        disk_mb: size of the program's private directory (a tmpfs under bubblewrap).
        cache_size: results kept in memory (least recently used dropped first); 0 disables the cache.
        cache_dir: also keep results as JSON files here, across processes (``None``: memory only).
        python: the interpreter for programs (default: the one running this process, outside its virtual
            environment). Programs see its standard library only.
    """

    def __init__(
        self,
        timeout: float = 5.0,
        memory_mb: int = 512,
        workers: int | None = None,
        isolation: str = "auto",
        max_processes: int = 16,
        max_output_bytes: int = 1 << 20,
        max_file_mb: int = 16,
        max_open_files: int = 64,
        disk_mb: int = 64,
        cache_size: int = 100_000,
        cache_dir: str | None = None,
        python: str | None = None,
    ) -> None:
        if timeout <= 0 or memory_mb < 32 or max_processes < 1 or max_output_bytes < 1:
            raise ValueError(
                "timeout, memory_mb (>= 32), max_processes and max_output_bytes must be positive"
            )
        self.limits = _Limits(
            timeout, memory_mb, max_processes, max_file_mb, max_open_files, disk_mb, max_output_bytes
        )
        self.workers = workers or os.cpu_count() or 1
        self.interpreter = _find_interpreter(python)
        self.isolation, self.isolation_detail = _resolve_isolation(isolation, self.interpreter)
        self._runner = _Runner(self.isolation, self.interpreter, self.limits)
        self._cache: OrderedDict[str, SandboxResult] = OrderedDict()
        self._cache_size = cache_size
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Sandbox(isolation={self.isolation!r} [{self.isolation_detail}], timeout={self.limits.timeout}, "
            f"memory_mb={self.limits.memory_mb}, workers={self.workers})"
        )

    def run(self, code: str, tests: Sequence[str], setup: str | None = None) -> SandboxResult:
        """Run ``code``, then ``setup``, then each test in order; pass only if every test ran to its end."""
        key = self.cache_key(code, tests, setup)
        cached = self._cached(key)
        return cached if cached is not None else self._run_fresh(key, code, tests, setup)

    def run_many(
        self, jobs: Iterable[tuple[str, Sequence[str]] | tuple[str, Sequence[str], str | None]]
    ) -> list[SandboxResult]:
        """Run many ``(code, tests)`` or ``(code, tests, setup)`` jobs, :attr:`workers` at a time; results
        come back in the order of ``jobs``. Identical jobs run once."""
        jobs = [(job[0], job[1], job[2] if len(job) > 2 else None) for job in jobs]
        keys = [self.cache_key(*job) for job in jobs]
        results: dict[str, SandboxResult] = {}
        for key in keys:
            cached = self._cached(key)
            if cached is not None:
                results[key] = cached
        todo = {key: job for key, job in zip(keys, jobs, strict=True) if key not in results}
        if todo:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(todo))) as pool:
                fresh = pool.map(lambda item: self._run_fresh(item[0], *item[1]), todo.items())
                results.update(zip(todo, fresh, strict=True))
        return [results[key] for key in keys]

    def cache_key(self, code: str, tests: Sequence[str], setup: str | None = None) -> str:
        """The hash a result is cached under: the job and every setting that can change its outcome."""
        if isinstance(tests, str):
            raise TypeError("tests must be a sequence of test sources, not one string")
        settings = asdict(self.limits) | {"isolation": self.isolation, "python": self.interpreter.executable}
        settings["verdict"] = VERDICT_PROTOCOL
        text = json.dumps([code, list(tests), setup or "", settings], sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def clear_cache(self) -> None:
        """Forget the in-memory results (files in ``cache_dir`` stay)."""
        with self._lock:
            self._cache.clear()

    @property
    def processes_started(self) -> int:
        """How many sandboxed processes this sandbox has started (cache hits start none)."""
        return self._runner.spawned

    def _run_fresh(self, key: str, code: str, tests: Sequence[str], setup: str | None) -> SandboxResult:
        """Run the job (no cache lookup) and keep its result."""
        result, _ = self._runner.run(code, tests, setup)
        self._store(key, result)
        return result

    # --- the cache ------------------------------------------------------------------------------------------
    def _cached(self, key: str) -> SandboxResult | None:
        if self._cache_size <= 0:
            return None
        with self._lock:
            result = self._cache.get(key)
            if result is not None:
                self._cache.move_to_end(key)
                return replace(result, cached=True)
        result = self._read_disk(key)
        if result is not None:
            self._remember(key, result)
            return replace(result, cached=True)
        return None

    def _store(self, key: str, result: SandboxResult) -> None:
        """Keep a result, unless the sandbox itself failed (that says nothing about the program)."""
        if self._cache_size <= 0 or result.kind == "sandbox":
            return
        self._remember(key, result)
        self._write_disk(key, result)

    def _remember(self, key: str, result: SandboxResult) -> None:
        with self._lock:
            self._cache[key] = result
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _disk_path(self, key: str) -> Path | None:
        return self._cache_dir / key[:2] / f"{key}.json" if self._cache_dir else None

    def _read_disk(self, key: str) -> SandboxResult | None:
        path = self._disk_path(key)
        if path is None or not path.is_file():
            return None
        try:
            return SandboxResult.from_dict(json.loads(path.read_text("utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def _write_disk(self, key: str, result: SandboxResult) -> None:
        path = self._disk_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(json.dumps(replace(result, cached=False).to_dict()), "utf-8")
        os.replace(tmp, path)
