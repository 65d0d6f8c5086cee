"""The harness: the code that runs inside the sandbox, in a fresh interpreter, and how it gets there.

The functions and classes prefixed ``_h``/``_H`` are copied into the child by their source (see
:func:`_harness_source`, which reads them from this module and :mod:`~sapo.sandbox.confine`) and run in a private
namespace whose builtins are a private copy, so a program that rebinds builtins, module attributes or
``__main__`` names cannot change what the harness does. Everything the harness needs after the program has
started is captured before (in :class:`_HKit`, or as objects the program has no reference to). They use only
the standard library and must stay compatible with the oldest supported Python (3.10); the header that
:func:`_harness_source` writes imports exactly the modules they use, so a new import here must be added
there too.

The harness reads its job on stdin, applies the in-process part of the isolation layer (in ``confine``),
runs the program, the setup and the tests, and reports on a private pipe: the values of split tests
(``_h_encode``, see :mod:`sapo.sandbox.verdict`), ``PASS <token>`` only after the last test. The plain-value
check (:func:`_h_plain`) of the rewritten asserts of other tests is part of it (:mod:`sapo.sandbox.asserts`).
"""

from __future__ import annotations

import ast
import builtins
import functools
import inspect
import marshal
import os
import sys
from collections import Counter

from sapo.sandbox.confine import (
    _h_deny_unix_sockets,
    _h_drop_privileges,
    _h_landlock,
    _h_landlock_allow,
    _h_moved,
    _h_open_directories,
    _h_pid_namespace,
    _h_read_job,
    _h_set_limits,
)

#: Linux's limit on one command-line argument is 128 KiB: a larger precompiled harness goes as source
MAX_ARGUMENT_BYTES = 120_000
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


#: builtin types a value may be (``type(f(x)) == list``): sent by name
_H_TYPE_NAMES = {
    kind: kind.__name__
    for kind in (int, float, complex, bool, str, bytes, list, tuple, dict, set, frozenset, type(None))
}
#: how deep a value sent back may nest, and how many items an iterator may yield
_H_MAX_DEPTH = 100
_H_MAX_ITEMS = 100000


class _HUnsendable(Exception):
    """Raised (inside the sandbox) for a value that cannot be sent back as plain data; says what it is."""


def _h_entry(value: object) -> list:
    """A shipped expression's value as an entry of the value report: ``["ok", encoded]``, or
    ``["unsendable", why]`` for a value that is not plain data (an object of the program's own class)."""
    try:
        return ["ok", _h_encode(value, 0, set())]
    except _HUnsendable as error:
        return ["unsendable", BaseException.args.__get__(error)[0]]
    except RecursionError:
        return ["unsendable", "nests too deeply to be sent back"]
    except Exception as error:  # the program's iterator or class raised while being read
        return ["unsendable", "could not be read as plain data (" + _h_describe(error) + ")"]


def _h_encode(value: object, depth: int, path: set) -> object:
    """``value`` in the data-only format the parent decodes (:func:`sapo.sandbox.verdict._decode`): ``None``,
    booleans and strings as themselves, everything else as ``[tag, ...]`` with numbers as hexadecimal
    strings. Only builtin scalars and containers (and plain subclasses, sent as their base), a few
    standard-library values and iterators (consumed here) can be sent."""
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if depth > _H_MAX_DEPTH:
        raise _HUnsendable("nests deeper than " + str(_H_MAX_DEPTH) + " levels")
    if kind is int:
        return ["i", int.__format__(value, "x")]
    if kind is float:
        return ["f", float.hex(value)]
    if kind is complex:
        return ["c", float.hex(value.real), float.hex(value.imag)]
    if kind is bytes or kind is bytearray:
        return ["b" if kind is bytes else "ba", kind.hex(value)]
    if kind is range:
        return ["r"] + [int.__format__(n, "x") for n in (value.start, value.stop, value.step)]
    if kind is type and value in _H_TYPE_NAMES:  # hashed by type's own C hash
        return ["T", _H_TYPE_NAMES[value]]
    if kind.__module__ == "fractions" and kind.__qualname__ == "Fraction":  # its metaclass is ABCMeta
        return ["Q", int.__format__(value.numerator, "x"), int.__format__(value.denominator, "x")]
    if type(kind) is not type:
        raise _HUnsendable("is of a class with its own metaclass, which cannot be sent back as plain data")
    if id(value) in path:
        raise _HUnsendable("contains itself")
    path.add(id(value))
    try:
        return _h_encode_composite(value, kind, depth + 1, path)
    finally:
        path.discard(id(value))


def _h_encode_composite(value: object, kind: type, depth: int, path: set) -> list:
    """Containers, standard-library values, plain subclasses and iterators (see :func:`_h_encode`)."""
    tags = {list: "l", tuple: "t", set: "s", frozenset: "fs"}
    if kind in tags:
        return [tags[kind], [_h_encode(item, depth, path) for item in kind.__iter__(value)]]
    if kind is dict:
        return ["d", _h_pairs(value, depth, path)]
    name = (kind.__module__, kind.__qualname__)
    stdlib = name in _H_STDLIB and kind.__flags__ & _H_IMMUTABLE
    if stdlib and name[1] in ("OrderedDict", "defaultdict"):
        tag = "od" if name[1] == "OrderedDict" else "d"
        return [tag, _h_pairs(value, depth, path)]
    if stdlib and name[1] == "deque":
        return ["dq", [_h_encode(item, depth, path) for item in kind.__iter__(value)]]
    if stdlib and name[1] == "Decimal":
        return ["D", kind.__str__(value)]
    if stdlib and name[1] in ("date", "datetime", "time"):
        return [name[1], kind.isoformat(value)]
    if stdlib and name[1] == "timedelta":
        return ["td"] + [int.__format__(n, "x") for n in (value.days, value.seconds, value.microseconds)]
    if kind is _H_COUNTER:
        return ["C", _h_pairs(value, depth, path)]
    base = _h_plain_base(kind)
    if base is not None:  # a named tuple, a str subclass that keeps str's comparisons: sent as its base
        return _h_encode(_h_as_base(value, base), depth, path)
    if _h_lookup(kind, "__next__") is not None:  # a generator, map, zip...: its items, consumed here
        items = []
        for item in value:
            items.append(_h_encode(item, depth, path))
            if len(items) > _H_MAX_ITEMS:
                raise _HUnsendable("is an iterator of more than " + str(_H_MAX_ITEMS) + " items")
        return ["it", items]
    raise _HUnsendable(
        "is of type "
        + type.__dict__["__qualname__"].__get__(kind)
        + ", which cannot be sent back as plain data"
    )


def _h_pairs(value: dict, depth: int, path: set) -> list:
    """A dict's (or a dict subclass's) items as encoded ``[key, value]`` pairs, read with dict's own methods."""
    return [
        [_h_encode(k, depth, path), _h_encode(dict.__getitem__(value, k), depth, path)]
        for k in dict.keys(value)
    ]


def _h_as_base(value: object, base: type) -> object:
    """A plain subclass's value as an object of its builtin base (read with the base's own methods)."""
    if base is dict:
        return {k: dict.__getitem__(value, k) for k in dict.keys(value)}
    if base is str:
        return str.__str__(value)
    if base is int:
        return int.__int__(value)
    if base is float:
        return float.__float__(value)
    if base is bytes:
        return bytes.__getitem__(value, slice(None))
    return base(base.__iter__(value))


def _h_json(node: object) -> str:
    """JSON text of an encoded value (lists, strings, ``None``, booleans): the harness does not import
    :mod:`json` (6 ms of start-up per program). Non-ASCII is escaped, so every string arrives exactly."""
    if node is None:
        return "null"
    if node is True:
        return "true"
    if node is False:
        return "false"
    if type(node) is str:
        if node.isascii() and node.isprintable() and '"' not in node and "\\" not in node:
            return '"' + node + '"'
        return '"' + "".join(_h_json_char(c) for c in node) + '"'
    return "[" + ",".join(_h_json(item) for item in node) + "]"


def _h_json_char(char: str) -> str:
    code = ord(char)
    if 32 <= code < 127 and char != '"' and char != "\\":
        return char
    if code < 0x10000:
        return "\\u" + int.__format__(code, "04x")
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON writes characters beyond the BMP
    return (
        "\\u"
        + int.__format__(0xD800 + (code >> 10), "04x")
        + "\\u"
        + int.__format__(0xDC00 + (code & 0x3FF), "04x")
    )


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
    tests = []
    for mode, source, names in job["tests"]:
        if mode == "values":  # a split test: the expressions whose values the parent compares
            tests.append(
                (
                    "values",
                    [(compile(e, "<test>", "eval", dont_inherit=True), frozenset(n)) for e, n in source],
                )
            )
        else:
            tests.append(("exec", (compile(source, "<test>", "exec", dont_inherit=True), frozenset(names))))
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
    steps = ([("setup", ("exec", setup))] if setup is not None else []) + list(enumerate(tests))
    stage = "program"
    try:
        exec(program, namespace)
        globals_ = _h_test_globals(kit, namespace)
        shadowing = _h_shadowing(kit, namespace)
        for label, (mode, work) in steps:
            stage = label
            if mode == "values":
                kit.say(
                    "VALUE\t"
                    + str(label)
                    + "\t"
                    + _h_json(_h_values(globals_, namespace, shadowing, work, label))
                )
                continue
            _h_expose(globals_, namespace, shadowing, work[1])
            exec(work[0], globals_)
    except BaseException as error:  # noqa: B036 - a program may raise anything, SystemExit included
        kit.fail(_h_failure_kind(error, stage), stage, _h_describe(error))
    kit.say("PASS " + token)
    kit.exit(0)


def _h_values(globals_: dict, namespace: dict, shadowing: frozenset, expressions: list, stage: int) -> list:
    """Evaluate a split test's expressions in order; what each gave (or raised) as report entries. An
    exception is sent as a value, so the parent's evaluation still short-circuits as the test was written."""
    entries = []
    for code, used in expressions:
        _h_expose(globals_, namespace, shadowing, used)
        try:
            value = eval(code, globals_)
        except BaseException as error:  # noqa: B036 - SystemExit included: it fails where the test uses it
            entries.append(["raised", _h_failure_kind(error, stage), _h_describe(error)])
            continue
        entries.append(_h_entry(value))
    return entries


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
    _HUnsendable,
    _HKit,
    _h_plain,
    _h_parts,
    _h_plain_base,
    _h_lookup,
    _h_entry,
    _h_encode,
    _h_encode_composite,
    _h_pairs,
    _h_as_base,
    _h_json,
    _h_json_char,
    _h_values,
    _h_read_job,
    _h_open_directories,
    _h_moved,
    _h_drop_privileges,
    _h_landlock,
    _h_landlock_allow,
    _h_pid_namespace,
    _h_deny_unix_sockets,
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
    "_H_TYPE_NAMES",
    "_H_MAX_DEPTH",
    "_H_MAX_ITEMS",
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


def _bootstrap(harness: str, precompiled: bool = False) -> str:
    """The ``-c`` program: runs the harness in a private namespace with a private copy of the builtins,
    kept in a function's locals so that ``import __main__`` does not reach it. ``precompiled``: ship the
    harness as this interpreter's marshalled code (hexadecimal) instead of source, which saves compiling it
    in every run (about 3 ms, most of what the trusted verdict's larger harness would add); only for an
    interpreter of this very version (marshal's format is per version)."""
    code = marshal.dumps(compile(harness, "<sapo-harness>", "exec", dont_inherit=True)).hex()
    if precompiled and len(code) < MAX_ARGUMENT_BYTES:
        load = f"__import__('marshal').loads(bytes.fromhex({code!r}))"
    else:
        load = f"compile({harness!r}, '<sapo-harness>', 'exec')"
    return (
        "# sapo sandbox harness\n"
        "def _sapo_boot(code):\n"
        "    import builtins\n"
        "    space = {'__builtins__': dict(builtins.__dict__), '__name__': 'sapo_sandbox_harness'}\n"
        "    exec(code, space)\n"
        f"_sapo_boot({load})\n"
    )
