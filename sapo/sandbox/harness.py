"""The harness: the code that runs inside the sandbox, in a fresh interpreter, and how it gets there.

The functions and classes prefixed ``_h``/``_H`` are copied into the child by their source (see
:func:`_harness_source`, which reads them from this module's own source text) and executed in a private
namespace whose builtins are a private copy, so a program that rebinds builtins, module attributes or
``__main__`` names cannot change what the harness does. Everything the harness needs after the program has
started is captured before (in :class:`_HKit`, or as objects the program has no reference to). They use only
the standard library and must stay compatible with the oldest supported Python (3.10); the header that
:func:`_harness_source` writes imports exactly the modules they use, so a new import here must be added
there too.

The harness reads its job on stdin, applies the in-process part of the isolation layer (dropping root
privileges, Landlock, resource limits), runs the program, the setup and the tests, and reports on a
private pipe: ``PASS <token>`` only after the last test. The plain-value check (:func:`_h_plain`) that the
rewritten asserts call is part of it (see :mod:`sapo.sandbox.asserts`).
"""

from __future__ import annotations

import ast
import builtins
import functools
import inspect
import marshal
import os
import resource
import sys
from collections import Counter
from typing import Any

#: the name the program's module gets: ``if __name__ == "__main__":`` blocks do not run (as in HumanEval)
PROGRAM_MODULE_NAME = "__sandbox__"


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


# --- shipping the harness to the child -------------------------------------------------------------------

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
