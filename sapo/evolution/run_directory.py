"""The run directory: every phase's artifacts, a manifest of finished phases, and an event log.

A phase (or one chunk of a long phase) is *finished* once its artifacts are written and the manifest says
so; both writes are atomic (a temporary file, then a rename), so a process killed at any moment leaves
either a finished phase or none. Rerunning the same command reads the manifest and skips what is finished.
``events.jsonl`` records each phase's and chunk's start and finish, one JSON line each, appended and
flushed: it is how one sees (and the tests check) that nothing finished was done twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sapo.data.trajectory import Cost, Trajectory, TrajectoryFormatError, iter_jsonl, read_jsonl, write_jsonl

__all__ = [
    "ROUND_COSTS",
    "ChunkedJsonl",
    "RunDirectory",
    "RunMismatchError",
    "read_manifest",
    "round_cost",
    "setting_differences",
    "write_json_atomic",
]

MANIFEST = "manifest.json"
EVENTS = "events.jsonl"
#: a chunk folder's record of the settings its chunks were made under
SETTINGS = "settings.json"


class RunMismatchError(RuntimeError):
    """A run directory holds finished phases of a run with other settings."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename (never half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RunDirectory:
    """A run's folder: ``manifest.json`` (finished phases with their summaries), ``events.jsonl`` and one
    entry per artifact.

    Args:
        path: the folder (created if missing).
        settings: what the run's results depend on (the recipe's model and data arguments). Stored in the
            manifest by the first run; a rerun with different settings raises :class:`RunMismatchError`
            before any work, since its phases would mix two runs.
        extendable: dotted keys of ``settings`` that a rerun may raise without redoing anything (the number
            of iterations: a finished run continues with new ones). Lowering one is a mismatch.
        adjustable: dotted keys that a rerun may change freely: they say how the run uses the machine (the
            vLLM engine's memory, say), not what it computes, so that a run that ran out of memory can be
            resumed with less.
        rank: this process's rank in a launch of several (:class:`~sapo.evolution.distributed.Ranks`). Only
            rank 0 writes the manifest; every rank appends to its own event log (``events.jsonl`` for rank 0,
            ``events.rank<r>.jsonl`` for the others), so that each file has one writer.
        defaults: the library's defaults, in the shape of ``settings`` (:func:`library_defaults`). A setting
            that a stored run's record lacks was added to the library after that run, which was made with the
            behaviour its default keeps: a rerun that holds it at that default resumes (any other value is a
            mismatch). Without ``defaults`` only a setting added at a null default resumes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: dict[str, Any] | None = None,
        extendable: Sequence[str] = (),
        adjustable: Sequence[str] = (),
        rank: int = 0,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.rank = rank
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.path / MANIFEST
        if manifest.is_file():
            self.manifest = read_manifest(self.path)
        else:
            self.manifest = {"settings": settings, "phases": {}}
        stored = self.manifest.get("settings")
        resumed = stored is not None and bool(self.manifest["phases"])
        if settings is not None:
            if resumed:
                changed = sorted(setting_differences(stored, settings, defaults))
                refused = [
                    key
                    for key in changed
                    if key not in adjustable and not _raised(key, stored, settings, extendable)
                ]
                if refused:
                    raise RunMismatchError(
                        f"{self.path} holds phases of a run with other settings (they differ at: "
                        f"{', '.join(refused[:8])}); use a new run directory, or delete the run directory "
                        "to start over"
                    )
            self.manifest["settings"] = settings
        #: what the run's artifacts depend on: a hash of the settings without the extendable and adjustable
        #: keys. A resumed run keeps the one its chunks were made under (kept in the manifest; for a manifest
        #: written before it was kept, the hash of the stored settings): the settings it accepted differ from
        #: those only where nothing made depends on them, which includes a setting added to the library since,
        #: at its default; a new hash would take every finished chunk for another run's.
        if not resumed or "fingerprint" not in self.manifest:
            basis = stored if resumed else self.manifest.get("settings")
            self.manifest["fingerprint"] = _fingerprint(basis, (*extendable, *adjustable))
        self.fingerprint: str = self.manifest["fingerprint"]
        self._write_manifest()

    # --- phases -------------------------------------------------------------------------------------------
    def done(self, phase: str) -> bool:
        return phase in self.manifest["phases"]

    def summary(self, phase: str) -> dict[str, Any]:
        """What :meth:`finish` recorded for ``phase``."""
        return self.manifest["phases"][phase]

    def start(self, phase: str, **info: Any) -> None:
        self.event("start", phase, **info)

    def finish(self, phase: str, **summary: Any) -> None:
        """Mark ``phase`` finished with a JSON-able summary (counts, costs, metrics)."""
        self.manifest["phases"][phase] = {"finished_at": time.time(), **summary}
        self._write_manifest()
        self.event("finish", phase)

    @property
    def finished(self) -> list[str]:
        return list(self.manifest["phases"])

    # --- files --------------------------------------------------------------------------------------------
    @property
    def events_path(self) -> Path:
        """This process's event log."""
        return self.path / (EVENTS if self.rank == 0 else f"events.rank{self.rank}.jsonl")

    def event(self, kind: str, phase: str, **info: Any) -> None:
        if self.rank:  # the other ranks' lines say whose they are (a test kills a rank by its pid)
            info = {**info, "rank": self.rank, "pid": os.getpid()}
        with self.events_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": kind, "phase": phase, "time": time.time(), **info}) + "\n")
            fh.flush()

    def copy_phases(self, source: Path, phases: Sequence[str], paths: Sequence[str]) -> None:
        """Begin this (empty) run with finished ``phases`` of the run in ``source``: their artifacts (the
        ``paths``, relative to the run folders; missing ones skipped) and their manifest entries.

        Files are hard-linked where the file system allows (every artifact is replaced by a rename, never
        written in place, so the two runs never change each other's files), else copied. Paths inside the
        summaries that point into ``source`` are made to point here, and each copied chunk folder is given
        this run's settings fingerprint, so that reading it back does not take it for another run's.
        """
        if self.manifest["phases"]:
            raise RunMismatchError(f"{self.path} already holds phases; a run is only begun from another once")
        manifest = read_manifest(source)
        stored = manifest["phases"]
        for relative in paths:
            origin, target = source / relative, self.path / relative
            if origin.is_dir():
                shutil.copytree(origin, target, copy_function=_link_or_copy, dirs_exist_ok=True)
            elif origin.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(origin, target)
        for record in self.path.glob(f"*.parts/{SETTINGS}"):  # a rename replaces the link to the source's
            write_json_atomic(record, {"fingerprint": self.fingerprint})
        # the summaries name the source by the run_dir it ran with, which may be spelled other than ``source``
        named = _lookup(manifest.get("settings"), "model.init_args.run_dir")
        prefixes = {f"{str(folder).rstrip('/')}/" for folder in (source, named) if folder}
        for phase in phases:
            summary = stored[phase]
            for prefix in prefixes:
                summary = _moved(summary, prefix, f"{self.path}/")
            self.manifest["phases"][phase] = summary
        self._write_manifest()
        self.event("copied", ",".join(phases), source=str(source))

    def _write_manifest(self) -> None:
        if self.rank:
            return
        write_json_atomic(self.path / MANIFEST, self.manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the run directory ``path`` (settings and finished phases)."""
    manifest = Path(path) / MANIFEST
    try:
        return json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunMismatchError(f"{path} is not a run directory: it has no {MANIFEST}") from None
    except json.JSONDecodeError as error:
        raise RunMismatchError(
            f"{manifest} is not valid JSON ({error.msg}, line {error.lineno}); it was changed by hand "
            "or by another program. Restore it, or use a new run directory"
        ) from None


def _link_or_copy(origin: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    try:
        os.link(origin, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(origin, target)


def _moved(value: Any, old: str, new: str) -> Any:
    """``value`` with every string that starts with ``old`` starting with ``new`` instead."""
    if isinstance(value, dict):
        return {key: _moved(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_moved(item, old, new) for item in value]
    if isinstance(value, str) and value.startswith(old):
        return new + value[len(old) :]
    return value


class ChunkedJsonl:
    """A long phase's output written chunk by chunk, so that a killed run keeps every finished chunk.

    Chunk ``i`` lives in ``<name>.parts/chunk_<i>.jsonl`` (written atomically), with what making it cost in
    ``chunk_<i>.cost.json``; the phase writes its one file from all of them once every chunk is there. The
    folder's ``settings.json`` holds the run's settings fingerprint: chunks made under other settings (a
    run directory whose manifest was deleted, then rerun with another recipe) are never read back; they are
    moved aside to ``<name>.parts.stale/`` with a warning, and the phase starts over.
    """

    def __init__(self, run: RunDirectory, phase: str, name: str) -> None:
        self.run = run
        self.phase = phase
        self.folder = run.path / f"{name}.parts"
        if run.rank == 0:  # the one writer of the folder's record; the other ranks wait for it (a barrier)
            self._check_settings()
            write_json_atomic(self.folder / SETTINGS, {"fingerprint": self.run.fingerprint})

    def path(self, index: int) -> Path:
        return self.folder / f"chunk_{index:05d}.jsonl"

    def cost_path(self, index: int) -> Path:
        return self.folder / f"chunk_{index:05d}.cost.json"

    def has(self, index: int) -> bool:
        return self.path(index).is_file()

    def start(self, index: int, of: int) -> None:
        """Record in the event log that chunk ``index`` (of ``of``) is being made."""
        self.run.start(self.phase, chunk=index, of=of)

    def write(
        self, index: int, records: Sequence[Trajectory | dict[str, Any]], cost: Cost | None = None
    ) -> None:
        """Write chunk ``index`` (and first, when given, its cost: the chunk file is what marks it done)."""
        if cost is not None:
            write_json_atomic(self.cost_path(index), cost.to_dict())
        write_jsonl(records, self.path(index))
        self.run.event("finish", self.phase, chunk=index)

    def read(self, index: int) -> list[Trajectory]:
        try:
            return read_jsonl(self.path(index))
        except TrajectoryFormatError as error:
            raise TrajectoryFormatError(f"{error}; {self._redo(index)}") from None

    def read_records(self, index: int) -> list[dict[str, Any]]:
        try:
            return [record for _, record in iter_jsonl(self.path(index))]
        except TrajectoryFormatError as error:
            raise TrajectoryFormatError(f"{error}; {self._redo(index)}") from None

    def cost(self, index: int) -> Cost:
        """What making chunk ``index`` cost (zero for a chunk written without a cost record)."""
        path = self.cost_path(index)
        if not path.is_file():
            return Cost()
        try:
            return Cost.from_dict(json.loads(path.read_text(encoding="utf-8")), where=str(path))
        except json.JSONDecodeError as error:
            raise TrajectoryFormatError(
                f"{path}: not valid JSON ({error.msg}); {self._redo(index)}"
            ) from None

    def _redo(self, index: int) -> str:
        return f"the chunk was changed after it was written: delete {self.path(index)} to make it again"

    def _check_settings(self) -> None:
        if not self.folder.is_dir():
            return
        record = self.folder / SETTINGS
        try:
            stored = (
                json.loads(record.read_text(encoding="utf-8")).get("fingerprint")
                if record.is_file()
                else None
            )
        except (json.JSONDecodeError, AttributeError):
            stored = None
        if stored == self.run.fingerprint or not any(self.folder.glob("chunk_*.jsonl")):
            return
        stale = self.folder.with_name(self.folder.name + ".stale")
        if stale.exists():
            shutil.rmtree(stale)
        self.folder.rename(stale)
        warnings.warn(
            f"{self.folder} held chunks made under other settings; moved them to {stale} and starting the "
            f"phase {self.phase} over",
            stacklevel=3,
        )


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def _lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _raised(key: str, stored: dict, settings: dict, extendable: Sequence[str]) -> bool:
    """Whether the difference at ``key`` is an extendable number raised (never lowered)."""
    if key not in extendable:
        return False
    before, after = _lookup(stored, key), _lookup(settings, key)
    return isinstance(before, int) and isinstance(after, int) and after >= before


def _fingerprint(settings: Any, left_out: Sequence[str]) -> str:
    """A hash of ``settings`` without the ``left_out`` keys."""
    data = json.loads(_canonical(settings))
    for key in left_out:
        *parents, last = key.split(".")
        holder = data
        for part in parents:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if isinstance(holder, dict):
            holder.pop(last, None)
    return hashlib.sha256(_canonical(data).encode()).hexdigest()[:16]


#: a key one settings tree has and the other lacks (unlike a key held at null)
_ABSENT = object()


def setting_differences(a: Any, b: Any, defaults: Any = None) -> Iterable[str]:
    """The dotted keys where two settings trees differ; a key missing from one side counts as null.

    With ``defaults`` (the library's defaults, shaped like the trees), a key missing from ``a`` (a stored
    run's settings) is no difference where ``b`` holds it at its default: the library gained the setting
    after ``a`` was recorded, and ``a``'s run behaved as that default does.
    """
    return _differences(a, b, _ABSENT if defaults is None else defaults, "")


def _differences(a: Any, b: Any, default: Any, where: str) -> Iterable[str]:
    if a is _ABSENT and default is not _ABSENT and _canonical(b) == _canonical(default):
        return
    if a is _ABSENT and isinstance(b, dict):  # a group added since: each of its settings on its own
        a = {}
    a, b = (None if side is _ABSENT else side for side in (a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            inner = default.get(key, _ABSENT) if isinstance(default, dict) else _ABSENT
            yield from _differences(
                a.get(key, _ABSENT), b.get(key, _ABSENT), inner, f"{where}.{key}" if where else str(key)
            )
    elif _canonical(a) != _canonical(b):
        yield where or "(root)"


def library_defaults(**components: type) -> dict[str, Any]:
    """The defaults of each component's constructor as plain data, shaped as ``sapo fit`` records the
    settings (``{"model": {"init_args": ...}, "data": {"init_args": ...}}`` for ``model=..., data=...``): a
    settings dataclass as a dict of its fields. An argument without a default is left out, and so is a default
    with no plain form (a component object, such as a supervision strategy): a rerun compares those as
    recorded."""
    tree: dict[str, Any] = {}
    for component, cls in components.items():
        defaults = tree.setdefault(component, {}).setdefault("init_args", {})
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or parameter.default is inspect.Parameter.empty:
                continue
            value = parameter.default
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = dataclasses.asdict(value)
            if (plain := _plain_data(value)) is not _ABSENT:
                defaults[name] = plain
    return tree


def _plain_data(value: Any) -> Any:
    """``value`` as JSON data, without the parts that have none (:data:`_ABSENT` if it has none at all)."""
    if isinstance(value, dict):
        items = ((str(key), _plain_data(inner)) for key, inner in value.items())
        return {key: inner for key, inner in items if inner is not _ABSENT}
    if isinstance(value, (list, tuple)):
        items = [_plain_data(inner) for inner in value]
        return _ABSENT if _ABSENT in items else items
    return value if value is None or isinstance(value, (str, int, float, bool)) else _ABSENT


#: (phase, key of its cost record) of what a round spends on supervision: SAPO's labels, and SPHERE's
#: verifier-pruned searches and rewrites (its sampling is its supervision)
ROUND_COSTS = (("labels", "cost"), ("search", "search_cost"), ("corrections", "correction_cost"))


def round_cost(phases: dict[str, Any], rounds: Iterable[int]) -> Cost:
    """What ``rounds`` spent on supervision (:data:`ROUND_COSTS`), from a manifest's finished ``phases``."""
    total = Cost()
    for t in rounds:
        for phase, key in ROUND_COSTS:
            total = total + Cost.from_dict(phases.get(f"{phase}_{t}", {}).get(key) or {})
    return total
