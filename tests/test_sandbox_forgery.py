"""Programs that attack the verdict from inside their own process must not pass, under every usable layer.

Every hostile program below is wrong (it does not compute what its tests ask) and tries to be reported as
passing anyway: by walking the interpreter's frames to the harness, by finding the harness's objects
through ``gc``, by rewriting objects in memory with ``ctypes``, by defining names the tests use, by
exiting early or forging the report. Their tests are ordinary MBPP-style asserts, which the sandbox splits
(:mod:`sapo.sandbox.verdict`): the comparisons run in the parent, on the values the program sent back.
Each attack is checked to work as an attack: the same program with the comparison left in the sandbox
(a test the parent cannot split) still shows what it would have gained, where the in-process verdict
is forgeable.
"""

from __future__ import annotations

import pytest

from sapo.sandbox import ISOLATION_LAYERS, Sandbox, detect_isolation
from sapo.sandbox.verdict import decide, decode_values, split_test, static_names

DETECTED = detect_isolation()
USABLE = [layer for layer in ISOLATION_LAYERS if DETECTED[layer][0]]

#: the tests every hostile program faces: f squares its argument
SQUARE_TESTS = ["assert f(3) == 9", "assert f(4) == 16"]
CLOSE_TESTS = ["assert math.isclose(f(3), 9.0, rel_tol=1e-09)", "assert math.isclose(f(0.5), 0.25)"]
SET_TESTS = ["assert set(f(3)) == {9, 3}", "assert len(f(4)) == 2"]
TRUTH_TESTS = ["assert f(3)", "assert not f(4)"]

#: walking frames up from the program's call to the harness's locals
FRAMES = "import sys\ndef frames():\n    frame = sys._getframe(1)\n    while frame is not None:\n        yield frame\n        frame = frame.f_back\n"
#: the harness's objects, found through the garbage collector
KIT = "import gc\ndef kits():\n    return [o for o in gc.get_objects() if type(o).__name__ == '_HKit']\n"
#: ctypes helpers: the tp_flags word of a class, the digit of a small int
CTYPES = (
    "import ctypes\n"
    "def set_flag(kind, bit):\n"
    "    for offset in range(0, 512, 8):\n"
    "        word = ctypes.c_ulong.from_address(id(kind) + offset)\n"
    "        if word.value == kind.__flags__:\n"
    "            word.value |= bit\n"
    "            return\n"
    "def set_int(number, value):\n"
    "    ctypes.c_uint32.from_address(id(number) + 24).value = value\n"
)
ALWAYS_EQUAL = (
    "class Any:\n    def __eq__(self, other):\n        return True\n    def __bool__(self):\n        return True\n"
    "    __hash__ = object.__hash__\n"
)

#: (name, program, tests): every program is wrong for its tests
HOSTILE = [
    # frames: empty the harness's list of remaining steps, so its loop ends and it reports a pass
    (
        "frames-clear-steps",
        FRAMES
        + "def f(x):\n    for fr in frames():\n        s = fr.f_locals.get('steps')\n        if type(s) is list:\n            s.clear()\n    return 9\n",
        SQUARE_TESTS,
    ),
    (
        "frames-clear-steps-first",
        FRAMES
        + "def f(x):\n    for fr in frames():\n        s = fr.f_locals.get('steps')\n        if type(s) is list:\n            s.clear()\n    return 0\n",
        SQUARE_TESTS,
    ),
    (
        "frames-clear-expressions",
        FRAMES
        + "def f(x):\n    for fr in frames():\n        for v in fr.f_locals.values():\n            if type(v) is list:\n                v.clear()\n    return 9\n",
        SQUARE_TESTS,
    ),
    (
        "frames-clear-on-import",
        FRAMES
        + "for fr in frames():\n    s = fr.f_locals.get('steps')\n    if type(s) is list:\n        s.clear()\ndef f(x):\n    return 0\n",
        SQUARE_TESTS,
    ),
    # frames: read the token and write the pass line itself, then exit
    (
        "frames-token-pass",
        FRAMES
        + "import os\ndef f(x):\n    for fr in frames():\n        kit, token = fr.f_locals.get('kit'), fr.f_locals.get('token')\n        if kit is not None and type(token) is str:\n            kit.say('PASS ' + token)\n            os._exit(0)\n    return 0\n",
        SQUARE_TESTS,
    ),
    (
        "frames-token-raw-write",
        FRAMES
        + "import os, sys\ndef f(x):\n    for fr in frames():\n        token = fr.f_locals.get('token')\n        if type(token) is str:\n            os.write(int(sys.argv[1]), ('PASS ' + token + '\\n').encode())\n            os._exit(0)\n    return 0\n",
        SQUARE_TESTS,
    ),
    (
        "frames-token-on-import",
        FRAMES
        + "import os\nfor fr in frames():\n    kit, token = fr.f_locals.get('kit'), fr.f_locals.get('token')\n    if kit is not None and type(token) is str:\n        kit.say('PASS ' + token)\n        os._exit(0)\ndef f(x):\n    return 0\n",
        SQUARE_TESTS,
    ),
    (
        "frames-forge-values",
        FRAMES
        + 'import os\ndef f(x):\n    for fr in frames():\n        kit, token = fr.f_locals.get(\'kit\'), fr.f_locals.get(\'token\')\n        if kit is not None and type(token) is str:\n            kit.say(\'VALUE\\t0\\t[["ok", ["i", "9"]]]\')\n            kit.say(\'VALUE\\t1\\t[["ok", ["i", "10"]]]\')\n    return 0\n',
        SQUARE_TESTS,
    ),
    (
        "frames-malformed-values",
        FRAMES
        + "import os\ndef f(x):\n    for fr in frames():\n        kit, token = fr.f_locals.get('kit'), fr.f_locals.get('token')\n        if kit is not None and type(token) is str:\n            kit.say('VALUE\\t0\\t[[\"ok\", [\"x\"]]]')\n            kit.say('PASS ' + token)\n            os._exit(0)\n    return 0\n",
        SQUARE_TESTS,
    ),
    # gc: make the harness's failure report a no-op, or its pass unconditional
    (
        "gc-fail-noop",
        KIT + "for kit in kits():\n    kit.fail = lambda *args: None\ndef f(x):\n    return 0\n",
        SQUARE_TESTS,
    ),
    (
        "gc-fail-says-pass",
        KIT
        + "import os\nfor kit in kits():\n    kit.fail = lambda *args, kit=kit: (kit.say('PASS forged'), os._exit(0))\ndef f(x):\n    return 0\n",
        SQUARE_TESTS,
    ),
    (
        "gc-kit-exit-noop",
        KIT
        + "for kit in kits():\n    kit.exit = lambda *args: None\n    kit.fail = lambda *args: None\ndef f(x):\n    return -1\n",
        CLOSE_TESTS,
    ),
    (
        "gc-plain-check-bypass",
        "import gc\nfor o in gc.get_objects():\n    if callable(o) and getattr(o, '__name__', '') == '_h_plain':\n        o.__code__ = (lambda value: value).__code__\n"
        + ALWAYS_EQUAL
        + "def f(x):\n    return Any()\n",
        SQUARE_TESTS,
    ),
    # ctypes: an always-equal class disguised as an immutable standard-library type
    (
        "ctypes-fake-decimal",
        CTYPES
        + ALWAYS_EQUAL
        + "Any.__module__ = 'decimal'\nAny.__qualname__ = 'Decimal'\nset_flag(Any, 1 << 8)\ndef f(x):\n    return Any()\n",
        SQUARE_TESTS,
    ),
    (
        "ctypes-fake-deque",
        CTYPES
        + ALWAYS_EQUAL
        + "Any.__module__ = 'collections'\nAny.__qualname__ = 'deque'\nset_flag(Any, 1 << 8)\ndef f(x):\n    return Any()\n",
        SET_TESTS,
    ),
    (
        "ctypes-fake-datetime",
        CTYPES
        + ALWAYS_EQUAL
        + "Any.__module__ = 'datetime'\nAny.__qualname__ = 'timedelta'\nset_flag(Any, 1 << 8)\ndef f(x):\n    return Any()\n",
        CLOSE_TESTS,
    ),
    # ctypes: change the integers the tests compare against
    (
        "ctypes-int-constants",
        CTYPES + "set_int(9, 5)\nset_int(16, 5)\ndef f(x):\n    return 5\n",
        SQUARE_TESTS,
    ),
    (
        "ctypes-int-in-call",
        CTYPES + "def f(x):\n    set_int(9, 7)\n    set_int(16, 7)\n    return 7\n",
        SQUARE_TESTS,
    ),
    ("ctypes-int-len", CTYPES + "set_int(9, 0)\nset_int(3, 0)\ndef f(x):\n    return [0, 0, 0]\n", SET_TESTS),
    # names the tests use, defined by the program
    (
        "own-math-isclose",
        "class math:\n    @staticmethod\n    def isclose(*args, **kwargs):\n        return True\ndef f(x):\n    return 0.0\n",
        CLOSE_TESTS,
    ),
    (
        "own-math-module-object",
        "import types\nmath = types.SimpleNamespace(isclose=lambda *a, **k: True)\ndef f(x):\n    return 1.0\n",
        CLOSE_TESTS,
    ),
    (
        "patched-real-math",
        "import math\nmath.isclose = lambda *a, **k: True\ndef f(x):\n    return 2.0\n",
        CLOSE_TESTS,
    ),
    (
        "own-set-and-len",
        "def set(x):\n    return {9, 3}\ndef len(x):\n    return 2\ndef f(x):\n    return [0]\n",
        SET_TESTS,
    ),
    (
        "patched-builtins",
        "import builtins\nbuiltins.set = lambda *a: {9, 3}\nbuiltins.len = lambda *a: 2\ndef f(x):\n    return []\n",
        SET_TESTS,
    ),
    # objects that claim to equal everything, or lie about their truth
    ("always-equal", ALWAYS_EQUAL + "def f(x):\n    return Any()\n", SQUARE_TESTS),
    (
        "always-equal-str-subclass",
        "class S(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\ndef f(x):\n    return S('no')\n",
        SQUARE_TESTS,
    ),
    ("always-equal-in-list", ALWAYS_EQUAL + "def f(x):\n    return [Any(), Any()]\n", SET_TESTS),
    (
        "truthy-object",
        "class T:\n    def __bool__(self):\n        return True\ndef f(x):\n    return T()\n",
        TRUTH_TESTS,
    ),
    (
        "metaclass-equal",
        "class M(type):\n    def __eq__(cls, other):\n        return True\n    __hash__ = type.__hash__\nclass C(metaclass=M):\n    pass\ndef f(x):\n    return C\n",
        SQUARE_TESTS,
    ),
    # ending early or forging the report
    ("sys-exit", "import sys\ndef f(x):\n    sys.exit(0)\n", SQUARE_TESTS),
    ("os-exit", "import os\ndef f(x):\n    os._exit(0)\n", SQUARE_TESTS),
    (
        "atexit-pass",
        "import atexit, os\natexit.register(lambda: [os.write(fd, b'PASS x\\n') for fd in range(3, 20) if not os.write(1, b'')])\ndef f(x):\n    raise SystemExit\n",
        SQUARE_TESTS,
    ),
    (
        "print-pass-everywhere",
        "import os\ndef f(x):\n    for fd in range(1, 64):\n        try:\n            os.write(fd, b'PASS 00000000000000000000000000000000\\n')\n        except OSError:\n            pass\n    return 0\n",
        SQUARE_TESTS,
    ),
    (
        "unsendable-generator-of-objects",
        ALWAYS_EQUAL + "def f(x):\n    return (Any() for _ in range(2))\n",
        SET_TESTS,
    ),
]
PROGRAMS = {name: program for name, program, _ in HOSTILE}
#: correct programs, some of them doing the same unusual things harmlessly
CONTROLS = [
    ("square", "def f(x):\n    return x * x\n", SQUARE_TESTS),
    ("square-float", "def f(x):\n    return x ** 2\n", CLOSE_TESTS),
    ("square-pair", "def f(x):\n    return [x * x, x] if x == 3 else (x * x, 1)\n", SET_TESTS),
    ("truth", "def f(x):\n    return x == 3\n", TRUTH_TESTS),
    ("square-with-frames", FRAMES + "def f(x):\n    list(frames())\n    return x * x\n", SQUARE_TESTS),
    ("square-own-math", "class math:\n    pi = 3\ndef f(x):\n    return float(x * x)\n", CLOSE_TESTS),
]


@pytest.fixture(scope="module", params=USABLE)
def box(request) -> Sandbox:
    return Sandbox(timeout=2.0, memory_mb=256, isolation=request.param, cache_size=0)


def test_the_suite_covers_every_kind_of_attack():
    kinds = {name.split("-")[0] for name, _, _ in HOSTILE}
    assert len(HOSTILE) >= 30
    assert {"frames", "gc", "ctypes", "own", "patched", "always", "sys", "os", "atexit", "print"} <= kinds


@pytest.mark.parametrize(("name", "program", "tests"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_program_does_not_pass(box, name, program, tests):
    result = box.run(program, tests)
    assert not result.passed, (name, result)
    assert result.verdict == "parent", result
    assert result.kind != "sandbox", result


@pytest.mark.parametrize(("name", "program", "tests"), CONTROLS, ids=[c[0] for c in CONTROLS])
def test_control_program_passes(box, name, program, tests):
    result = box.run(program, tests)
    assert result.passed and result.verdict == "parent", (name, result)


def test_attacks_are_real_where_the_harness_decides(box):
    """The same attacks against a test the parent cannot split (the comparison inside a comprehension runs
    in the sandbox): frame walking and the program's own ``math`` still forge a pass there, which is why
    the parent decides every test it can split, and why ``verdict`` says which decided."""
    unsplit = ["assert all(f(x) == x * x for x in (3, 4))"]
    forged = box.run(PROGRAMS["frames-token-pass"], unsplit)
    assert forged.verdict == "harness" and forged.passed, forged
    own_math = ["assert all(math.isclose(f(x), x * x) for x in (3, 4))"]
    assert box.run(PROGRAMS["own-math-isclose"], own_math).passed
    assert not box.run(PROGRAMS["own-math-isclose"], CLOSE_TESTS).passed


def test_an_unsendable_value_fails_with_its_type_named(box):
    program = "class Box:\n    pass\ndef f(x):\n    return Box()\n"
    result = box.run(program, SQUARE_TESTS)
    assert result.kind == "untrusted" and result.failed_test == 0, result
    assert "`f(3)`" in result.detail and "Box" in result.detail and "plain data" in result.detail


def test_an_exception_in_a_shipped_call_is_raised_where_the_test_uses_it(box):
    program = "def f(x):\n    return 1 / (x - 3)\n"
    assert box.run(program, ["assert f(4) == 1 or f(3) == 0"]).passed  # short-circuits, as in Python
    result = box.run(program, ["assert f(4) == 1", "assert f(3) == 0"])
    assert result.kind == "error" and result.failed_test == 1 and "ZeroDivisionError" in result.detail


def test_values_arrive_exactly(box):
    program = (
        "import collections, decimal, fractions, datetime\n"
        "def f(x):\n"
        "    return [x, -2 ** 70, 0.1, float('nan'), 1 + 2j, 'é😀\\t\"\\\\', b'\\x00\\xff', bytearray(b'a'),\n"
        "            (1,), {1: [2]}, {3}, frozenset({4}), range(1, 9, 2), None, True,\n"
        "            collections.OrderedDict(a=1), collections.Counter('aab'), collections.deque([5]),\n"
        "            decimal.Decimal('1.10'), fractions.Fraction(1, 3), datetime.date(2026, 12, 3),\n"
        "            datetime.timedelta(days=1, seconds=2), list, type(None), collections.namedtuple('P', 'a')(7)]\n"
    )
    tests = [
        "assert f(3)[:3] == [3, -2 ** 70, 0.1] and f(3)[3] != f(3)[3]",
        "assert f(3)[4:15] == [1 + 2j, 'é😀\\t\"\\\\', b'\\x00\\xff', bytearray(b'a'), (1,), {1: [2]}, {3}, frozenset({4}), range(1, 9, 2), None, True]",
        "assert f(3)[15] == {'a': 1} and f(3)[16] == {'a': 2, 'b': 1} and list(f(3)[17]) == [5]",
        "assert str(f(3)[18]) == '1.10' and f(3)[19] * 3 == 1 and f(3)[20].year == 2026",
        "assert f(3)[21].days == 1 and f(3)[22] is list and f(3)[23] is type(None) and f(3)[24] == (7,)",
    ]
    result = box.run(program, tests)
    assert result.passed and result.verdict == "parent", result


def test_split_keeps_the_comparison_in_the_parent():
    split = split_test(
        "assert math.isclose(f(3), 9.0) and sorted(g(x=1)) == [1]", static_names("def f(x): ...")
    )
    assert split is not None
    assert split.expressions == ("f(3)", "g(x=1)")
    assert "math.isclose" in split.residual and "_sapo_value_(0)" in split.residual
    assert decide(split, decode_values('[["ok", ["f", "0x1.2p+3"]], ["ok", ["l", [["i", "1"]]]]]')) is None
    assert decide(split, decode_values('[["ok", ["f", "0x1.0p+3"]], ["ok", ["l", []]]]'))[0] == "assertion"


@pytest.mark.parametrize(
    "test",
    [
        "assert all(f(x) for x in range(3))",  # the call uses a name the test binds
        "x = f(1)\nassert x == 2",  # an assignment
        "check(f)",  # a bare call: its verdict would be the sandbox's
        "import os\nassert f(os.sep)",  # a module the parent does not import
    ],
)
def test_tests_that_do_not_split_are_left_to_the_harness(test):
    assert split_test(test, frozenset({"f"})) is None


def test_the_program_own_builtin_name_is_the_function_under_test():
    assert split_test("assert sum([1, 2]) == 3", frozenset({"sum"})).expressions == ("sum([1, 2])",)
    assert split_test("assert len(f(1)) == 3", frozenset({"len", "f"})).expressions == ("f(1)",)


@pytest.mark.parametrize(
    "report",
    [
        '{"a": 1}',
        '[["ok"]]',
        '[["ok", ["zz", "1"]]]',
        '[["ok", ["i", "xyz"]]]',
        "[" * 100000,
        '[["raised", 1, 2]]',
    ],
)
def test_malformed_value_reports_are_refused(report):
    from sapo.sandbox.verdict import MalformedValues

    with pytest.raises(MalformedValues):
        decode_values(report)
