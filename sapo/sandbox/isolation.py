"""The isolation layers, as the parent sets them up: the interpreter, the limits, bubblewrap's command line.

The layers, strongest first, are ``bwrap``, ``landlock`` and ``none`` (:data:`ISOLATION_LAYERS`; the package
docstring says what each does, ``docs/sandbox.md`` which protections hold under which).

This module holds the parent's side of them: which interpreter runs the programs and which directories it
needs, the resource limits (:class:`_Limits`, applied by the harness), the bubblewrap command line, the
environment and the Landlock rules. The in-process part (Landlock, dropping privileges, ``setrlimit``) runs
in the child, in :mod:`sapo.sandbox.harness`; which layer is usable is found out by running a program
under it (:func:`sapo.sandbox.sandbox.detect_isolation`).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: the isolation layers, strongest first; ``"auto"`` picks the first usable one
ISOLATION_LAYERS = ("bwrap", "landlock", "none")
#: system directories made visible (read-only) to a sandboxed interpreter, when they exist
SYSTEM_DIRECTORIES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: single system files made visible read-only (the dynamic loader's cache)
SYSTEM_FILES = ("/etc/ld.so.cache",)


class IsolationUnavailable(RuntimeError):
    """The requested isolation layer cannot run on this machine; the message says why."""


@dataclass(frozen=True)
class _Interpreter:
    """The Python that runs sandboxed programs: its executable and its installation prefix."""

    executable: str
    prefix: str
    #: the interpreter running sapo (outside its virtual environment): the same version, so the harness
    #: can be shipped precompiled
    is_parent: bool = False

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


def _is_beneath(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _world_reachable(directory: str) -> bool:
    """Whether any user can traverse every directory down to ``directory`` (its ``o+x`` bits)."""
    path = Path(directory)
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _find_interpreter(python: str | None) -> _Interpreter:
    """The interpreter for sandboxed programs: ``python``, or the real executable behind this process's
    (outside any virtual environment: sandboxed programs see the standard library only)."""
    if python is None:
        executable = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        return _Interpreter(executable, sys.base_prefix, is_parent=True)
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
