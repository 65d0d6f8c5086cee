"""Run untrusted, model-written Python programs against their tests, contained by the operating system.

Every program runs in its own fresh interpreter (``python -I -S -B -u``: isolated mode, no ``site``, so no
site-packages and no ``.pth`` hooks; only the standard library), with an empty environment, its own
directory, resource limits and a wall-clock timeout that kills its whole process group. Where the machine
allows it, an isolation layer hides the host from it (see ``docs/sandbox.md`` for which protections hold
under which layer):

- ``"bwrap"``: bubblewrap. New user (or, as root, dropped privileges), PID, network, IPC and UTS
  namespaces; a root file system holding only ``/usr``, the interpreter and a private size-limited tmpfs;
  no network at all (an empty network namespace).
- ``"landlock"``: the harness itself enters a new user and network namespace (``unshare(2)``) and restricts
  itself with Landlock: reading only the system and interpreter directories, writing only its own
  directory, no TCP, no signals to processes outside the sandbox.
- ``"none"``: resource limits, an empty environment, its own directory and (as root) an unprivileged
  user only. It does not protect files or the network; ``"auto"`` falls back to it with a warning.

**Passing** is never an exit status. The parent makes a random token (:func:`secrets.token_hex`) for each
run and sends it to the harness with the job; the harness writes ``PASS <token>`` on a private pipe only
after the last test has run, and exits at once. Exiting early (``sys.exit``, ``os._exit``), killing the
parent, printing a fake report or crashing leaves no token behind. Tests run in their own namespace with
the builtins as they were before the program ran, and every ``assert`` is rewritten so that the values it
compares or tests for truth must be *plain data* (builtin scalars and containers, or subclasses that do not
redefine comparison or truth): an object whose ``__eq__`` always returns ``True`` fails the test instead of
passing it. What a deliberate attacker inside the process can still do (walk the interpreter's frames to
find the token) is listed in ``docs/sandbox.md``; the operating system bounds what such a program gains to
a false pass, never access to the host.

Results are cached by a hash of (code, tests, setup) in memory (and optionally on disk), and
:meth:`Sandbox.run_many` runs programs in parallel, each driven by a thread.
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import inspect
import itertools
import json
import logging
import marshal
import math
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "ISOLATION_LAYERS",
    "RESULT_KINDS",
    "Sandbox",
    "SandboxResult",
    "IsolationUnavailable",
    "detect_isolation",
]

logger = logging.getLogger(__name__)

#: the isolation layers, strongest first; ``"auto"`` picks the first usable one
ISOLATION_LAYERS = ("bwrap", "landlock", "none")

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

#: when the parent is root, each run gets its own unprivileged user id from this range (no account needs to
#: exist): the process limit then counts that run's processes alone, and concurrent runs cannot signal or
#: trace one another
UNPRIVILEGED_BASE = 1 << 31
UNPRIVILEGED_SPAN = 1 << 24
#: bytes of stdout and stderr kept in a result (the limit that kills a program is ``max_output_bytes``)
KEPT_OUTPUT_BYTES = 8192
#: the report pipe carries a few short lines; more is an attack on the parent's memory
REPORT_LIMIT_BYTES = 65536
#: how long the parent waits for the pipes to close after the program's process has exited
EXIT_GRACE_SECONDS = 0.2
#: the name the program's module gets: ``if __name__ == "__main__":`` blocks do not run (as in HumanEval)
PROGRAM_MODULE_NAME = "__sandbox__"
#: system directories made visible (read-only) to a sandboxed interpreter, when they exist
SYSTEM_DIRECTORIES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: single system files made visible read-only (the dynamic loader's cache)
SYSTEM_FILES = ("/etc/ld.so.cache",)


class IsolationUnavailable(RuntimeError):
    """The requested isolation layer cannot run on this machine; the message says why."""


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


# ============================================================================================================
# The harness: runs inside the sandbox, in a fresh interpreter.
#
# These functions and classes are copied into the child by their source (see _harness_source) and executed
# in a private namespace whose builtins are a private copy, so a program that rebinds builtins, module
# attributes or ``__main__`` names cannot change what the harness does. Everything the harness needs after
# the program has started is captured before (in _HKit, or as objects the program has no reference to).
# They use only the standard library and must stay compatible with the oldest supported Python (3.10).
# ============================================================================================================


class _HUntrusted(Exception):
    """Raised (inside the sandbox) when a test compares a value that is not plain data."""


class _HKit:
    """What the harness needs once untrusted code has run, captured before it runs.

    A program can rebind ``os.write``, ``builtins.exec`` or ``sys.modules``; it cannot reach these
    attributes without walking the interpreter's frames (the limit of any in-process harness).
    """

    def __init__(self, report_fd: int) -> None:
        self.report_fd = report_fd
        self.write = os.write
        self.exit = os._exit
        self.builtins = dict(builtins.__dict__)

    def say(self, line: str) -> None:
        """Write one line on the report pipe (the parent reads it after the run)."""
        data = (line.replace("\n", " ") + "\n").encode("utf-8", "replace")
        while data:
            data = data[self.write(self.report_fd, data) :]

    def fail(self, kind: str, stage: object, detail: str) -> None:
        """Report a failure and end the process at once (no atexit hooks, no finalisers)."""
        try:
            self.say("FAIL\t" + kind + "\t" + str(stage) + "\t" + detail[:500].replace("\t", " "))
        finally:
            self.exit(1)


#: types whose instances are plain values: compared and tested for truth by C code the program cannot change
_H_SCALARS = frozenset(
    {
        int,
        float,
        complex,
        bool,
        str,
        bytes,
        bytearray,
        type(None),
        type(...),
        type(NotImplemented),
        range,
        type,
        type(len),
        type(lambda: None),
    }
)
#: builtin containers: plain when everything inside is plain
_H_CONTAINERS = (tuple, list, dict, set, frozenset)
#: builtin types a subclass may extend and stay plain, if it redefines none of _H_SLOTS
_H_BASES = (tuple, list, dict, set, frozenset, str, bytes, int, float)
#: what decides ``==``, ordering, ``in`` and truth; a plain subclass must inherit all of them unchanged
_H_SLOTS = (
    "__eq__",
    "__ne__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__hash__",
    "__bool__",
    "__len__",
    "__contains__",
)
#: standard-library C types (immutable: the program cannot patch them) trusted as plain, by module and name
_H_STDLIB = frozenset(
    {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("collections", "deque"),
        ("decimal", "Decimal"),
        ("datetime", "date"),
        ("datetime", "datetime"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
    }
)
#: dict views, whose comparisons look at the dict's contents
_H_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
#: compared as the dict it is: its own ``==`` is Python code that calls builtins the program can rebind
_H_COUNTER = Counter
#: Py_TPFLAGS_IMMUTABLETYPE: the type's attributes cannot be set (C types of the standard library)
_H_IMMUTABLE = 1 << 8


def _h_plain(value: object) -> object:
    """``value`` unchanged when it is plain data, else raise :class:`_HUntrusted` naming the culprit type.

    Plain data is what ``==``, ordering, ``in`` and truth work on without calling code the program wrote:
    builtin scalars; builtin containers of plain data; subclasses of builtins that redefine none of the
    comparison or truth methods (named tuples); a few C types of the standard library. An always-equal
    object, a ``str`` subclass with its own ``__eq__``, or a list holding either, is not plain. A
    ``collections.Counter`` (as the value itself, not inside a container) is replaced by a plain dict of its
    counts: Counter's own ``==`` is Python code that calls builtins the program can rebind.
    """
    if type(value) is _H_COUNTER:
        value = dict.copy(value)
    pending = [value]
    seen = set()
    while pending:
        item = pending.pop()
        kind = type(item)
        if type(kind) is not type:  # a metaclass could redefine how the type itself hashes and compares
            raise _HUntrusted(type.__dict__["__qualname__"].__get__(kind))
        if kind in _H_SCALARS or id(item) in seen:
            continue
        seen.add(id(item))
        pending.extend(_h_parts(item, kind))
    return value


def _h_parts(item: object, kind: type) -> list:
    """The values inside a trusted container (read with the builtin's own methods), ``[]`` for a trusted
    scalar; raise :class:`_HUntrusted` when ``kind`` is not trusted."""
    if kind in _H_CONTAINERS or kind in _H_VIEWS:
        return list(dict.keys(item)) + list(dict.values(item)) if kind is dict else list(kind.__iter__(item))
    if kind.__flags__ & _H_IMMUTABLE and (kind.__module__, kind.__qualname__) in _H_STDLIB:
        if issubclass(kind, dict):
            return list(dict.keys(item)) + list(dict.values(item))
        return list(kind.__iter__(item)) if hasattr(kind, "__iter__") else []
    base = _h_plain_base(kind)
    if base is None:
        raise _HUntrusted(kind.__qualname__)
    if base is dict:
        return list(dict.keys(item)) + list(dict.values(item))
    return list(base.__iter__(item)) if base in _H_CONTAINERS else []


def _h_plain_base(kind: type) -> type | None:
    """The builtin base of ``kind`` when ``kind`` (a class whose metaclass is ``type``) redefines no
    comparison or truth method of it, else ``None``."""
    for base in _H_BASES:
        if issubclass(kind, base):
            same = all(_h_lookup(kind, name) is _h_lookup(base, name) for name in _H_SLOTS)
            return base if same else None
    return None


def _h_lookup(kind: type, name: str) -> object:
    """The raw attribute ``name`` of a class from its MRO's dictionaries (no descriptor is called)."""
    for klass in kind.__mro__:
        namespace = klass.__dict__
        if name in namespace:
            return namespace[name]
    return None


def _h_read_job() -> dict:
    """The job the parent wrote on stdin (read to its end), after which stdin becomes ``/dev/null``."""
    chunks = []
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return marshal.loads(b"".join(chunks))


def _h_open_directories(directories: list) -> dict:
    """Open, while still root, the interpreter's directories the unprivileged user cannot reach (a Python under
    ``/root``, which is 0700), and import from them through ``/proc/self/fd/N``: a path through an open
    descriptor needs no permission on the directories above it. Returns {directory: its new path}."""
    moved = {}
    for directory in directories:
        moved[directory] = "/proc/self/fd/" + str(os.open(directory, os.O_PATH))
    # sys.path, and the search paths of packages imported already (encodings: its codecs load later)
    packages = [m.__path__ for m in list(sys.modules.values()) if type(getattr(m, "__path__", None)) is list]
    for paths in [sys.path, *packages]:
        paths[:] = [_h_moved(entry, moved) for entry in paths]
    return moved


def _h_moved(path: str, moved: dict) -> str:
    """``path`` rewritten to go through the open descriptor of the moved directory it lies beneath."""
    for directory, replacement in moved.items():
        if path == directory or path.startswith(directory + "/"):
            return replacement + path[len(directory) :]
    return path


def _h_drop_privileges(ids: list | None, moved: dict) -> None:
    """Become the unprivileged user (only when started as root); afterwards no capability is left. With
    moved directories the process stays dumpable, or ``/proc/self/fd`` would belong to root."""
    if ids:
        os.setgroups([])
        os.setgid(ids[1])
        os.setuid(ids[0])
    if moved:
        import ctypes

        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE


def _h_landlock(config: dict, moved: dict) -> str:
    """Enter new user and network namespaces, then restrict this process with Landlock: read-only access
    beneath ``config["read"]``, full access beneath ``config["write"]``, no TCP bind or connect, no
    signals or abstract sockets outside the sandbox (as far as the kernel's Landlock ABI allows).
    Fails (raises) when Landlock is missing: the caller asked for it, so running without is not an option."""
    import ctypes
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        raise OSError("Landlock is not available (errno " + str(ctypes.get_errno()) + ")")
    netns = libc.unshare(ctypes.c_int(0x10000000 | 0x40000000)) == 0  # CLONE_NEWUSER | CLONE_NEWNET
    fs_rights = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)
    fs_rights |= 1 << 15 if abi >= 5 else 0
    attr = struct.pack("=QQQ", fs_rights, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(444, ctypes.c_char_p(attr[:size]), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError("landlock_create_ruleset failed (errno " + str(ctypes.get_errno()) + ")")
    read_rights = 1 | 4 | 8  # EXECUTE | READ_FILE | READ_DIR
    for path in config["read"]:
        _h_landlock_allow(libc, ruleset, _h_moved(path, moved), read_rights)
    for path in config["write"]:
        _h_landlock_allow(libc, ruleset, _h_moved(path, moved), fs_rights)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError("prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.syscall(446, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
        raise OSError("landlock_restrict_self failed (errno " + str(ctypes.get_errno()) + ")")
    os.close(ruleset)
    return "landlock abi=" + str(abi) + (" netns" if netns else " no-netns")


def _h_landlock_allow(libc: Any, ruleset: int, path: str, rights: int) -> None:
    """Add a Landlock path-beneath rule (files take only the file rights)."""
    import ctypes
    import struct

    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not os.path.isdir(path):  # files take only EXECUTE, WRITE_FILE, READ_FILE, TRUNCATE, IOCTL_DEV
            rights &= 1 | 2 | 4 | (1 << 14) | (1 << 15)
        rule = struct.pack("=Qi", rights, fd)
        if libc.syscall(
            445, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.c_char_p(rule), ctypes.c_uint32(0)
        ):
            raise OSError("landlock_add_rule failed for " + path + " (errno " + str(ctypes.get_errno()) + ")")
    finally:
        os.close(fd)


def _h_set_limits(limits: dict) -> None:
    """Apply the resource limits (soft = hard, so the program cannot raise them; CPU gets one second
    between SIGXCPU and SIGKILL). A limit the parent's own hard limit forbids is capped at that."""
    for name, value in limits.items():
        which = getattr(resource, name)
        _, hard = resource.getrlimit(which)
        soft = value if hard == resource.RLIM_INFINITY else min(value, hard)
        top = soft + 1 if name == "RLIMIT_CPU" else soft
        resource.setrlimit(which, (soft, top if hard == resource.RLIM_INFINITY else min(top, hard)))


def _h_describe(error: BaseException) -> str:
    """``"TypeName: message"``. The message is formatted only for Python's own exception types holding
    plain arguments: a program's exception class, or an argument of its own, could run code in ``__str__``."""
    kind = type(error)
    name = type.__dict__["__qualname__"].__get__(kind)
    args = BaseException.args.__get__(error)
    if isinstance(error, _HUntrusted):
        return args[0]
    if type(kind) is not type or not kind.__flags__ & _H_IMMUTABLE:
        return name
    if isinstance(error, SyntaxError):
        return name + ": " + str(error.msg) + " (line " + str(error.lineno) + ")"
    if all(type(arg) in (str, int, float, type(None)) for arg in args):
        message = kind.__str__(error)
        return name + ": " + message[:300] if message else name
    return name


def _h_failure_kind(error: BaseException, stage: object) -> str:
    """The report kind for an exception raised at ``stage`` (``"program"``, ``"setup"`` or a test index)."""
    if isinstance(error, (SystemExit, KeyboardInterrupt, GeneratorExit)):
        return "exit"
    if isinstance(error, MemoryError):
        return "memory"
    if isinstance(error, RecursionError):
        return "recursion"
    if isinstance(error, _HUntrusted):
        return "untrusted"
    if isinstance(error, AssertionError) and type(stage) is int:
        return "assertion"
    return "error"


def _h_compile_job(kit: _HKit, job: dict) -> tuple:
    """The program, setup and tests compiled (the tests' asserts were rewritten by the parent), each test
    with the names it uses; reports ``syntax`` and exits when the program does not compile."""
    try:
        program = compile(job["program"], "<program>", "exec", dont_inherit=True)  # not the harness's futures
    except (SyntaxError, ValueError) as error:
        kit.fail("syntax", "program", _h_describe(error))
    setup = job["setup"]
    setup = (compile(setup[0], "<setup>", "exec", dont_inherit=True), frozenset(setup[1])) if setup else None
    tests = [(compile(t, "<test>", "exec", dont_inherit=True), frozenset(names)) for t, names in job["tests"]]
    return program, setup, tests


def _h_test_globals(kit: _HKit, namespace: dict) -> dict:
    """The tests' namespace: the program's names, the builtins as they were before the program ran (a
    program that rebinds ``builtins.len`` does not reach the tests) and the plain-value check."""
    names = dict(namespace)
    names["__builtins__"] = dict(kit.builtins)
    names["__name__"] = "__sandbox_tests__"
    names["_sapo_plain_"] = _h_plain
    return names


def _h_shadowing(kit: _HKit, namespace: dict) -> frozenset:
    """The builtin names the program defined for itself (``len = ...``, ``def sum(...)``)."""
    return frozenset(
        name
        for name, value in namespace.items()
        if type(name) is str and name in kit.builtins and value is not kit.builtins[name]
    )


def _h_expose(globals_: dict, namespace: dict, shadowing: frozenset, used: frozenset) -> None:
    """Let a test see the program's own definitions of builtin names only when it uses no other name of the
    program: MBPP's task 126 tests a function named ``sum``, but a program that redefines ``len`` must not
    decide ``assert len(f(x)) == 3``."""
    uses_program = any(name in namespace and name not in shadowing for name in used)
    for name in shadowing:
        if uses_program:
            globals_.pop(name, None)
        else:
            globals_[name] = namespace[name]


def _h_execute(kit: _HKit, compiled: tuple, token: str) -> None:
    """Run program, setup and tests; report ``PASS <token>`` only after the last test, then exit at once."""
    program, setup, tests = compiled
    namespace = {"__name__": PROGRAM_MODULE_NAME, "__builtins__": builtins}
    steps = ([("setup", setup)] if setup is not None else []) + list(enumerate(tests))
    stage = "program"
    try:
        exec(program, namespace)
        globals_ = _h_test_globals(kit, namespace)
        shadowing = _h_shadowing(kit, namespace)
        for label, (code, used) in steps:
            stage = label
            _h_expose(globals_, namespace, shadowing, used)
            exec(code, globals_)
    except BaseException as error:  # noqa: B036 - a program may raise anything, SystemExit included
        kit.fail(_h_failure_kind(error, stage), stage, _h_describe(error))
    kit.say("PASS " + token)
    kit.exit(0)


def _h_main() -> None:
    """The harness's entry point: read the job, isolate, limit, compile, run, report."""
    kit = _HKit(int(sys.argv[1]))
    kit.say("READY")
    job = _h_read_job()
    try:
        moved = _h_open_directories(job["reach"])
        _h_drop_privileges(job["drop"], moved)
        landlock = job["landlock"]
        isolation = _h_landlock(landlock, moved) if landlock is not None else job["isolation"]
        _h_set_limits(job["limits"])
    except Exception as error:
        kit.fail("sandbox", "isolation", _h_describe(error))
    kit.say("ISOLATED " + isolation)
    _h_execute(kit, _h_compile_job(kit, job), job["token"])


_HARNESS_PARTS = (
    _HUntrusted,
    _HKit,
    _h_plain,
    _h_parts,
    _h_plain_base,
    _h_lookup,
    _h_read_job,
    _h_open_directories,
    _h_moved,
    _h_drop_privileges,
    _h_landlock,
    _h_landlock_allow,
    _h_set_limits,
    _h_describe,
    _h_failure_kind,
    _h_compile_job,
    _h_test_globals,
    _h_shadowing,
    _h_expose,
    _h_execute,
    _h_main,
)
_HARNESS_CONSTANTS = ("PROGRAM_MODULE_NAME",)
_HARNESS_TABLES = (
    "_H_SCALARS",
    "_H_CONTAINERS",
    "_H_BASES",
    "_H_SLOTS",
    "_H_STDLIB",
    "_H_VIEWS",
    "_H_IMMUTABLE",
    "_H_COUNTER",
)


@functools.cache
def _harness_source() -> str:
    """The harness program: the parts above, by source, after the imports they use (built once)."""
    module = inspect.getsource(sys.modules[__name__])
    tree = ast.parse(module)
    tables = [
        ast.get_source_segment(module, node)
        for node in tree.body
        if isinstance(node, ast.AnnAssign | ast.Assign)
        and any(isinstance(t, ast.Name) and t.id in _HARNESS_TABLES for t in _assign_targets(node))
    ]
    constants = [f"{name} = {globals()[name]!r}" for name in _HARNESS_CONSTANTS]
    parts = [inspect.getsource(part) for part in _HARNESS_PARTS]
    header = "from __future__ import annotations\nimport builtins, marshal, os, resource, sys\nfrom collections import Counter\n"
    return "\n".join([header, *constants, *tables, *parts, "_h_main()\n"])


def _assign_targets(node: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return list(node.targets) if isinstance(node, ast.Assign) else [node.target]


def _bootstrap(harness: str) -> str:
    """The ``-c`` program: runs the harness in a private namespace with a private copy of the builtins,
    kept in a function's locals so that ``import __main__`` does not reach it."""
    return (
        "# sapo sandbox harness\n"
        "def _sapo_boot(source):\n"
        "    import builtins\n"
        "    space = {'__builtins__': dict(builtins.__dict__), '__name__': 'sapo_sandbox_harness'}\n"
        "    exec(compile(source, '<sapo-harness>', 'exec'), space)\n"
        f"_sapo_boot({harness!r})\n"
    )


# ============================================================================================================
# The parent side.
# ============================================================================================================


@dataclass(frozen=True)
class _Interpreter:
    """The Python that runs sandboxed programs: its executable and its installation prefix."""

    executable: str
    prefix: str

    @property
    def directories(self) -> list[str]:
        """The directories a sandbox must show (read-only) for this interpreter to start and import."""
        dirs = {os.path.realpath(self.prefix), os.path.dirname(self.executable)}
        dirs = {d for d in dirs if not any(_is_beneath(d, s) for s in SYSTEM_DIRECTORIES)}
        return sorted(d for d in dirs if not any(d != o and _is_beneath(d, o) for o in dirs))


@dataclass(frozen=True)
class _Limits:
    """What a sandboxed program may use."""

    timeout: float
    memory_mb: int
    max_processes: int
    max_file_mb: int
    max_open_files: int
    disk_mb: int
    max_output_bytes: int

    def rlimits(self, count_processes: bool) -> dict[str, int]:
        """The ``setrlimit`` values the harness applies (``RLIMIT_NPROC`` only where it counts this
        sandbox's processes rather than all of the user's)."""
        limits = {
            "RLIMIT_AS": self.memory_mb << 20,
            "RLIMIT_CPU": math.ceil(self.timeout) + 1,
            "RLIMIT_FSIZE": self.max_file_mb << 20,
            "RLIMIT_NOFILE": self.max_open_files,
            "RLIMIT_CORE": 0,
        }
        if count_processes:
            limits["RLIMIT_NPROC"] = self.max_processes
        return limits


@dataclass
class _RawRun:
    """What the parent saw of one run, before interpretation."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    report: bytes
    seconds: float
    verdict: str | None  # "timeout", "output" or None


def _is_beneath(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _world_reachable(directory: str) -> bool:
    """Whether any user can traverse every directory down to ``directory`` (its ``o+x`` bits)."""
    path = Path(directory)
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _running_as_root() -> bool:
    return os.geteuid() == 0


# --- the interpreter and the isolation layers ----------------------------------------------------------------

#: detection cache: (layer, interpreter executable, euid) -> (usable, detail). The only module-level state.
_DETECTED: dict[tuple[str, str, int], tuple[bool, str]] = {}
_DETECTED_LOCK = threading.Lock()


def _find_interpreter(python: str | None) -> _Interpreter:
    """The interpreter for sandboxed programs: ``python``, or the real executable behind this process's
    (outside any virtual environment: sandboxed programs see the standard library only)."""
    if python is None:
        executable = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        return _Interpreter(executable, sys.base_prefix)
    executable = shutil.which(python) or python
    probe = subprocess.run(
        [
            executable,
            "-I",
            "-S",
            "-c",
            "import sys; print(sys.base_prefix); print(sys.version_info >= (3, 10))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={},
    )
    lines = probe.stdout.split()
    if probe.returncode != 0 or len(lines) != 2 or lines[1] != "True":
        raise ValueError(f"{python}: not a usable Python 3.10+ interpreter ({probe.stderr.strip()[:200]})")
    return _Interpreter(os.path.realpath(executable), lines[0])


def _bwrap_command(interpreter: _Interpreter, limits: _Limits, as_root: bool) -> list[str]:
    """The bubblewrap command line that wraps the interpreter.

    As root, bubblewrap is privileged: it builds the namespaces without a user namespace and keeps only
    the capabilities to change user, which the harness uses at once to become a fresh unprivileged user
    (a real user id, so the process limit applies: in a user namespace the program would keep root's id,
    which the kernel exempts from that limit). Otherwise bubblewrap makes a user namespace and forbids
    nested ones.
    """
    argv = ["bwrap", "--die-with-parent", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    argv += ["--unshare-cgroup-try", "--hostname", "sandbox", "--clearenv"]
    for name, value in _environment("/sandbox").items():
        argv += ["--setenv", name, value]
    if as_root:
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    argv += _bwrap_system_binds()
    argv += _bwrap_interpreter_binds(interpreter)
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", str(limits.disk_mb << 20), "--perms", "1777", "--tmpfs", "/sandbox"]
    argv += ["--symlink", "sandbox", "/tmp", "--chdir", "/sandbox"]
    return argv


def _bwrap_system_binds() -> list[str]:
    """``/usr`` and the top-level library and binary directories, read-only; symlinks stay symlinks."""
    argv: list[str] = []
    for path in SYSTEM_DIRECTORIES:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for path in SYSTEM_FILES:
        argv += ["--ro-bind-try", path, path]
    return argv


def _bwrap_interpreter_binds(interpreter: _Interpreter) -> list[str]:
    """The interpreter's directories outside ``/usr``, read-only, at their own paths (the executable finds
    its libraries there), with world-traversable parents (``/root`` is 0700 on the host)."""
    argv: list[str] = []
    made: set[str] = set()
    for directory in interpreter.directories:
        parents = list(reversed(Path(directory).parents))[1:]
        for parent in map(str, parents):
            if parent not in made:
                made.add(parent)
                argv += ["--perms", "0755", "--dir", parent]
        argv += ["--ro-bind", directory, directory]
    return argv


def _environment(home: str) -> dict[str, str]:
    """The whole environment of a sandboxed program: nothing from the parent's."""
    return {"HOME": home, "TMPDIR": home, "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}


def _landlock_rules(interpreter: _Interpreter, workdir: str) -> dict[str, list[str]]:
    readable = [p for p in (*SYSTEM_DIRECTORIES, *SYSTEM_FILES) if os.path.exists(p)]
    return {"read": readable + interpreter.directories, "write": [workdir]}


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


# --- test rewriting (in the parent) ----------------------------------------------------------------------


def _plain_call(node: ast.expr) -> ast.expr:
    """``_sapo_plain_(node)`` at the node's place in the source."""
    call = ast.Call(func=ast.Name(id="_sapo_plain_", ctx=ast.Load()), args=[node], keywords=[])
    return ast.copy_location(call, node)


class _PlainChecks(ast.NodeTransformer):
    """Inside an ``assert``: every compared operand and every value tested for truth must be plain."""

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        node.left = _plain_call(node.left)
        node.comparators = [_plain_call(c) for c in node.comparators]
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        node.values = [_plain_call(v) for v in node.values]
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            node.operand = _plain_call(node.operand)
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        node.test = _plain_call(node.test)
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        node.ifs = [_plain_call(condition) for condition in node.ifs]
        return node


class _AssertRewriter(ast.NodeTransformer):
    """Rewrites every ``assert`` of trusted test code (at any depth) with :class:`_PlainChecks`."""

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        node.test = _plain_call(_PlainChecks().visit(node.test))
        return node


def _prepare_test(source: str, name: str) -> tuple[str, list[str]]:
    """Trusted test code with its asserts rewritten (as source, for the harness to compile), and the names it
    uses. Done in the parent so the harness need not import :mod:`ast`; raises ``SyntaxError``."""
    tree = ast.parse(source, name)
    names = sorted({node.id for node in ast.walk(tree) if isinstance(node, ast.Name)})
    tree = ast.fix_missing_locations(_AssertRewriter().visit(tree))
    rewritten = ast.unparse(tree)
    compile(rewritten, name, "exec", dont_inherit=True)
    return rewritten, names


# --- one run ------------------------------------------------------------------------------------------------


class _Runner:
    """Runs programs under one layer, one per call; the threads of a :class:`Sandbox` call it at once."""

    def __init__(self, layer: str, interpreter: _Interpreter, limits: _Limits) -> None:
        self.layer = layer
        self.interpreter = interpreter
        self.limits = limits
        self.as_root = _running_as_root()
        self.bootstrap = _bootstrap(_harness_source())
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
        token = secrets.token_hex(16)
        user = self._user_id()
        workdir = None if self.layer == "bwrap" else self._make_workdir(user)
        try:
            job = self._job(code, prepared_tests, prepared_setup, token, workdir, user)
            raw = self._spawn_and_drive(marshal.dumps(job), workdir)
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        return _interpret(raw, token, self.layer), _isolation_detail(raw.report)

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
        tests: list[tuple[str, list[str]]],
        setup: tuple[str, list[str]] | None,
        token: str,
        workdir: str | None,
        user: int | None,
    ) -> dict:
        """What the harness reads on stdin (marshalled). The token is in it: the harness keeps it out of the
        program's namespaces and writes it only after the last test."""
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


# --- what a run means ---------------------------------------------------------------------------------------


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


# --- the public sandbox -------------------------------------------------------------------------------------


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
