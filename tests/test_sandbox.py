"""The sandbox: hostile programs are contained and reported as failures with their reason, the host (this
test process, its files, its environment, its network listeners) is unharmed, and the pass signal cannot be
faked by exiting, by forging the report, or by an object that claims to equal everything.

Every test that needs a protection runs under each isolation layer that provides it on this machine
(``"none"`` protects neither files nor the network, so it is left out of those). Timeouts are short to keep
the file fast.
"""

from __future__ import annotations

import collections
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from sapo.sandbox import (
    ISOLATION_LAYERS,
    RESULT_KINDS,
    IsolationUnavailable,
    Sandbox,
    SandboxResult,
    detect_isolation,
    harness,
    isolation,
    process,
    results,
)
from sapo.sandbox import sandbox as sandbox_module

DETECTED = detect_isolation()
USABLE = [layer for layer in ISOLATION_LAYERS if DETECTED[layer][0]]
PROTECTING = [layer for layer in USABLE if layer != "none"]
AS_ROOT = os.geteuid() == 0
#: under "none" without root, a program runs as this very user: process-wide attacks would hit us
SAFE_FOR_PROCESS_ATTACKS = [layer for layer in USABLE if layer != "none" or AS_ROOT]
TIMEOUT = 1.0


def make_sandbox(layer: str, **kwargs) -> Sandbox:
    settings = {"timeout": TIMEOUT, "memory_mb": 256, "isolation": layer, "cache_size": 0} | kwargs
    return Sandbox(**settings)


@pytest.fixture(scope="module", params=USABLE)
def box(request) -> Sandbox:
    return make_sandbox(request.param)


@pytest.fixture(scope="module", params=PROTECTING)
def guarded(request) -> Sandbox:
    """A sandbox under a layer that protects files and the network."""
    return make_sandbox(request.param)


@pytest.fixture(scope="module", params=SAFE_FOR_PROCESS_ATTACKS)
def contained(request) -> Sandbox:
    """A sandbox under which process-wide attacks (fork bombs, kill -1) cannot reach this process."""
    return make_sandbox(request.param)


@pytest.fixture
def exposed_dir():
    """A world-writable directory outside the program's own, so that only the isolation layer (not file
    permissions or the unprivileged user) stands between a program and it."""
    path = Path(tempfile.mkdtemp(prefix="sapo-canary-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def harness_processes() -> list[int]:
    """Processes still running a sandbox harness (fork bombs, stragglers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"# sapo sandbox harness" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_until_no_harness(seconds: float = 3.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := harness_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def assert_failed(result: SandboxResult, kind: str) -> None:
    assert not result.passed, result
    assert result.kind == kind, result
    assert result.kind in RESULT_KINDS


# --- ordinary programs -----------------------------------------------------------------------------------


def test_correct_program_passes(box):
    result = box.run(
        "def add(a, b):\n    return a + b\n", ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    )
    assert result.passed and result.kind == "passed" and result.reason == "passed", result
    assert result.isolation == box.isolation


def test_wrong_program_fails_at_the_failing_test(box):
    result = box.run("def add(a, b):\n    return a - b\n", ["assert add(1, 0) == 1", "assert add(1, 2) == 3"])
    assert_failed(result, "assertion")
    assert result.reason == "assertion failed at test 1" and result.failed_test == 1


def test_syntax_error_is_reported(box):
    assert_failed(box.run("def f(:\n    return 1\n", ["assert f() == 1"]), "syntax")


def test_exception_in_a_test_is_an_error_at_that_test(box):
    result = box.run("def f(x):\n    return 1 / x\n", ["assert f(1) == 1", "assert f(0) == 1"])
    assert_failed(result, "error")
    assert result.reason == "error at test 1" and "ZeroDivisionError" in result.detail


def test_setup_runs_after_the_program_and_before_the_tests(box):
    code = "class Node:\n    def __init__(self, v):\n        self.v = v\ndef value(n):\n    return n.v\n"
    result = box.run(code, ["assert value(root) == 7"], setup="root = Node(7)")
    assert result.passed, result


def test_standard_library_imports_work(box):
    code = (
        "import collections, decimal, heapq, itertools, json, math, re\ndef f():\n    return math.isqrt(16)\n"
    )
    assert box.run(code, ["assert f() == 4"]).passed


def test_program_is_compiled_as_plain_python(box):
    # the harness's own ``from __future__ import annotations`` must not leak into the program
    code = "def f(x: int) -> int:\n    return x\n"
    assert box.run(code, ["assert f.__annotations__['x'] is int"]).passed


def test_output_is_kept(box):
    result = box.run("print('hello')\nimport sys\nprint('oops', file=sys.stderr)\n", [])
    assert result.passed and result.stdout == "hello\n" and result.stderr == "oops\n"


def test_stdin_is_empty(box):
    assert_failed(box.run("x = input()\n", []), "error")


def test_invalid_test_is_reported_as_such(box):
    result = box.run("x = 1\n", ["assert x ==", "assert True"])
    assert_failed(result, "invalid_test")


# --- resources --------------------------------------------------------------------------------------------


def test_infinite_loop_times_out(box):
    started = time.monotonic()
    result = box.run("while True:\n    pass\n", ["assert True"])
    assert_failed(result, "timeout")
    assert time.monotonic() - started < TIMEOUT + 1.0


def test_fork_bomb_is_contained_and_cleaned_up(contained):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = contained.run(bomb, ["assert True"])
    assert result.kind in ("timeout", "crash"), result
    assert not wait_until_no_harness(), "processes of the fork bomb outlived the run"
    assert contained.run("def f():\n    return 1\n", ["assert f() == 1"]).passed


def test_memory_bomb_hits_the_memory_limit(box):
    assert_failed(box.run("x = bytearray(1 << 40)\n", ["assert True"]), "memory")
    growing = "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n"
    assert_failed(box.run(growing, ["assert True"]), "memory")


def test_a_gigabyte_of_output_is_cut_off(box):
    flood = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n"
    result = box.run(flood, ["assert True"])
    assert_failed(result, "output")
    assert len(result.stdout) <= results.KEPT_OUTPUT_BYTES


def test_file_bomb_is_stopped(box):
    bomb = "block = b'x' * (1 << 20)\nwith open('big.bin', 'wb') as f:\n    for _ in range(200):\n        f.write(block)\n"
    result = box.run(bomb, ["assert True"])
    assert_failed(result, "error")
    assert "File too large" in result.detail or "No space" in result.detail, result


def test_unbounded_recursion_fails(box):
    result = box.run("def f(n):\n    return f(n + 1)\n", ["assert f(0) == 1"])
    assert_failed(result, "recursion")
    assert result.failed_test == 0


# --- the host is out of reach -----------------------------------------------------------------------------


def test_files_outside_the_program_directory_survive(guarded, exposed_dir):
    canary = exposed_dir / "canary.txt"
    canary.write_text("alive")
    canary.chmod(0o666)
    attacks = [
        f"open({str(canary)!r}, 'w').write('dead')",
        f"import os\nos.remove({str(canary)!r})",
        f"open({str(exposed_dir / 'planted.txt')!r}, 'w').write('x')",
        f"print(open({str(canary)!r}).read())",
        "open('/usr/planted.txt', 'w').write('x')",
    ]
    for attack in attacks:
        result = guarded.run(attack + "\n", ["assert True"])
        assert_failed(result, "error")
        assert "alive" not in result.stdout
    assert canary.read_text() == "alive"
    assert sorted(p.name for p in exposed_dir.iterdir()) == ["canary.txt"]
    assert not Path("/usr/planted.txt").exists()


def test_program_has_a_writable_directory_of_its_own(box):
    code = "import os, tempfile\nopen('scratch.txt', 'w').write('x')\nwith tempfile.TemporaryFile() as f:\n    f.write(b'y')\n"
    assert box.run(code, ["assert open('scratch.txt').read() == 'x'"]).passed


def test_host_environment_is_invisible(box, monkeypatch):
    secret = "s3cr3t-" + os.urandom(8).hex()
    monkeypatch.setenv("SAPO_TEST_SECRET", secret)
    spy = (
        "import glob, os\n"
        "seen = [repr(dict(os.environ))]\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        seen.append(open(path, 'rb').read().decode('latin-1'))\n"
        "    except OSError:\n"
        "        pass\n"
        "leaks = [text for text in seen if 'SAPO_TEST_SECRET' in text]\n"
        "print('LEAK' if leaks else 'clean', leaks)\n"
    )
    result = box.run(spy, ["assert not leaks"])
    if box.isolation == "none" and not AS_ROOT:
        pytest.skip("'none' as a normal user runs the program as that user: /proc/*/environ is readable")
    assert result.passed, result
    assert secret not in result.stdout and "LEAK" not in result.stdout
    assert "SAPO_TEST_SECRET" not in result.stdout


def test_network_is_unreachable(guarded):
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(1)
        tcp.settimeout(0.3)
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(0.3)
        connect = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=1)\n"
            "s.sendall(b'stolen')\n"
        )
        assert_failed(guarded.run(connect, ["assert True"]), "error")
        with pytest.raises(socket.timeout):
            tcp.accept()
        if "no-netns" in guarded.isolation_detail:
            pytest.skip("without a network namespace Landlock blocks TCP only")
        datagram = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'stolen', ('127.0.0.1', {udp.getsockname()[1]}))\n"
        )
        guarded.run(datagram, ["assert True"])
        with pytest.raises(socket.timeout):
            udp.recvfrom(100)
    finally:
        tcp.close()
        udp.close()


def test_unix_socket_at_a_host_path_is_unreachable(guarded, exposed_dir):
    """Landlock does not cover connecting to a socket file; the landlock layer's seccomp filter refuses
    ``socket(AF_UNIX)``, and under bubblewrap the path does not exist."""
    path = exposed_dir / "listener.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        path.chmod(0o777)
        server.listen(1)
        server.settimeout(0.3)
        connect = (
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            f"s.connect({str(path)!r})\n"
            "s.sendall(b'stolen')\n"
        )
        result = guarded.run(connect, ["assert True"])
        assert_failed(result, "error")
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def processes_named(name: str, seconds: float = 3.0) -> list[int]:
    """Processes whose name (``/proc/PID/comm``) is ``name``, after waiting up to ``seconds`` for none: a
    name of the test's own, so that sandboxes of other test processes running at the same time do not
    count."""
    deadline = time.monotonic() + seconds
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_detached_process_does_not_outlive_its_run(guarded):
    """A program that ignores signals, leaves the process group with ``setsid`` and double-forks: its
    grandchild dies with the run (the PID namespace of bwrap, or of the landlock layer). So does a program
    whose own process leaves the group, tries to clear its parent-death signal and sleeps past the
    deadline."""
    name = f"sapo{os.getpid() % 100000}{int(time.monotonic() * 1000) % 100000}"
    rename = f"import ctypes\nctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)\n"  # PR_SET_NAME
    detach = (
        "import os, signal, time\n"
        "for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):\n"
        "    signal.signal(number, signal.SIG_IGN)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        + "".join(f"        {line}\n" for line in rename.splitlines())
        + "        time.sleep(30)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "def f():\n"
        "    return 1\n"
    )
    assert guarded.run(detach, ["assert f() == 1"]).passed
    assert not processes_named(name), "a detached process outlived its run"
    hang = rename + "import os, time\nos.setsid()\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\ntime.sleep(30)\n"
    assert_failed(guarded.run(hang, ["assert True"]), "timeout")
    assert not processes_named(name), "a program that left the process group outlived its deadline"


def test_killing_the_parent_or_everyone_does_not_reach_the_host(contained):
    me = os.getpid()
    killer = (
        "import os\n"
        f"for pid in (os.getppid(), {me}, -1):\n"
        "    try:\n"
        "        os.kill(pid, 9)\n"
        "        print('sent', pid)\n"
        "    except OSError as error:\n"
        "        print('denied', pid, error)\n"
        "def f():\n"
        "    return 1\n"
    )
    result = contained.run(killer, ["assert f() == 2"])
    assert_failed(result, "assertion")
    assert f"sent {me}" not in result.stdout
    assert contained.run("def f():\n    return 1\n", ["assert f() == 1"]).passed


# --- the pass signal cannot be faked ------------------------------------------------------------------------


def test_sys_exit_before_the_tests_is_a_failure(box):
    result = box.run("import sys\nsys.exit(0)\n", ["assert False"])
    assert_failed(result, "exit")
    assert result.reason == "exited before the tests finished"


def test_os_exit_before_the_tests_is_a_failure(box):
    assert_failed(box.run("import os\nos._exit(0)\n", ["assert False"]), "exit")


def test_exit_during_a_test_is_a_failure(box):
    assert_failed(box.run("import sys\ndef f():\n    sys.exit(0)\n", ["assert f() == 1"]), "exit")


def test_forged_pass_report_is_rejected(box):
    forger = (
        "import os\n"
        "for fd in range(1, 40):\n"
        "    try:\n"
        "        os.write(fd, b'PASS ' + b'0' * 32 + b'\\n')\n"
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)\n"
    )
    assert_failed(box.run(forger, ["assert True"]), "forged")


def test_token_is_not_readable_from_outside_the_harness(box, monkeypatch):
    token = "feedface" * 4
    monkeypatch.setattr(process.secrets, "token_hex", lambda nbytes=None: token)
    spy = (
        "import os, sys\n"
        "print(sys.argv, dict(os.environ), sys.stdin.read())\n"
        "try:\n"
        "    print(open('/proc/self/cmdline', 'rb').read())\n"
        "except OSError as error:\n"
        "    print(error)\n"
        "for fd in range(0, 40):\n"
        "    try:\n"
        "        os.set_blocking(fd, False)\n"
        "        print(fd, os.read(fd, 4096))\n"
        "    except OSError:\n"
        "        pass\n"
    )
    result = box.run(spy, ["assert False"])
    assert_failed(result, "assertion")
    assert token not in result.stdout + result.stderr


ALWAYS_EQUAL = (
    "class Liar:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
)


@pytest.mark.parametrize(
    ("program", "test"),
    [
        (ALWAYS_EQUAL + "def f(x):\n    return Liar()\n", "assert f(1) == 2"),
        (ALWAYS_EQUAL + "def f(x):\n    return Liar()\n", "assert 2 == f(1)"),
        (ALWAYS_EQUAL + "def f(x):\n    return [Liar()]\n", "assert f(1) == [2]"),
        (ALWAYS_EQUAL + "def f(x):\n    return {1: Liar()}\n", "assert f(1) == {1: 2}"),
        (
            "class S(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
            "def f(x):\n    return S('no')\n",
            "assert f(1) == 'yes'",
        ),
        (
            "class T:\n    def __bool__(self):\n        return True\ndef f(x):\n    return T()\n",
            "assert f(1)",
        ),
        (
            "class M(type):\n    __hash__ = lambda cls: hash(int)\n    __eq__ = lambda cls, other: True\n"
            "class E(metaclass=M):\n    __eq__ = lambda self, other: True\ndef f(x):\n    return E()\n",
            "assert f(1) == 3",
        ),
        (
            "class N:\n    def __ne__(self, other):\n        return False\ndef f(x):\n    return N()\n",
            "assert not f(1) != 2",
        ),
    ],
    ids=["eq", "reflected", "in-list", "in-dict", "str-subclass", "truthy", "metaclass", "ne"],
)
def test_objects_that_redefine_comparison_fail(box, program, test):
    result = box.run(program, [test])
    assert_failed(result, "untrusted")
    assert result.reason == "untrusted value at test 0"


def test_rebinding_builtins_does_not_reach_the_tests(box):
    program = "import builtins\nbuiltins.len = lambda x: 3\nlen = lambda x: 3\ndef f():\n    return []\n"
    assert_failed(box.run(program, ["assert len(f()) == 3"]), "assertion")


def test_function_named_like_a_builtin_is_tested(box):
    # MBPP task 126 tests a function called ``sum``
    assert box.run("def sum(a, b):\n    return a + b\n", ["assert sum(10, 15) == 25"]).passed


def test_plain_values_of_the_standard_library_compare_normally(box):
    program = (
        "import collections, decimal\n"
        "Point = collections.namedtuple('Point', 'x y')\n"
        "def f():\n"
        "    return Point(1, 2), collections.Counter('aab'), collections.OrderedDict(a=1), decimal.Decimal('1.5')\n"
    )
    tests = [
        "assert f()[0] == (1, 2)",
        "assert f()[1] == {'a': 2, 'b': 1}",
        "assert f()[2] == {'a': 1}",
        "assert f()[3] == decimal.Decimal('1.5')",
        "assert 1 == 1.0 and [1, (2, 'x')] == [1.0, (2, 'x')]",
    ]
    assert box.run(program, tests, setup="import decimal").passed


def test_plain_check_in_process():
    plain = harness._h_plain
    assert plain([1, (2.0, "x"), {"k": {3}}, None, b"y"]) == [1, (2.0, "x"), {"k": {3}}, None, b"y"]
    assert plain(collections.Counter("aa")) == {"a": 2} and type(plain(collections.Counter("a"))) is dict
    loop: list = []
    loop.append(loop)
    assert plain(loop) is loop

    class Liar:
        def __eq__(self, other):
            return True

    with pytest.raises(harness._HUntrusted):
        plain([1, (Liar(),)])


# --- parallelism and the cache ------------------------------------------------------------------------------


def test_run_many_keeps_the_order_of_jobs():
    box = make_sandbox(USABLE[0], workers=2)
    jobs = [(f"def f():\n    return {i}\n", [f"assert f() == {i if i % 2 else -1}"]) for i in range(6)]
    results = box.run_many(jobs)
    assert [r.passed for r in results] == [i % 2 == 1 for i in range(6)]


def test_cache_answers_a_repeated_job_without_a_process(tmp_path):
    box = make_sandbox(USABLE[0], cache_size=100, cache_dir=str(tmp_path / "cache"))
    job = ("def f():\n    return 1\n", ["assert f() == 1"])
    first = box.run(*job)
    assert first.passed and not first.cached and box.processes_started == 1
    second = box.run(*job)
    assert second.passed and second.cached and box.processes_started == 1
    batch = box.run_many([job, ("x = 1\n", ["assert x == 2"]), ("x = 1\n", ["assert x == 2"])])
    assert [r.passed for r in batch] == [True, False, False]
    assert batch[0].cached and box.processes_started == 2
    other = make_sandbox(USABLE[0], cache_size=100, cache_dir=str(tmp_path / "cache"))
    assert other.run(*job).cached and other.processes_started == 0


def test_changed_settings_change_the_cache_key():
    fast = make_sandbox(USABLE[0], cache_size=10)
    slow = make_sandbox(USABLE[0], cache_size=10, timeout=TIMEOUT * 2)
    assert fast.cache_key("x = 1", ["assert x"]) != slow.cache_key("x = 1", ["assert x"])


# --- configuration ------------------------------------------------------------------------------------------


def test_detection_reports_every_layer():
    assert set(DETECTED) == set(ISOLATION_LAYERS)
    assert DETECTED["none"][0], DETECTED["none"]


def test_unknown_isolation_is_refused():
    with pytest.raises(ValueError, match="isolation"):
        Sandbox(isolation="chroot")


def test_unusable_layer_is_refused(monkeypatch):
    executable = isolation._find_interpreter(None).executable
    monkeypatch.setitem(sandbox_module._DETECTED, ("bwrap", executable, os.geteuid()), (False, "test"))
    with pytest.raises(IsolationUnavailable, match="test"):
        Sandbox(isolation="bwrap")


def test_auto_passes_over_a_landlock_without_its_pid_namespace(monkeypatch):
    executable = isolation._find_interpreter(None).executable
    detected = sandbox_module._DETECTED
    monkeypatch.setitem(detected, ("bwrap", executable, os.geteuid()), (False, "test"))
    partial = (True, "landlock abi=3 netns no-pidns no-unix")
    monkeypatch.setitem(detected, ("landlock", executable, os.geteuid()), partial)
    monkeypatch.setitem(detected, ("none", executable, os.geteuid()), (True, "none"))
    with pytest.warns(RuntimeWarning, match="landlock: runs, but no-pidns"):
        assert Sandbox(isolation="auto").isolation == "none"
    assert Sandbox(isolation="landlock").isolation == "landlock"  # asked for by name, it is used


def test_tests_must_be_a_list():
    with pytest.raises(TypeError):
        make_sandbox(USABLE[0]).run("x = 1", "assert x == 1")


def test_no_harness_is_left_running():
    assert not wait_until_no_harness(), "a sandbox process outlived its run"
