"""The trusted verdict: tests split into the values the program must compute and the comparisons on them.

A test such as ``assert f(3) == [1, 2]`` needs the program for one thing only: the value of ``f(3)``. The
parent (:func:`split_test`) cuts every ``assert`` into

- *shipped expressions*: the smallest parts that reach the program's names (``f(3)``, ``root.left``,
  ``list(map(g, xs))``), sent to the sandbox, which evaluates them and sends their values back as data
  (:mod:`sapo.sandbox.harness`' ``_h_encode``: a tagged JSON format that holds builtin scalars and
  containers only, never an object with methods);
- the *residual*: the test with each shipped expression replaced by its value, compiled and evaluated here,
  in the parent, with the real builtins and standard modules (:func:`decide`).

So the comparison, the expected value and names such as ``math`` are never in reach of the program: a
program that walks the interpreter's frames, rewrites constants with ``ctypes`` or defines its own
``math`` can make its own values anything (as it always could), but cannot make a wrong value pass. A test
that does not split this way (statements other than ``assert`` and imports, a program call inside a
comprehension or lambda that binds its arguments, HumanEval's ``check(candidate)``) keeps the harness's
in-process verdict (:mod:`sapo.sandbox.asserts`); :attr:`~sapo.sandbox.SandboxResult.verdict` says which
decided a run.

What the residual may use is closed: the builtins and modules of :data:`PARENT_BUILTINS` and
:data:`PARENT_MODULES` (pure functions of data, no files, no processes). Every other free name of a test is
the program's (or the setup's) and is shipped, so trusted test code never runs program code here, and
program code never runs outside the sandbox.
"""

from __future__ import annotations

import ast
import builtins
import collections
import datetime
import decimal
import fractions
import functools
import importlib
import json
from dataclasses import dataclass

from sapo.sandbox.harness import _H_TYPE_NAMES

#: builtins a test may apply, in the parent, to the values the program returned: pure functions of data
PARENT_BUILTINS = frozenset(
    "abs all any ascii bin bool bytes chr complex dict divmod enumerate filter float format frozenset hash "
    "hex int isinstance issubclass iter len list map max min next oct ord pow range repr reversed round set "
    "slice sorted str sum tuple type zip".split()
)
#: standard modules whose attributes a test may use in the parent (``math.isclose``), resolved to the real
#: modules whatever the program defines under their names
PARENT_MODULES = frozenset(
    "bisect cmath collections copy datetime decimal fractions functools heapq itertools math operator re "
    "statistics string".split()
)
#: how deep the value reports of the sandbox may nest (deeper: a malformed report)
MAX_VALUE_DEPTH = 200
#: the name of the fetch function in the residual: ``_sapo_value_(k)`` is the k-th shipped value
VALUE_NAME = "_sapo_value_"


class ProgramRaised(Exception):
    """A shipped expression raised in the sandbox; raised again where the residual uses its value, so that
    ``a or b`` still short-circuits as the test was written."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class MalformedValues(ValueError):
    """The sandbox's value report is not what the harness writes: only a program that forged it sends one."""


@dataclass(frozen=True)
class SplitTest:
    """One test cut into what the sandbox evaluates and what the parent decides.

    Attributes:
        expressions: the shipped expressions' sources, in evaluation order.
        names: for each shipped expression, the names it uses (the harness's builtin-shadowing rule).
        residual: the test's statements with each shipped expression replaced by ``_sapo_value_(k)``.
    """

    expressions: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]
    residual: str


def static_names(source: str | None) -> frozenset[str]:
    """Names a program (or setup) binds at its top level, as far as its text shows (``def``, ``class``,
    assignments, imports); empty when it does not parse (the sandbox will report that)."""
    if not source:
        return frozenset()
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return frozenset()
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        else:
            for child in ast.walk(node):
                if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                    names.add(child.id)
    return frozenset(names)


def split_test(source: str, defined: frozenset[str]) -> SplitTest | None:
    """Cut ``source`` (one test) into shipped expressions and a residual, or ``None`` when it does not split.

    ``defined``: the names the program and setup bind (:func:`static_names`). A free name of the test is
    the parent's when it is one of :data:`PARENT_BUILTINS` (unless the program defines it and the test uses
    no other name of the program: MBPP task 126 tests a function named ``sum``), a module of
    :data:`PARENT_MODULES` used as ``module.attribute``, or imported by the test itself; every other free
    name is the program's. From each of the program's names the shipped expression grows through
    attribute access, subscripts and calls of it, and through a call that takes it as an argument
    (``map(f, xs)``); it stops at the first operation on a value (a comparison, ``len(...)``).
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    imported: set[str] = set()
    for statement in tree.body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            if not _parent_import(statement):
                return None
            imported.update((a.asname or a.name).split(".")[0] for a in statement.names)
        elif not isinstance(statement, ast.Assert | ast.Pass) and not _is_docstring(statement):
            return None
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    bound = _bound_names(tree) | imported
    program = _program_names(tree, parents, bound, defined)
    roots = _shipped_roots(tree, parents, program)
    for (
        root
    ) in roots:  # a shipped part must stand alone: no name the test itself binds (x in a comprehension)
        if any(isinstance(n, ast.Name) and n.id in bound for n in ast.walk(root)):
            return None
    expressions, names = [], []
    for root in roots:
        expressions.append(ast.unparse(root))
        names.append(tuple(sorted({n.id for n in ast.walk(root) if isinstance(n, ast.Name)})))
    replaced = _Replace({id(root): k for k, root in enumerate(roots)}).visit(tree)
    for statement in replaced.body:
        if isinstance(statement, ast.Assert):
            statement.msg = None  # a message may call the program: a failure is reported without it
    residual = ast.unparse(ast.fix_missing_locations(replaced))
    return SplitTest(tuple(expressions), tuple(names), residual)


def _parent_import(statement: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(statement, ast.Import):
        return all(alias.name in PARENT_MODULES for alias in statement.names)
    return statement.level == 0 and statement.module in PARENT_MODULES


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)


def _bound_names(tree: ast.AST) -> set[str]:
    """Names the test binds itself: comprehension targets, lambda arguments, ``:=`` targets."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound


def _program_names(tree: ast.AST, parents: dict, bound: set[str], defined: frozenset[str]) -> set[str]:
    """The test's free names that belong to the program (see :func:`split_test`)."""
    free = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in bound]
    program = set()
    for node in free:
        name = node.id
        as_module = isinstance(parents.get(node), ast.Attribute) and name in PARENT_MODULES
        if name not in PARENT_BUILTINS and not as_module:
            program.add(name)
    shadowing = {n.id for n in free if n.id in PARENT_BUILTINS and n.id in defined}
    if shadowing and not program:  # the program's own ``sum`` is the function under test
        program |= shadowing
    return program


def _shipped_roots(tree: ast.AST, parents: dict, program: set[str]) -> list[ast.expr]:
    """The outermost shipped expressions, in source order."""
    roots: dict[int, ast.expr] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in program:
            root = _grow(node, parents)
            roots[id(root)] = root
    inner = {id(n) for root in roots.values() for n in ast.walk(root) if n is not root}
    outer = [root for key, root in roots.items() if key not in inner]
    return sorted(outer, key=lambda n: (n.lineno, n.col_offset))


def _grow(node: ast.expr, parents: dict) -> ast.expr:
    """From a program name up to the smallest expression whose value is data (see :func:`split_test`)."""
    while True:
        parent = parents.get(node)
        if isinstance(parent, ast.keyword | ast.Starred):
            holder = parents.get(parent)
            if isinstance(node, ast.Name | ast.Attribute) and isinstance(holder, ast.Call):
                node = holder
                continue
            return node
        if isinstance(parent, ast.Attribute | ast.Subscript) and parent.value is node:
            node = parent
        elif isinstance(parent, ast.Call) and (
            parent.func is node or isinstance(node, ast.Name | ast.Attribute)
        ):
            node = parent  # a call of the program's code, or a call handed the program's function
        else:
            return node


class _Replace(ast.NodeTransformer):
    """Replace each shipped expression (by identity) with ``_sapo_value_(k)``."""

    def __init__(self, index: dict[int, int]) -> None:
        self.index = index

    def visit(self, node: ast.AST) -> ast.AST:
        if id(node) in self.index:
            call = ast.Call(ast.Name(VALUE_NAME, ast.Load()), [ast.Constant(self.index[id(node)])], [])
            return ast.copy_location(call, node)
        return super().visit(node)


# --- the parent's side of the values -------------------------------------------------------------------


def decode_values(text: str) -> list[tuple[str, object]]:
    """A test's value report (a JSON list, one entry per shipped expression) as ``("ok", value)`` or
    ``("raised", (kind, detail))`` or ``("unsendable", detail)``; raises :class:`MalformedValues`."""
    try:
        entries = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise MalformedValues(f"not JSON: {type(error).__name__}") from None
    if type(entries) is not list:
        raise MalformedValues("not a list")
    decoded = []
    for entry in entries:
        if type(entry) is not list or not entry or entry[0] not in ("ok", "raised", "unsendable"):
            raise MalformedValues("an entry is not ok/raised/unsendable")
        if entry[0] == "ok" and len(entry) == 2:
            decoded.append(("ok", _decode(entry[1], 0)))
        elif entry[0] == "raised" and len(entry) == 3 and all(type(x) is str for x in entry[1:]):
            decoded.append(("raised", (entry[1], entry[2])))
        elif entry[0] == "unsendable" and len(entry) == 2 and type(entry[1]) is str:
            decoded.append(("unsendable", entry[1]))
        else:
            raise MalformedValues(f"a malformed {entry[0]} entry")
    return decoded


_SEQUENCES = {"l": list, "t": tuple, "s": set, "fs": frozenset, "dq": collections.deque, "it": iter}
_MAPPINGS = {"d": dict, "od": collections.OrderedDict, "C": collections.Counter}
_DATES = {"date": datetime.date, "datetime": datetime.datetime, "time": datetime.time}
#: the builtin types the harness sends by name (its ``_H_TYPE_NAMES``), by name
_TYPES = {name: kind for kind, name in _H_TYPE_NAMES.items()}


def _decode(node: object, depth: int) -> object:
    """One value of the harness's tagged format (``_h_encode``) as a builtin object."""
    if depth > MAX_VALUE_DEPTH:
        raise MalformedValues("nested too deep")
    if node is None or type(node) in (bool, str):
        return node
    if type(node) is not list or not node or type(node[0]) is not str:
        raise MalformedValues(f"not a tagged value: {type(node).__name__}")
    tag, args = node[0], node[1:]
    try:
        if tag in _SEQUENCES and len(args) == 1 and type(args[0]) is list:
            return _SEQUENCES[tag]([_decode(item, depth + 1) for item in args[0]])
        if tag in _MAPPINGS and len(args) == 1 and type(args[0]) is list:
            pairs = dict(_pair(item, depth + 1) for item in args[0])
            return _MAPPINGS[tag](pairs)
        if all(type(a) is str for a in args):
            return _scalar(tag, args)
    except MalformedValues:
        raise
    except (TypeError, ValueError, OverflowError, decimal.InvalidOperation) as error:
        raise MalformedValues(f"a bad {tag!r} value: {type(error).__name__}") from None
    raise MalformedValues(f"an unknown tag {tag!r}")


def _pair(item: object, depth: int) -> tuple[object, object]:
    if type(item) is not list or len(item) != 2:
        raise MalformedValues("a mapping entry is not a pair")
    return _decode(item[0], depth), _decode(item[1], depth)


def _scalar(tag: str, args: list[str]) -> object:
    """Scalars travel as strings: integers in hexadecimal (no digit limit), floats as ``float.hex``."""
    one = len(args) == 1
    if tag == "i" and one:
        return int(args[0], 16)
    if tag == "f" and one:
        return float.fromhex(args[0])
    if tag == "c" and len(args) == 2:
        return complex(float.fromhex(args[0]), float.fromhex(args[1]))
    if tag == "b" and one:
        return bytes.fromhex(args[0])
    if tag == "ba" and one:
        return bytearray.fromhex(args[0])
    if tag == "r" and len(args) == 3:
        return range(*(int(a, 16) for a in args))
    if tag == "D" and one:
        return decimal.Decimal(args[0])
    if tag == "Q" and len(args) == 2:
        return fractions.Fraction(int(args[0], 16), int(args[1], 16))
    if tag in _DATES and one:
        return _DATES[tag].fromisoformat(args[0])
    if tag == "td" and len(args) == 3:
        return datetime.timedelta(*(int(a, 16) for a in args))
    if tag == "T" and one and args[0] in _TYPES:
        return _TYPES[args[0]]
    raise MalformedValues(f"an unknown tag {tag!r}")


def decide(split: SplitTest, values: list[tuple[str, object]]) -> tuple[str, str] | None:
    """Evaluate the residual of ``split`` on the program's values, here in the parent: ``None`` when the
    test holds, else ``(kind, detail)`` (``assertion``, ``error``, ``untrusted``, or the kind of what a
    shipped expression raised in the sandbox)."""
    if len(values) != len(split.expressions):
        return "forged", f"{len(values)} values for {len(split.expressions)} expressions"

    def fetch(k: int) -> object:
        status, value = values[k]
        if status == "raised":
            raise ProgramRaised(*value)
        if status == "unsendable":
            raise ProgramRaised("untrusted", f"the value of `{split.expressions[k]}` {value}")
        return value

    space = _parent_namespace(fetch)
    try:
        exec(compile(split.residual, "<test>", "exec", dont_inherit=True), space)
    except ProgramRaised as raised:
        return raised.kind, raised.detail
    except AssertionError:
        return "assertion", ""
    except Exception as error:  # the test's own operation on the values failed (a TypeError, an IndexError)
        return "error", f"{type(error).__name__}: {str(error)[:300]}"
    return None


def _parent_namespace(fetch) -> dict:
    """The residual's globals: the allowed builtins, the real modules, the value fetch."""
    return {**_parent_globals(), VALUE_NAME: fetch}


@functools.cache
def _parent_globals() -> dict:
    """What every residual's globals share (built once: the modules imported, the builtins picked)."""
    allowed = {name: getattr(builtins, name) for name in PARENT_BUILTINS}
    allowed["__import__"] = _import_allowed
    return {"__builtins__": allowed} | {name: importlib.import_module(name) for name in PARENT_MODULES}


def _import_allowed(name: str, *args, **kwargs):
    if name.split(".")[0] not in PARENT_MODULES:
        raise ImportError(f"a test may import only {sorted(PARENT_MODULES)} in the parent, not {name!r}")
    return importlib.import_module(name)
