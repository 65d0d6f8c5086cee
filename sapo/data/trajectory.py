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
    "Cost",
    "Trajectory",
    "TrajectoryFormatError",
    "read_jsonl",
    "write_jsonl",
    "to_trl_stepwise",
    "from_trl_stepwise",
    "to_processbench",
    "from_processbench",
]


class TrajectoryFormatError(ValueError):
    """A trajectory record (in memory or in a file) is malformed; the message names the place."""


class FieldwiseSum:
    """Mixin for dataclass records of counters: ``a + b`` adds them field by field."""

    def __add__(self, other):
        return type(self)(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


@dataclass
class Cost(FieldwiseSum):
    """What labelling cost: rollout estimates, sampled completions, generated tokens, verifier passes, time.

    Costs add up (``a + b``), so a strategy can charge each trajectory and report a total.
    """

    rollout_estimates: int = 0
    completions: int = 0
    generated_tokens: int = 0
    verifier_passes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "cost") -> Cost:
        if not isinstance(data, dict):
            raise TrajectoryFormatError(f"{where}: expected an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TrajectoryFormatError(
                f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        for name, value in data.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise TrajectoryFormatError(f"{where}.{name}: expected a non-negative number, got {value!r}")
        return cls(**data)


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
        """Index of the first step labelled below 0.5, or -1 when every step is correct (ProcessBench's rule)."""
        if self.labels is None:
            raise ValueError(f"trajectory {self.question_id!r} has no labels, so no first error")
        return next((i for i, v in enumerate(self.labels) if v < 0.5), -1)

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


def write_jsonl(trajectories: Iterable[Trajectory], path: str | os.PathLike[str]) -> Path:
    """Write one JSON object per line, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for t in trajectories:
            fh.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)
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
    """One ProcessBench row: ``label`` is the index of the first step labelled wrong, or -1."""
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
    if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
        raise TrajectoryFormatError(
            f"{where} (id {row['id']!r}): field 'label' must be -1 or a step index below {len(steps)}, got {label!r}"
        )
    first_error = len(steps) if label == -1 else label
    outcome = row.get("final_answer_correct")
    return Trajectory(
        question_id=str(row["id"]),
        question=row["problem"],
        steps=list(steps),
        labels=[1.0 if i < first_error else 0.0 for i in range(len(steps))],
        outcome=None if outcome is None else bool(outcome),
        label_source="processbench",
        meta={"id": row["id"]},
    )
