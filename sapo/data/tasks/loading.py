"""Reading task data: local files, local folders laid out like a hub dataset, and hub datasets.

Every record comes back as a :class:`Row` that remembers where it came from, so that any problem found
later (a missing field, an answer that is not a number) can be reported with the file and line, or the
dataset and row, and the field. Tasks decide whether a bad row stops the run or is skipped and counted
(:class:`InvalidRows`).

Sources, in the order they are recognised:

- a local file: ``.jsonl`` / ``.jsonl.gz`` (one JSON object per line), ``.json`` (an array of objects, or
  one object per line), ``.parquet``. A file is one split: ``split`` and ``name`` are ignored.
- a local folder: the split's file is found by name (``{split}.jsonl``, ``{split}-00000-of-00001.parquet``,
  ``{name}/{split}-*.parquet``, ``data/{split}-*``: any supported file whose name starts with the split
  followed by ``-``, ``_`` or ``.``; shards are read in name order); a folder whose files cannot be matched
  is handed to ``datasets.load_dataset(folder, name, split=split)``.
- a name that looks like a path (``./x``, ``/x``, ``~/x``, ``x.jsonl``) and does not exist raises
  :class:`FileNotFoundError` ("no such file or folder");
- anything else is a hub dataset id, read with ``datasets.load_dataset(id, name, split=split)`` after one
  quick check that the hub can be used (:func:`sapo.data.hub.hub_problem`): with ``HF_HUB_OFFLINE=1`` the hub is
  not tried (a copy in the Hugging Face cache is still read), and a hub that does not answer within a few
  seconds raises :class:`~sapo.data.hub.HubUnavailableError` at once, naming the id and asking for a local path,
  instead of the libraries' minute of retries.

Nothing passes silently: with ``allow_empty=False`` (as tasks call it) a source that yields no row raises
:class:`EmptyDataError` naming the file and saying why (the file is empty, the slice leaves nothing, every
row was invalid); tasks check their questions the same way and log one warning with the count when rows
were skipped (:func:`check_loaded`).

Locations: lines of JSON Lines files are counted from 1 (as editors show them); items of a JSON array and
rows of a Parquet file or a ``datasets`` split are counted from 0 (as Python indexes them).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sapo.data.hub import HubUnavailableError, hub_problem, hub_unavailable_message

__all__ = [
    "EmptyDataError",
    "HubUnavailableError",
    "InvalidRowError",
    "InvalidRows",
    "Row",
    "check_loaded",
    "load_questions",
    "load_rows",
    "load_hub_rows",
    "find_split_files",
    "require_field",
    "DATA_SUFFIXES",
]

logger = logging.getLogger(__name__)

#: the file kinds :func:`load_rows` reads
DATA_SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".parquet")
#: endings that make a name a file name, never a hub id (the readable ones and other common data files)
_FILE_SUFFIXES = (*DATA_SUFFIXES, ".csv", ".tsv", ".txt", ".gz", ".zip", ".arrow")
#: how many skip reasons warnings and errors quote
SHOWN_REASONS = 3
#: what to pass instead of a hub id
_LOCAL_DATA = "a data file such as train.jsonl, .json or .parquet, or a folder holding one"

T = TypeVar("T")


class EmptyDataError(ValueError):
    """A data source yields no row or no question; the message names the source and says why (the file is
    empty, the slice ``start``/``stop`` leaves nothing, every row was invalid and skipped)."""


class InvalidRowError(ValueError):
    """A data row is malformed. The message names the file (or dataset), the line (or row) and the field.

    ``InvalidRowError(where, problem, field)`` builds the message ``"{where}: field '{field}' {problem}"``
    (``"{where}: {problem}"`` without a field); ``InvalidRowError(message)`` takes a message as it is.

    Attributes:
        where: the row's location (``"data/train.jsonl, line 12"``).
        field: the offending field, or ``None`` when the row as a whole is bad (not JSON, not an object).
        problem: what is wrong, without the location.
    """

    def __init__(self, where: str, problem: str | None = None, field: str | None = None) -> None:
        self.where = where
        self.field = field
        self.problem = problem
        if problem is None:
            message = where
        elif field is not None:
            message = f"{where}: field '{field}' {problem}"
        else:
            message = f"{where}: {problem}"
        super().__init__(message)

    def __reduce__(self):  # keep the error picklable (multiprocessing data loaders)
        return (type(self), (self.where, self.problem, self.field))


@dataclass
class Row:
    """One parsed record and where it came from.

    Attributes:
        data: the parsed record (a JSON object, a Parquet row, a ``datasets`` row).
        where: ``"path/to/file.jsonl, line 12"`` or ``"hub dataset openai/gsm8k (main) split train, row 12"``.
        index: the record's position in its split, from 0 (invalid records count too, so the position of a
            record does not depend on whether bad ones are skipped); usable in stable question ids.
    """

    data: dict[str, Any]
    where: str
    index: int | None = None

    def error(self, problem: str, field: str | None = None) -> InvalidRowError:
        """An :class:`InvalidRowError` located at this row (to be raised by the caller)."""
        return InvalidRowError(self.where, problem, field)


def require_field(row: Row, name: str, kind: type | tuple[type, ...] = str, allow_empty: bool = False) -> Any:
    """The value of field ``name`` of ``row``; raise :class:`InvalidRowError` when it is missing, null,
    not of type ``kind`` or (for strings and lists, unless ``allow_empty``) empty."""
    if name not in row.data:
        raise row.error(f"is missing (the row has {sorted(row.data)})", name)
    value = row.data[name]
    if value is None:
        raise row.error("is null", name)
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
        expected = " or ".join(k.__name__ for k in _as_tuple(kind))
        raise row.error(f"must be {expected}, got {type(value).__name__} {_preview(value)}", name)
    if (
        not allow_empty
        and isinstance(value, (str, list))
        and not (value.strip() if isinstance(value, str) else value)
    ):
        raise row.error("is empty", name)
    return value


@dataclass
class InvalidRows:
    """What a task does with bad rows: raise (``skip=False``) or skip them and keep the reason.

    Tasks expose one as ``task.skipped``: ``len(task.skipped)`` rows were left out, ``task.skipped.reasons``
    says why (each reason names the place and the field). :func:`check_loaded` logs one warning with the count
    and the first reasons when rows were skipped.
    """

    skip: bool = False
    reasons: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.reasons)

    def handle(self, error: InvalidRowError) -> None:
        """Raise ``error``, or, when skipping, record it."""
        if not self.skip:
            raise error
        self.reasons.append(str(error))

    def convert(self, rows: Iterable[Row], convert: Callable[[Row], T]) -> list[T]:
        """``convert`` applied to every row; a row whose conversion raises :class:`InvalidRowError` is
        handled by :meth:`handle` (so it is skipped and counted, or the error propagates)."""
        out: list[T] = []
        for row in rows:
            try:
                out.append(convert(row))
            except InvalidRowError as error:
                self.handle(error)
        return out

    def clear(self) -> None:
        self.reasons.clear()

    def first_reasons(self, source: str | None = None, limit: int = SHOWN_REASONS) -> str:
        """The first ``limit`` reasons in file order, ``"; "``-joined, each without the leading
        ``"{source}, "`` (so ``"line 4: is not valid JSON ..."``), and ``"; ..."`` when there are more."""
        prefix = f"{source}, " if source else None
        ordered = sorted(self.reasons, key=_position)
        shown = [r[len(prefix) :] if prefix and r.startswith(prefix) else r for r in ordered[:limit]]
        more = "; ..." if len(self.reasons) > limit else ""
        return "; ".join(shown) + more


_POSITION_RE = re.compile(r"^(?P<where>.*?), (?:line|row) (?P<n>\d+)\b")


def _position(reason: str) -> tuple[str, int]:
    """A reason's place (file, line or row) for sorting; reasons without one keep their order at the end."""
    match = _POSITION_RE.match(reason)
    return (match["where"], int(match["n"])) if match else ("\uffff", 0)


def load_rows(
    source: str | os.PathLike[str],
    split: str | None = None,
    *,
    name: str | None = None,
    start: int | None = None,
    stop: int | None = None,
    invalid: InvalidRows | None = None,
    allow_empty: bool = True,
    argument: str | None = None,
) -> list[Row]:
    """The rows ``[start:stop]`` of a split of ``source`` (a file, a folder or a hub dataset id; see the
    module's docstring for how each is read).

    ``start`` and ``stop`` slice the records as Python slices do (blank lines are not records; invalid
    records are). A record inside the slice that is not JSON, or not an object, raises
    :class:`InvalidRowError` naming the file and the line, unless ``invalid`` skips it (then it is recorded
    there). A missing file raises :class:`FileNotFoundError`; a hub id while the hub cannot be used raises
    :class:`~sapo.data.hub.HubUnavailableError` (its message names ``argument``, the caller's name for
    ``source``, when given). With ``allow_empty=False``, getting no row raises :class:`EmptyDataError`
    naming the file and why.
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        label = str(path)
        records = list(_read_file(path))
    elif path.is_dir():
        files = find_split_files(path, split, name)
        if not files:
            return _read_datasets(
                str(path),
                split,
                name,
                label=f"dataset folder {path}",
                start=start,
                stop=stop,
                allow_empty=allow_empty,
            )
        label = str(files[0]) if len(files) == 1 else f"{path} (split {split}: {len(files)} files)"
        records = [record for f in files for record in _read_file(f)]
    elif _looks_like_path(text):
        raise FileNotFoundError(f"{text}: no such file or folder")
    else:
        return load_hub_rows(
            text, split, name=name, start=start, stop=stop, allow_empty=allow_empty, argument=argument
        )
    rows = []
    skipped_before = len(invalid) if invalid is not None else 0
    selected = range(len(records))[slice(start, stop)]
    for index in selected:
        record = records[index]
        if isinstance(record, InvalidRowError):
            _reject(record, invalid)
        else:
            rows.append(Row(record.data, record.where, index))
    if not rows and not allow_empty:
        raise _no_rows_error(label, len(records), start, stop, invalid, skipped_before, source_prefix=label)
    return rows


def load_hub_rows(
    dataset: str,
    split: str | None,
    *,
    name: str | None = None,
    start: int | None = None,
    stop: int | None = None,
    allow_empty: bool = True,
    argument: str | None = None,
) -> list[Row]:
    """Rows of ``datasets.load_dataset(dataset, name, split=split)`` (a hub id, or a local folder with a hub
    dataset's layout and ``README.md`` configs), sliced ``[start:stop]``.

    For a hub id the hub is checked first (:func:`sapo.data.hub.hub_problem`): when it cannot be used,
    :class:`~sapo.data.hub.HubUnavailableError` names the id, says why and asks for a local path (as
    ``argument``, when given), without retries; in offline mode a copy in the Hugging Face cache is read.
    """
    if split is None:
        raise ValueError(f"hub dataset {dataset}: a split is needed (such as 'train' or 'test')")
    label = f"hub dataset {dataset}"
    if Path(dataset).expanduser().is_dir():
        return _read_datasets(dataset, split, name, label, start=start, stop=stop, allow_empty=allow_empty)
    problem = hub_problem()
    if problem is None:
        return _read_datasets(dataset, split, name, label, start=start, stop=stop, allow_empty=allow_empty)
    import datasets

    if datasets.config.HF_HUB_OFFLINE:  # datasets reads its cache and makes no connection
        try:
            return _read_datasets(
                dataset, split, name, label, start=start, stop=stop, allow_empty=allow_empty
            )
        except (ConnectionError, FileNotFoundError):
            note, hint = ", and the dataset is not in the local Hugging Face cache", ""
    else:
        note, hint = "", ", or set HF_HUB_OFFLINE=1 to read a copy already in the local Hugging Face cache"
    message = hub_unavailable_message(
        dataset, problem, kind="dataset", local=_LOCAL_DATA, argument=argument, note=note, hint=hint
    )
    raise HubUnavailableError(message) from None


def find_split_files(
    folder: str | os.PathLike[str], split: str | None, name: str | None = None
) -> list[Path]:
    """The data files of ``split`` in ``folder`` (searched three levels deep), in name order.

    A file belongs to the split when its name starts with the split followed by ``-``, ``_`` or ``.`` and
    ends with a supported suffix. With ``name`` (a config such as ``main``), files under a folder of that
    name are preferred. Files of several configs without ``name`` are ambiguous and raise ``ValueError``.
    With ``split=None`` the folder must hold exactly one data file. An empty list means no file matched.
    """
    folder = Path(folder)
    data_files = sorted(p for p in _walk(folder, depth=3) if p.name.endswith(DATA_SUFFIXES) and p.is_file())
    if split is None:
        if len(data_files) == 1:
            return data_files
        if not data_files:
            return []
        listed = ", ".join(str(p.relative_to(folder)) for p in data_files[:10])
        raise ValueError(f"{folder}: several data files ({listed}); name a split")
    pattern = re.compile(rf"^{re.escape(split)}([-_.].*)?$")
    matches = [p for p in data_files if pattern.match(_stem(p.name))]
    if name is not None:
        in_config = [p for p in matches if name in p.relative_to(folder).parts[:-1]]
        if in_config:
            return in_config
    parents = sorted({p.parent for p in matches})
    if len(parents) > 1:
        configs = ", ".join(str(p.relative_to(folder)) or "." for p in parents)
        raise ValueError(f"{folder}: split {split!r} is in several folders ({configs}); name the config")
    return matches


# --- readers ------------------------------------------------------------------------------------------------
# Readers yield one entry per record: a Row, or the InvalidRowError that the record raises when it is used.


def _read_file(path: Path) -> Iterator[Row | InvalidRowError]:
    """Records of one file, read by its suffix."""
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        yield from _read_json_lines(path)
    elif path.name.endswith(".json"):
        yield from _read_json(path)
    elif path.name.endswith(".parquet"):
        yield from _read_parquet(path)
    else:
        suffixes = ", ".join(DATA_SUFFIXES)
        raise ValueError(f"{path}: unsupported file type (supported: {suffixes})")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it ends with ``.gz``."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:  # gzip errors are OSErrors
        raise InvalidRowError(str(path), f"cannot be read ({err})") from None


def _read_json_lines(path: Path, data: bytes | None = None) -> Iterator[Row | InvalidRowError]:
    """One JSON object per non-blank line; lines counted from 1."""
    data = _read_bytes(path) if data is None else data
    for lineno, raw in enumerate(data.splitlines(), start=1):
        where = f"{path}, line {lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield InvalidRowError(where, f"is not UTF-8 text ({err.reason} at column {err.start + 1})")
            continue
        if line.strip():
            yield _parse_object(line, where)


def _read_json(path: Path) -> Iterator[Row | InvalidRowError]:
    """A JSON array of objects (items counted from 0), or else one object per line."""
    raw = _read_bytes(path)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        yield from _read_json_lines(path, raw)
        return
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InvalidRowError(str(path), f"must hold a JSON array of objects, got {type(data).__name__}")
    for index, item in enumerate(data):
        where = f"{path}, row {index}"
        if isinstance(item, dict):
            yield Row(item, where)
        else:
            yield InvalidRowError(where, f"is not a JSON object (got {type(item).__name__})")


def _read_parquet(path: Path) -> Iterator[Row | InvalidRowError]:
    """The rows of a Parquet file, counted from 0."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several kinds (ArrowInvalid, OSError)
        raise InvalidRowError(str(path), f"is not a readable Parquet file ({err})") from None
    for index, record in enumerate(table.to_pylist()):
        yield Row(record, f"{path}, row {index}")


def _read_datasets(
    source: str,
    split: str | None,
    name: str | None,
    label: str,
    start: int | None = None,
    stop: int | None = None,
    allow_empty: bool = True,
) -> list[Row]:
    """Rows of ``datasets.load_dataset(source, name, split=split)``; ``label`` names the source in places."""
    import datasets

    if split is None:
        raise ValueError(f"{label}: a split is needed (such as 'train' or 'test')")
    dataset = datasets.load_dataset(source, name, split=split)
    indices = range(len(dataset))[slice(start, stop)]
    config = f" ({name})" if name else ""
    if not indices and not allow_empty:
        raise _no_rows_error(f"{label}{config} split {split}", len(dataset), start, stop, None, 0)
    records = dataset.select(indices)
    return [
        Row(dict(record), f"{label}{config} split {split}, row {i}", i)
        for i, record in zip(indices, records, strict=True)
    ]


def _parse_object(text: str, where: str) -> Row | InvalidRowError:
    """The JSON object in ``text``, or the error saying why it is not one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return InvalidRowError(where, f"is not valid JSON ({err.msg} at column {err.colno})")
    if not isinstance(data, dict):
        return InvalidRowError(where, f"is not a JSON object (got {type(data).__name__})")
    return Row(data, where)


def _reject(error: InvalidRowError, invalid: InvalidRows | None) -> None:
    if invalid is None:
        raise error
    invalid.handle(error)


# --- nothing passes silently --------------------------------------------------------------------------------


def load_questions(
    source: str,
    split: str | None,
    convert: Callable[[Row], T],
    skipped: InvalidRows,
    *,
    name: str | None = None,
    start: int | None = None,
    stop: int | None = None,
) -> list[T]:
    """A task's questions: the rows of ``source`` (:func:`load_rows`, an empty file or slice refused, bad
    rows counted in ``skipped``), each made a question by ``convert``, then :func:`check_loaded`."""
    skipped.clear()
    rows = load_rows(
        source,
        split,
        name=name,
        start=start,
        stop=stop,
        invalid=skipped,
        allow_empty=False,
        argument="source",
    )
    return check_loaded(skipped.convert(rows, convert), source, skipped, start=start, stop=stop)


def check_loaded(
    items: list[T],
    source: str,
    skipped: InvalidRows,
    *,
    what: str = "question",
    start: int | None = None,
    stop: int | None = None,
) -> list[T]:
    """``items`` as they are, once checked: none at all raises :class:`EmptyDataError` naming ``source``
    (every row that was read was invalid and skipped); when rows were skipped, one warning gives their
    count, ``source`` and the first reasons with their lines.

    Tasks call it at the end of ``load`` (their rows came from :func:`load_rows` with
    ``allow_empty=False``, so an empty file or slice has raised already); ``task.skipped`` keeps the count.
    """
    label = str(Path(source).expanduser()) if source else source
    if not items:
        selection = _selection(start, stop)
        within = f" selected by {selection}" if selection else ""
        raise EmptyDataError(
            f"{label}: no {what} to use: {_all_invalid(len(skipped), within)} (skip_invalid=True); "
            f"the first: {skipped.first_reasons(label)}"
        )
    if skipped.reasons:
        logger.warning(
            "%s: skipped %s (skip_invalid=True), kept %s; the first: %s",
            label,
            _count(len(skipped), "invalid row"),
            _count(len(items), what),
            skipped.first_reasons(label),
        )
    return items


def _no_rows_error(
    label: str,
    total: int,
    start: int | None,
    stop: int | None,
    invalid: InvalidRows | None,
    skipped_before: int,
    source_prefix: str | None = None,
) -> EmptyDataError:
    """Why a source gave no row: it holds none, the slice leaves none, or every row in the slice was invalid."""
    selection = _selection(start, stop)
    if total == 0:
        return EmptyDataError(f"{label}: holds no rows (it is empty, or has only blank lines)")
    if invalid is not None and len(invalid) > skipped_before:
        within = f" selected by {selection}" if selection else ""
        skipped = InvalidRows(reasons=invalid.reasons[skipped_before:])
        return EmptyDataError(
            f"{label}: no row to use: {_all_invalid(len(skipped), within)} (skip_invalid=True); "
            f"the first: {skipped.first_reasons(source_prefix)}"
        )
    return EmptyDataError(f"{label}: {selection} selects no row of its {_count(total, 'row')}")


def _selection(start: int | None, stop: int | None) -> str:
    """``"start=3, stop=5"`` (the parts given), or ``""``."""
    return ", ".join(
        f"{key}={value}" for key, value in (("start", start), ("stop", stop)) if value is not None
    )


def _all_invalid(n: int, within: str) -> str:
    if n == 1:
        return f"the only row{within} is invalid and was skipped"
    return f"all {n} rows{within} are invalid and were skipped"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- small helpers ----------------------------------------------------------------------------------------


def _walk(folder: Path, depth: int) -> Iterator[Path]:
    """Files in ``folder`` and its sub-folders down to ``depth`` levels, skipping hidden entries."""
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if depth > 1:
                yield from _walk(entry, depth - 1)
        else:
            yield entry


def _stem(filename: str) -> str:
    for suffix in DATA_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def _looks_like_path(text: str) -> bool:
    """Whether ``text`` names a local file rather than a hub id (``owner/name`` or ``name``)."""
    return (
        text.startswith((".", "/", "~"))
        or "\\" in text
        or text.lower().endswith(_FILE_SUFFIXES)
        or text.count("/") > 1
        or os.sep != "/"
        and os.sep in text
    )


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _preview(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
