"""The backbone cache: folders written atomically and checked before every use.

:func:`_ensure_cache_entry` returns a cache folder, building it first when it is missing or fails its
checks. A folder is built in a temporary sibling and renamed into place, with a ``sapo-cache.json``
manifest (source fingerprint and file sizes) written last, so an interrupted build never leaves a folder
that looks finished; a folder whose manifest, file sizes or safetensors headers do not check out is
rebuilt. :func:`sapo.models.backbone.default_cache_dir` gives the cache root.
"""

import fcntl
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("sapo.models.backbone")  # the loader's logger: its messages keep their name

MANIFEST_NAME = "sapo-cache.json"
CACHE_FORMAT = 1


def _ensure_cache_entry(folder: Path, source: dict, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return ``(folder, built_now)``, building the folder when it is missing or fails its checks.

    Processes that share the cache (the ranks of a launch) build one at a time, holding a lock on the cache
    folder itself (no lock file is left behind): without it a second process could move a first one's
    finished folder aside while the first was reading it."""
    if _cache_problem(folder, source) is None:
        return folder, False
    folder.parent.mkdir(parents=True, exist_ok=True)
    parent = os.open(folder.parent, os.O_RDONLY)
    try:
        fcntl.flock(parent, fcntl.LOCK_EX)
        problem = _cache_problem(folder, source)
        if problem is None:  # another process built it while this one waited
            return folder, False
        if folder.exists():
            logger.warning("rebuilding cache folder %s: %s", folder, problem)
        else:
            logger.info("building cache folder %s (once)", folder)
        _write_cache_entry(folder, source, build)
    finally:
        os.close(parent)  # and with it the lock
    return folder, True


def _write_cache_entry(folder: Path, source: dict, build: Callable[[Path], None]) -> None:
    """Build in a temporary sibling, write the manifest last, then rename into place.

    A crash at any point leaves either the old folder or no folder, never a half-written one that passes
    :func:`_cache_problem`. When two processes race (DDP ranks), the one that finishes second keeps the
    first one's complete folder and discards its own.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp's private 0700 would hide a shared cache from other users
    try:
        build(tmp)
        _write_manifest(tmp, source)
        _move_into_place(tmp, folder, source)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, folder: Path, source: dict) -> None:
    if _cache_problem(folder, source) is None:
        return  # another process (a second DDP rank) finished first: keep its folder, drop ours
    old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(old)
    except FileNotFoundError:
        pass
    try:
        tmp.rename(folder)
    except OSError:
        if _cache_problem(folder, source) is not None:  # another process won the race with a bad folder
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _save_model_on_this_rank(model: Any, folder: Path) -> None:
    """``model.save_pretrained(folder)`` in safetensors, on whichever process builds the cache entry.
    transformers writes a model only on rank 0 once a process group is up (a cache built by rank 1 of a
    launch would hold no weights); the cache folder is this process's own, so this model writes here."""
    if hasattr(model, "should_save_on_this_rank"):
        model.should_save_on_this_rank = lambda is_main_process: True
    model.save_pretrained(folder, safe_serialization=True)


def _write_manifest(folder: Path, source: dict) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = {"format": CACHE_FORMAT, "source": source, "files": files}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _cache_problem(folder: Path, source: dict) -> str | None:
    """Why ``folder`` is not a complete cache entry for ``source``, or ``None`` when it is.

    Checks the manifest, the recorded file sizes (catches truncation) and each safetensors header
    (catches a damaged header of unchanged size). Hashing every byte would cost a second per load.
    """
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        return "missing" if not folder.exists() else f"no {MANIFEST_NAME} (interrupted or foreign folder)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        return f"unreadable {MANIFEST_NAME}: {error}"
    if manifest.get("format") != CACHE_FORMAT or manifest.get("source") != source:
        return "built from a different source or by another sapo version"
    for name, size in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return f"{name} is missing or has the wrong size (truncated?)"
        if name.endswith(".safetensors") and not _safetensors_header_ok(path):
            return f"{name} has a damaged header"
    return None


def _safetensors_header_ok(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception:  # noqa: BLE001 - safetensors raises its own error type
        return False
    return True
