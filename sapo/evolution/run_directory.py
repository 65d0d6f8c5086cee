"""The run directory: every phase's artifacts, a manifest of finished phases, and an event log.

A phase (or one chunk of a long phase) is *finished* once its artifacts are written and the manifest says
so; both writes are atomic (a temporary file, then a rename), so a process killed at any moment leaves
either a finished phase or none. Rerunning the same command reads the manifest and skips what is finished.
``events.jsonl`` records each phase's and chunk's start and finish, one JSON line each, appended and
flushed: it is how one sees (and the tests check) that nothing finished was done twice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sapo.data.trajectory import Trajectory, read_jsonl, write_jsonl

__all__ = ["ChunkedJsonl", "RunDirectory", "RunMismatchError", "write_json_atomic"]

MANIFEST = "manifest.json"
EVENTS = "events.jsonl"


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
    """

    def __init__(self, path: str | os.PathLike[str], settings: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.path / MANIFEST
        if manifest.is_file():
            self.manifest = json.loads(manifest.read_text(encoding="utf-8"))
        else:
            self.manifest = {"settings": settings, "phases": {}}
        if settings is not None:
            stored = self.manifest.get("settings")
            if stored is not None and self.manifest["phases"] and _canonical(stored) != _canonical(settings):
                changed = sorted(_differences(stored, settings))
                raise RunMismatchError(
                    f"{self.path} holds phases of a run with other settings (they differ at: "
                    f"{', '.join(changed[:8]) or 'the settings'}); use a new run directory, or delete "
                    f"{manifest} to start over"
                )
            self.manifest["settings"] = settings
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
    def event(self, kind: str, phase: str, **info: Any) -> None:
        with (self.path / EVENTS).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": kind, "phase": phase, "time": time.time(), **info}) + "\n")
            fh.flush()

    def _write_manifest(self) -> None:
        write_json_atomic(self.path / MANIFEST, self.manifest)


class ChunkedJsonl:
    """A long phase's output written chunk by chunk, so that a killed run keeps every finished chunk.

    Chunk ``i`` lives in ``<name>.parts/chunk_<i>.jsonl`` (written atomically); the phase writes its one
    file from all of them once every chunk is there.
    """

    def __init__(self, run: RunDirectory, phase: str, name: str) -> None:
        self.run = run
        self.phase = phase
        self.folder = run.path / f"{name}.parts"

    def path(self, index: int) -> Path:
        return self.folder / f"chunk_{index:05d}.jsonl"

    def has(self, index: int) -> bool:
        return self.path(index).is_file()

    def start(self, index: int, of: int) -> None:
        """Record in the event log that chunk ``index`` (of ``of``) is being made."""
        self.run.start(self.phase, chunk=index, of=of)

    def write(self, index: int, records: Sequence[Trajectory | dict[str, Any]]) -> None:
        write_jsonl(records, self.path(index))
        self.run.event("finish", self.phase, chunk=index)

    def read(self, index: int) -> list[Trajectory]:
        return read_jsonl(self.path(index))

    def read_records(self, index: int) -> list[dict[str, Any]]:
        lines = self.path(index).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def _differences(a: Any, b: Any, where: str = "") -> Iterable[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _differences(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
    elif _canonical(a) != _canonical(b):
        yield where or "(root)"
