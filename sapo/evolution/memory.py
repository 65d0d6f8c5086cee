"""Memory between the loop's phases: each phase's peak (:class:`PhaseMemory`), and handing freed memory
back before the next phase (:func:`release_memory`, its collections kept short by :func:`collect_only_new`).

The peak is the process's resident set on the host and, with CUDA, allocated GPU memory.

Linux keeps a process's peak resident set size (``VmHWM`` in ``/proc/self/status``) and lets the process
reset it (writing ``5`` to ``/proc/self/clear_refs``), so each phase's own peak can be read rather than the
peak of the whole run so far. Where that reset is refused or missing (other systems, some containers) the
figure is the process's peak since it started (``resource.getrusage``), and it says so.

Worker processes (a vLLM engine's two, DataLoader workers) are counted apart: their peaks are reset the same
way at the start of a phase, and the sum of the peaks of those alive at its end is ``workers_peak_rss_gib``.
The sum is an upper bound of what they held at once; a worker that ended during the phase is not in it. The
process's own figure alone would say that a phase sampling on vLLM needs under 1 GiB, where its engine holds
about 3 more.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sapo.callbacks import trim_heap

__all__ = ["PhaseMemory", "collect_only_new", "release_memory"]

_PROC = Path("/proc")
_STATUS = _PROC / "self" / "status"
_CLEAR_REFS = _PROC / "self" / "clear_refs"
GIB = 2**30


class PhaseMemory:
    """Measures the peak memory of the work between :meth:`start` and :meth:`summary`."""

    def __init__(self) -> None:
        self.per_phase = False
        self.rss_at_start: int | None = None

    def start(self) -> None:
        """Reset the peaks (host, when the system allows it, and CUDA); note the resident set now."""
        self.rss_at_start = _status_bytes("VmRSS:")
        try:
            _CLEAR_REFS.write_text("5")
            self.per_phase = _status_bytes("VmHWM:") is not None
        except OSError:
            self.per_phase = False
        for pid in descendants():
            try:
                (_PROC / str(pid) / "clear_refs").write_text("5")
            except OSError:  # gone meanwhile, or not ours to reset: its peak then spans its life
                pass
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def summary(self) -> dict[str, Any]:
        """``peak_rss_gib`` (host, this phase's or since the process started, as ``peak_rss_scope`` says),
        ``rss_at_start_gib`` (what the process held when the phase began: what earlier phases left) and,
        with CUDA, ``peak_cuda_gib`` (allocated by torch); with worker processes alive, ``workers`` (how many)
        and ``workers_peak_rss_gib`` (the sum of their peaks)."""
        hwm = _status_bytes("VmHWM:") if self.per_phase else None
        if hwm is None:
            # ru_maxrss is in kilobytes on Linux and in bytes on macOS
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
                1 if sys.platform == "darwin" else 1024
            )
        result: dict[str, Any] = {
            "peak_rss_gib": round(hwm / GIB, 3),
            "peak_rss_scope": "phase" if self.per_phase else "process",
        }
        if self.rss_at_start is not None:
            result["rss_at_start_gib"] = round(self.rss_at_start / GIB, 3)
        if torch.cuda.is_available():
            result["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        peaks = [_status_bytes("VmHWM:", _PROC / str(pid) / "status") for pid in descendants()]
        peaks = [peak for peak in peaks if peak is not None]
        if peaks:
            result["workers"] = len(peaks)
            result["workers_peak_rss_gib"] = round(sum(peaks) / GIB, 3)
        return result


def descendants(pid: int | None = None) -> list[int]:
    """The processes this one (or ``pid``) started, and theirs, alive now (from ``/proc``; none elsewhere)."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    try:
        entries = list(_PROC.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # "pid (name) state ppid ...": the name may hold spaces and parentheses, so read after the last ")"
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def _status_bytes(field: str, status: Path = _STATUS) -> int | None:
    """A field of a ``/proc/<pid>/status`` file (this process's by default) in bytes (``VmHWM:``, the peak
    resident set; ``VmRSS:``, the current one), or ``None`` where ``/proc`` does not give it."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def release_memory() -> None:
    """Give the memory of models just dropped back before the next phase loads one.

    Most of a 135M model's tensors are under glibc's mmap threshold (which grows to 32 MiB), so they live on
    the heap, and glibc keeps a freed heap for the process; ``malloc_trim`` hands it back to the system.
    """
    gc.collect()
    trim_heap()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def collect_only_new() -> Iterator[None]:
    """Inside, garbage collections look only at objects made inside.

    Every object alive on entry (the modules and classes of torch, transformers and Lightning, the parsed
    recipe: most of the heap) is moved to a permanent generation (``gc.freeze``) until the exit. A full
    collection after each phase (:func:`release_memory`) then no longer walks them: it took 0.4 s with them
    on a 2-core Zen 3, 6 s of a 48 s smoke run. What is frozen is not freed inside, so enter before models
    are made: the models a phase drops are made inside and are collected as before.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
