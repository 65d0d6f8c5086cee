"""The in-process part of the isolation layers, run by the harness inside the child before the program.

These functions are shipped to the child by their source with the rest of the harness
(:mod:`sapo.sandbox.harness`) and follow its rules: standard library only, Python 3.10, no state of their
own. They read the job, reach an interpreter that an unprivileged user cannot, drop root privileges, set up
the ``landlock`` layer (user, network and PID namespaces, Landlock, the seccomp filter) and apply the
resource limits.
"""

from __future__ import annotations

import marshal
import os
import resource
import sys
from typing import Any


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
    # CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID: no network, and no process outlives the run
    pidns = libc.unshare(ctypes.c_int(0x10000000 | 0x40000000 | 0x20000000)) == 0
    netns = pidns or libc.unshare(ctypes.c_int(0x10000000 | 0x40000000)) == 0
    if pidns:
        _h_pid_namespace(libc)
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
    unix = _h_deny_unix_sockets(libc)
    detail = " netns" if netns else " no-netns"
    detail += (" pidns" if pidns else " no-pidns") + (" no-unix" if unix else " unix-allowed")
    return "landlock abi=" + str(abi) + detail


def _h_pid_namespace(libc: Any) -> None:
    """After ``unshare(CLONE_NEWPID)``: fork the process that goes on to run the program, as PID 1 of the new
    namespace, and wait for it here, exiting with its status (a signal as 128 + its number). When PID 1
    ends, the kernel kills every process of the namespace, so a program that calls ``setsid()`` and
    double-forks leaves nothing behind; when the parent kills this process (the process group, at the
    deadline), PID 1 gets ``SIGKILL`` (``PR_SET_PDEATHSIG``, which the seccomp filter of
    :func:`_h_deny_unix_sockets` then keeps the program from clearing)."""
    alive_r, alive_w = os.pipe()  # open in the waiting process for as long as it lives
    child = os.fork()
    if child:
        os.close(alive_r)
        _, status = os.waitpid(child, 0)
        os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
    os.close(alive_w)
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
    os.set_blocking(alive_r, False)
    try:
        if os.read(alive_r, 1) == b"":  # end of file: the waiting process died before the line above
            os._exit(1)
    except BlockingIOError:
        pass
    os.close(alive_r)


def _h_deny_unix_sockets(libc: Any) -> bool:
    """A seccomp filter: ``socket(AF_UNIX, ...)``, ``io_uring_setup`` and ``prctl(PR_SET_PDEATHSIG)`` fail
    with ``EACCES``, and so do syscalls of another ABI (x32, i386 on x86-64): the program cannot reach a
    Unix socket at a file path on the host (Landlock does not cover connecting to one), nor outlive the
    harness's waiting process. ``False`` on an architecture it does not know."""
    import ctypes
    import struct

    arches = {"x86_64": (0xC000003E, 41, 425, 157), "aarch64": (0xC00000B7, 198, 425, 167)}
    machine = os.uname().machine
    if machine not in arches:
        return False
    arch, socket_nr, uring_nr, prctl_nr = arches[machine]
    deny, allow = 0x00050000 | 13, 0x7FFF0000  # SECCOMP_RET_ERRNO | EACCES, SECCOMP_RET_ALLOW
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    program = [
        (ld, 0, 0, 4),  # 0: seccomp_data.arch
        (jeq, 1, 0, arch),
        (ret, 0, 0, deny),
        (ld, 0, 0, 0),  # 3: seccomp_data.nr
        (jge, 8, 0, 0x40000000),  # an x32 syscall: deny
        (jeq, 7, 0, uring_nr),
        (jeq, 3, 0, prctl_nr),
        (jeq, 0, 4, socket_nr),
        (ld, 0, 0, 16),  # 8: seccomp_data.args[0] (low 32 bits): the socket's domain
        (jeq, 3, 2, 1),  # AF_UNIX: deny
        (ld, 0, 0, 16),  # 10: prctl's option
        (jeq, 1, 0, 1),  # PR_SET_PDEATHSIG: deny
        (ret, 0, 0, allow),
        (ret, 0, 0, deny),
    ]
    code = b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("=H6xQ", len(program), ctypes.addressof(buffer))  # struct sock_fprog
    if libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError("seccomp filter failed (errno " + str(ctypes.get_errno()) + ")")
    return True


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
