"""Trajectories, their step labels and what the labels cost, with JSONL and converters.

A :class:`Trajectory` is one sampled (or gold) solution to one question, split into steps. It is the value
that flows between every phase of the loop: the sampler writes it, a task checks its outcome, a supervision
strategy labels its steps, the verifier trains on it. Every field round-trips through JSON, so each phase
can be written to and read back from a run directory.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "NO_ERROR",
    "Cost",
    "Trajectory",
    "TrajectoryFormatError",
    "read_jsonl",
    "write_jsonl",
    "to_trl_stepwise",
    "from_trl_stepwise",
    "to_processbench",
    "from_processbench",
    "first_error_of",
    "prefix_labels",
]


class TrajectoryFormatError(ValueError):
    """A trajectory record (in memory or in a file) is malformed; the message names the place."""


# --- first errors: the one rule between step labels and the first wrong step ------------------------------

#: the first error of a trajectory none of whose steps is wrong (ProcessBench's convention)
NO_ERROR = -1


def first_error_of(labels: Sequence[float], threshold: float = 0.5) -> int:
    """The index of the first label below ``threshold`` (the first step judged wrong), or :data:`NO_ERROR`
    when no label is below it. Soft labels work too: 0.4 is wrong, 0.5 is not."""
    return next((i for i, v in enumerate(labels) if v < threshold), NO_ERROR)


def prefix_labels(num_steps: int, first_error: int) -> list[float]:
    """The labels of ``num_steps`` steps whose first error is ``first_error``: 1.0 before it, 0.0 from it on,
    and all 1.0 for :data:`NO_ERROR`. So ``first_error_of(prefix_labels(n, e)) == e``. A first error that is
    neither :data:`NO_ERROR` nor a step index raises ``ValueError``."""
    if first_error == NO_ERROR:
        return [1.0] * num_steps
    if not 0 <= first_error < num_steps:
        raise ValueError(f"first error {first_error} outside a trajectory of {num_steps} steps")
    return [1.0] * first_error + [0.0] * (num_steps - first_error)


@dataclass
class Cost:
    """What generating and labelling cost: one record for the sampler and the supervision strategies.

    The sampler adds the cost of each call to a running total (:attr:`~sapo.rollout.Sampler.cost`); a
    strategy charges each trajectory it labels (``trajectory.cost``) and reports the sum. Costs add up
    (``a + b``, or :meth:`add` in place), and ``a - b`` is the cost between two readings of a running total.
    A record only holds what its producer counts: a labelled trajectory's has no sampling details (``calls``,
    ``prompt_tokens``, ...), a sampler's no ``rollout_estimates`` or ``verifier_passes``; :meth:`to_dict`
    writes only the fields that are not zero.

    Attributes:
        rollout_estimates: prefixes whose value was estimated from sampled continuations.
        completions: sequences generated (trajectories, continuations).
        generated_tokens: tokens generated, each sequence counted up to and including its stop point or EOS.
        verifier_passes: trajectories scored by the verifier (one forward pass each).
        seconds: wall time.
        calls: sampling calls (one list of prompts each).
        batches: model batches (``generate`` calls).
        prompt_tokens: the rows' prompt tokens, each row counted in full, padding excluded.
        prefill_tokens: token positions the model computed to read those prompts, padding included: with a
            shared prefill a prefix common to the batch and each distinct prompt are read once, so this can be
            far below ``prompt_tokens``.
        padding_tokens: padding positions among ``prefill_tokens`` (a batch is rectangular).
        idle_row_steps: decoding steps spent on rows that had already finished while their batch went on.
        stop_check_seconds: time spent deciding whether rows are finished (decoding text, the stop rule).
    """

    rollout_estimates: int = 0
    completions: int = 0
    generated_tokens: int = 0
    verifier_passes: int = 0
    seconds: float = 0.0
    calls: int = 0
    batches: int = 0
    prompt_tokens: int = 0
    prefill_tokens: int = 0
    padding_tokens: int = 0
    idle_row_steps: int = 0
    stop_check_seconds: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(**{name: getattr(self, name) + getattr(other, name) for name in _COST_FIELDS})

    def __sub__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(**{name: getattr(self, name) - getattr(other, name) for name in _COST_FIELDS})

    def add(self, other: Cost) -> None:
        """Add ``other`` in place (a running total)."""
        for name in _COST_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def sequences_per_second(self) -> float:
        return self.completions / self.seconds if self.seconds > 0 else 0.0

    @property
    def padding_share(self) -> float:
        """The share of prefilled positions that were padding."""
        return self.padding_tokens / self.prefill_tokens if self.prefill_tokens else 0.0

    @property
    def prefill_saving(self) -> float:
        """How many times fewer positions were prefilled than the rows' prompts hold: ``prompt / prefill``."""
        return self.prompt_tokens / self.prefill_tokens if self.prefill_tokens else 0.0

    @property
    def idle_share(self) -> float:
        """The share of decoded row-steps spent on rows that had already finished."""
        total = self.generated_tokens + self.idle_row_steps
        return self.idle_row_steps / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The fields that are not zero (a missing field reads back as 0)."""
        return {name: value for name in _COST_FIELDS if (value := getattr(self, name)) != 0}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "cost") -> Cost:
        """Read any subset of the fields (missing ones are 0), as :meth:`to_dict` and older versions wrote
        them; an unknown field or a negative or non-numeric value is an error naming ``where``."""
        if not isinstance(data, dict):
            raise TrajectoryFormatError(f"{where}: expected an object, got {type(data).__name__}")
        unknown = set(data) - set(_COST_FIELDS)
        if unknown:
            raise TrajectoryFormatError(
                f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_COST_FIELDS)}"
            )
        for name, value in data.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise TrajectoryFormatError(f"{where}.{name}: expected a non-negative number, got {value!r}")
        return cls(**data)


_COST_FIELDS = tuple(f.name for f in fields(Cost))


@dataclass
class Trajectory:
    """One solution to one question, as steps, with its outcome and (once labelled) a label per step.

    Attributes:
        question_id: identifies the question (several trajectories share one).
        question: the question text (not the prompt: prompts are the task's business).
        steps: the solution's steps, in order; the last one states the final answer.
        final_answer: the answer extracted from the steps, or ``None`` when none was found.
        outcome: whether the final answer is right (``None`` until checked).
        labels: one value per step in [0, 1]: hard labels are 0 or 1, soft labels anything between;
            ``None`` until a supervision strategy has labelled the trajectory.
        label_source: the name of the strategy that produced ``labels`` (or ``"gold"``, ``"oracle"``).
        cost: what producing ``labels`` cost.
        gold_answer: the reference answer, where the task has one.
        meta: anything else worth keeping (sampling seed, parent trajectory of an expansion, ...).
    """

    question_id: str
    question: str
    steps: list[str]
    final_answer: str | None = None
    outcome: bool | None = None
    labels: list[float] | None = None
    label_source: str | None = None
    cost: Cost = field(default_factory=Cost)
    gold_answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def is_labelled(self) -> bool:
        return self.labels is not None

    @property
    def has_hard_labels(self) -> bool:
        return self.labels is not None and all(v in (0.0, 1.0) for v in self.labels)

    @property
    def first_error(self) -> int:
        """Index of the first step labelled below 0.5, or :data:`NO_ERROR` (-1) when every step is correct
        (:func:`first_error_of`, ProcessBench's rule)."""
        if self.labels is None:
            raise ValueError(f"trajectory {self.question_id!r} has no labels, so no first error")
        return first_error_of(self.labels)

    def text(self, separator: str = "\n") -> str:
        """The completion as the models see it: every step followed by the separator."""
        return "".join(step + separator for step in self.steps)

    def validate(self, where: str | None = None) -> None:
        """Raise :class:`TrajectoryFormatError` naming ``where`` and the field when a field is malformed."""
        where = where or f"trajectory {self.question_id!r}"
        if not isinstance(self.question_id, str):
            raise TrajectoryFormatError(
                f"{where}: field 'question_id' must be a string, got {self.question_id!r}"
            )
        if not isinstance(self.question, str):
            raise TrajectoryFormatError(f"{where}: field 'question' must be a string")
        if not isinstance(self.steps, list) or not all(isinstance(s, str) for s in self.steps):
            raise TrajectoryFormatError(f"{where}: field 'steps' must be a list of strings")
        if self.outcome is not None and not isinstance(self.outcome, bool):
            raise TrajectoryFormatError(
                f"{where}: field 'outcome' must be true, false or null, got {self.outcome!r}"
            )
        if self.labels is not None:
            if not isinstance(self.labels, list):
                raise TrajectoryFormatError(f"{where}: field 'labels' must be a list or null")
            if len(self.labels) != len(self.steps):
                raise TrajectoryFormatError(
                    f"{where}: field 'labels' has {len(self.labels)} values for {len(self.steps)} steps"
                )
            for i, v in enumerate(self.labels):
                if (
                    isinstance(v, bool)
                    or not isinstance(v, (int, float))
                    or math.isnan(v)
                    or not 0.0 <= v <= 1.0
                ):
                    raise TrajectoryFormatError(
                        f"{where}: field 'labels[{i}]' must be a number in [0, 1], got {v!r}"
                    )
            self.labels = [float(v) for v in self.labels]
        if not isinstance(self.cost, Cost):
            raise TrajectoryFormatError(f"{where}: field 'cost' must be a Cost")
        if not isinstance(self.meta, dict):
            raise TrajectoryFormatError(f"{where}: field 'meta' must be an object")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cost"] = self.cost.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "trajectory") -> Trajectory:
        """Build from a JSON object; every problem is reported with ``where`` and the field's name."""
        if not isinstance(data, dict):
            raise TrajectoryFormatError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TrajectoryFormatError(
                f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        for required in ("question_id", "question", "steps"):
            if required not in data:
                raise TrajectoryFormatError(f"{where}: missing field '{required}'")
        kwargs = dict(data)
        kwargs["cost"] = Cost.from_dict(kwargs.get("cost") or {}, where=f"{where}: field 'cost'")
        kwargs.setdefault("meta", {})
        if kwargs["meta"] is None:
            kwargs["meta"] = {}
        # Validate with ``where`` (file and line) rather than through __post_init__'s generic name.
        values = {
            f.name: f.default_factory() if f.default is MISSING else f.default
            for f in fields(cls)
            if f.name not in kwargs
        }
        values.update(kwargs)
        trajectory = object.__new__(cls)
        trajectory.__dict__.update(values)
        trajectory.validate(where)
        return trajectory


def write_jsonl(records: Iterable[Any], path: str | os.PathLike[str]) -> Path:
    """Write one JSON object per line, atomically: a temporary file, flushed to disk, then renamed into place,
    so a reader (or a rerun after a crash) sees the whole file or none of it. A record is a dict or anything
    with ``to_dict()`` (a :class:`Trajectory`, a preference pair). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for record in records:
            data = record if isinstance(record, dict) else record.to_dict()
            fh.write(json.dumps(data, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed object)`` for every non-blank line; a bad line names file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                raise TrajectoryFormatError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from None


def read_jsonl(path: str | os.PathLike[str]) -> list[Trajectory]:
    """Read trajectories written by :func:`write_jsonl`; errors name the file, the line and the field."""
    return [Trajectory.from_dict(obj, where=f"{path}, line {lineno}") for lineno, obj in iter_jsonl(path)]


# --- TRL's stepwise format: {"prompt", "completions": [step, ...], "labels": [bool, ...]} -------------------


def to_trl_stepwise(trajectory: Trajectory, threshold: float = 0.5) -> dict[str, Any]:
    """One row of TRL's stepwise-supervision format. TRL takes boolean labels: soft labels are thresholded."""
    if trajectory.labels is None:
        raise ValueError(f"trajectory {trajectory.question_id!r} has no labels to export")
    return {
        "prompt": trajectory.question,
        "completions": list(trajectory.steps),
        "labels": [v >= threshold for v in trajectory.labels],
    }


def from_trl_stepwise(row: dict[str, Any], question_id: str, where: str = "row") -> Trajectory:
    """A trajectory from a TRL stepwise row (the outcome is the last step's label)."""
    for key in ("prompt", "completions", "labels"):
        if key not in row:
            raise TrajectoryFormatError(f"{where}: missing field '{key}'")
    labels = [float(bool(v)) for v in row["labels"]]
    return Trajectory(
        question_id=question_id,
        question=row["prompt"],
        steps=list(row["completions"]),
        labels=labels,
        outcome=bool(labels[-1]) if labels else None,
        label_source="trl",
    )


# --- ProcessBench rows: {"id", "problem", "steps", "label": first wrong step or -1, "final_answer_correct"} ---


def to_processbench(trajectory: Trajectory) -> dict[str, Any]:
    """One ProcessBench row: ``label`` is the index of the first step labelled wrong, or :data:`NO_ERROR`."""
    row: dict[str, Any] = {
        "id": trajectory.meta.get("id", trajectory.question_id),
        "problem": trajectory.question,
        "steps": list(trajectory.steps),
        "label": trajectory.first_error,
    }
    if trajectory.outcome is not None:
        row["final_answer_correct"] = trajectory.outcome
    return row


def from_processbench(row: dict[str, Any], where: str = "row") -> Trajectory:
    """A hard-labelled trajectory from a ProcessBench row: steps before ``label`` are 1, the rest 0."""
    for key in ("id", "problem", "steps", "label"):
        if key not in row:
            raise TrajectoryFormatError(f"{where}: missing field '{key}'")
    steps = row["steps"]
    label = row["label"]
    if not isinstance(steps, Sequence) or isinstance(steps, str) or not steps:
        raise TrajectoryFormatError(f"{where} (id {row['id']!r}): field 'steps' must be a non-empty list")
    if isinstance(label, bool) or not isinstance(label, int) or not NO_ERROR <= label < len(steps):
        raise TrajectoryFormatError(
            f"{where} (id {row['id']!r}): field 'label' must be -1 or a step index below {len(steps)}, got {label!r}"
        )
    outcome = row.get("final_answer_correct")
    return Trajectory(
        question_id=str(row["id"]),
        question=row["problem"],
        steps=list(steps),
        labels=prefix_labels(len(steps), label),
        outcome=None if outcome is None else bool(outcome),
        label_source="processbench",
        meta={"id": row["id"]},
    )
