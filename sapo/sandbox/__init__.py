"""Run untrusted, model-written Python programs against their tests, contained by the operating system.

Every program runs in its own fresh interpreter (``python -I -S -B -u``: isolated mode, no ``site``, so no
site-packages and no ``.pth`` hooks; only the standard library), with an empty environment, its own
directory, resource limits and a wall-clock timeout that kills its whole process group. Where the machine
allows it, an isolation layer hides the host from it (see ``docs/sandbox.md`` for which protections hold
under which layer):

- ``"bwrap"``: bubblewrap. New user (or, as root, dropped privileges), PID, network, IPC and UTS
  namespaces; a root file system holding only ``/usr``, the interpreter and a private size-limited tmpfs;
  no network at all (an empty network namespace).
- ``"landlock"``: the harness itself enters new user, network and PID namespaces (``unshare(2)``; the
  program runs as PID 1, so nothing it starts outlives it) and restricts itself with Landlock (reading
  only the system and interpreter directories, writing only its own directory, no TCP, no signals to
  processes outside the sandbox) and a seccomp filter (no Unix sockets).
- ``"none"``: resource limits, an empty environment, its own directory and (as root) an unprivileged
  user only. It does not protect files or the network; ``"auto"`` falls back to it with a warning.

**The verdict is the parent's** wherever a test splits (every MBPP test does): the sandbox evaluates only
the test's calls of the program and sends their values back as plain data, and the parent compares them
with the expected values itself (:mod:`~sapo.sandbox.verdict`), so no program can make a wrong answer
pass from inside its process. :attr:`SandboxResult.verdict` says who decided a run.

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

The modules, lowest first (this package imports nothing else from :mod:`sapo`; :mod:`sapo.data.tasks` uses
it):

- :mod:`~sapo.sandbox.verdict`: splitting tests into the values the program computes and the comparisons
  the parent evaluates, and the parent's side of the value format;
- :mod:`~sapo.sandbox.confine`: the isolation layers' in-process part, run by the harness in the child;
- :mod:`~sapo.sandbox.harness`: the code that runs inside the child, and its shipping there;
- :mod:`~sapo.sandbox.isolation`: the layers as the parent sets them up (interpreter, limits, bubblewrap);
- :mod:`~sapo.sandbox.asserts`: the rewriting of the tests' ``assert`` statements;
- :mod:`~sapo.sandbox.results`: :class:`SandboxResult` and what a run's pipes and exit status mean;
- :mod:`~sapo.sandbox.process`: one run: starting, feeding, reading and killing the child;
- :mod:`~sapo.sandbox.sandbox`: :class:`Sandbox` (layer choice, cache, worker pool), :func:`detect_isolation`.
"""

from sapo.sandbox.isolation import ISOLATION_LAYERS, IsolationUnavailable
from sapo.sandbox.results import RESULT_KINDS, SandboxResult
from sapo.sandbox.sandbox import Sandbox, detect_isolation

__all__ = [
    "ISOLATION_LAYERS",
    "RESULT_KINDS",
    "Sandbox",
    "SandboxResult",
    "IsolationUnavailable",
    "detect_isolation",
]
