"""ProcessBench evaluation of a verifier: find the first wrong step of each solution.

A ProcessBench file (Zheng et al., 2024) holds rows ``{"id", "problem", "steps", "label",
"final_answer_correct"}`` (``generator`` and other fields are allowed and ignored): ``label`` is the index of
the earliest wrong step, or -1 when every step is right. It may be a JSON array, JSON Lines, or anything
:func:`~sapo.data.tasks.loading.load_rows` reads. :func:`read_processbench` checks every row and rejects a
bad one with an error naming the file, the row (line of a JSONL file, index of a JSON array), its id, the
field and the problem.

The verifier's prediction for a row is the first step it scores below a threshold τ, or -1
(:func:`~sapo.models.verifier_metrics.first_error_prediction`); the scores are
:func:`~sapo.models.verifier_metrics.processbench_f1`'s accuracy on rows with an error, accuracy on rows
without, and their harmonic mean F1. τ is given, or chosen to maximise F1 on a separate set
(:func:`~sapo.models.verifier_metrics.choose_threshold`) and then applied unchanged to the evaluated sets, or
0.5 when neither; the result records which, with the value.

:func:`evaluate_on_oracle` runs the same protocol on trajectories sampled from a reasoner, with the true
first errors given by a task's step oracle (the synthetic arithmetic task is exact; GSM8K's is approximate).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sapo.data.reward import trajectory_reward
from sapo.data.tasks.base import Question, Task
from sapo.data.tasks.loading import InvalidRowError, Row, load_rows
from sapo.data.trajectory import Trajectory, from_processbench
from sapo.models.verifier_metrics import (
    choose_threshold,
    detection_accuracy,
    first_error_prediction,
    processbench_f1,
    step_auroc,
)
from sapo.supervision.first_error import largest_drop
from sapo.supervision.protocols import StepScorer

__all__ = [
    "DEFAULT_THRESHOLD",
    "FirstErrorScores",
    "VerifierEvaluation",
    "check_row",
    "evaluate_on_oracle",
    "evaluate_processbench",
    "processbench_trajectories",
    "read_processbench",
]

#: a ProcessBench source: a file, or rows already in memory
Source = str | os.PathLike | Sequence[Mapping[str, Any]]
#: the fields a row must have besides ``id``: their type, and how an error names it
ROW_FIELDS = {
    "problem": (str, "a string"),
    "steps": (list, "a list of strings"),
    "label": (int, "an integer"),
    "final_answer_correct": (bool, "true or false"),
}
#: τ when none is given or chosen: a step scored below even odds counts as wrong
DEFAULT_THRESHOLD = 0.5


# --- reading ----------------------------------------------------------------------------------------------


def read_processbench(path: str | os.PathLike[str], split: str | None = None) -> list[Trajectory]:
    """The rows of a ProcessBench file as hard-labelled trajectories (steps before ``label`` are 1, the rest
    0; see :func:`~sapo.data.trajectory.from_processbench`), every row checked by :func:`check_row`.

    ``split`` names the split of a folder or hub dataset (ProcessBench's are ``gsm8k``, ``math``,
    ``olympiadbench``, ``omnimath``); a file is one split.
    """
    return [_trajectory(row) for row in load_rows(path, split)]


def processbench_trajectories(rows: Sequence[Mapping[str, Any]], name: str = "rows") -> list[Trajectory]:
    """Rows already in memory as trajectories (see :func:`read_processbench`); errors name ``name[i]``."""
    return [_trajectory(Row(dict(row), f"{name}[{i}]", i)) for i, row in enumerate(rows)]


def check_row(row: Row) -> None:
    """Raise :class:`~sapo.data.tasks.loading.InvalidRowError` naming the row, its id and the field when
    a field is missing or of the wrong type, ``steps`` is empty or holds a blank step, or ``label`` is
    neither -1 nor a step index."""
    data = row.data
    if "id" not in data:
        raise row.error(f"is missing (the row has {sorted(data)})", "id")
    row_id = data["id"]
    where = f"{row.where} (id {row_id!r})"
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
        raise InvalidRowError(where, f"must be a string or an integer, got {type(row_id).__name__}", "id")
    for name, (kind, expected) in ROW_FIELDS.items():
        if name not in data:
            raise InvalidRowError(where, f"is missing (the row has {sorted(data)})", name)
        value = data[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidRowError(
                where, f"must be {expected}, got {type(value).__name__} {value!r:.40}", name
            )
    steps, label = data["steps"], data["label"]
    if not data["problem"].strip():
        raise InvalidRowError(where, "is empty", "problem")
    if not steps:
        raise InvalidRowError(where, "is empty (a solution needs at least one step)", "steps")
    for i, step in enumerate(steps):
        if not isinstance(step, str) or not step.strip():
            raise InvalidRowError(where, f"item {i} must be a non-empty string, got {step!r:.40}", "steps")
    if not -1 <= label < len(steps):
        raise InvalidRowError(
            where,
            f"must be -1 or a step index in [0, {len(steps) - 1}], got {label} ({len(steps)} steps)",
            "label",
        )


def _trajectory(row: Row) -> Trajectory:
    check_row(row)
    return from_processbench(row.data, where=row.where)


# --- scores -----------------------------------------------------------------------------------------------


@dataclass
class FirstErrorScores:
    """A verifier's ProcessBench scores on one set of solutions, with every row's label and prediction.

    Attributes:
        name: the set (a file's path, ``"rows"``, a task's name).
        error_accuracy: ``#{label ≠ -1, prediction = label} / #{label ≠ -1}``.
        correct_accuracy: ``#{label = -1, prediction = -1} / #{label = -1}``.
        f1: their harmonic mean.
        num_error, num_correct: rows with and without an error.
        step_auroc: :func:`~sapo.models.verifier_metrics.step_auroc` of the step scores against the step
            labels (``None`` without both right and wrong steps); independent of τ.
        detection_accuracy: on rows with an error, the share whose largest score drop
            (:func:`~sapo.supervision.first_error.largest_drop`, SAPO's detector) is the first error.
        random_step_accuracy: the same for a uniformly drawn step (the random-step ablation), in expectation.
        answer_auroc: the chance that a row with the right final answer has a higher mean step score (the
            reward that ranks the loop's pairs) than a row with a wrong one; ``None`` where the rows carry no
            checked outcome or only one kind. The step AUROC pools steps of different rows, so a verifier can
            rank whole answers better than it ranks steps, or worse.
        ids, labels, predictions: per row, in input order (to trace the numbers).
    """

    name: str
    error_accuracy: float
    correct_accuracy: float
    f1: float
    num_error: int
    num_correct: int
    step_auroc: float | None = None
    detection_accuracy: float = 0.0
    random_step_accuracy: float = 0.0
    answer_auroc: float | None = None
    ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self, prefix: str = "verifier_") -> dict[str, Any]:
        """The figures without the per-row lists, keyed ``<prefix><name>`` (the random step's under
        ``random_step_detection_accuracy``, the row counts under ``<prefix>rows``), as a run's report has them."""
        figures = (
            "f1",
            "error_accuracy",
            "correct_accuracy",
            "step_auroc",
            "detection_accuracy",
            "answer_auroc",
        )
        return {
            **{f"{prefix}{name}": getattr(self, name) for name in figures},
            "random_step_detection_accuracy": self.random_step_accuracy,
            f"{prefix}rows": {"with_error": self.num_error, "correct": self.num_correct},
        }


@dataclass
class VerifierEvaluation:
    """ProcessBench scores of one verifier on one or more sets, at one threshold.

    Attributes:
        threshold: τ, the score below which a step counts as wrong.
        threshold_source: ``"given"`` (by the caller), ``"chosen"`` (best F1 on ``threshold_set``) or
            ``"default"`` (neither: :data:`DEFAULT_THRESHOLD`).
        threshold_set: the set τ was chosen on (``None`` when given).
        threshold_metrics: the scores at τ on that set (``None`` when given).
        sets: the scores on each evaluated set, by name.
    """

    threshold: float
    threshold_source: str
    threshold_set: str | None
    threshold_metrics: dict[str, Any] | None
    sets: dict[str, FirstErrorScores]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "threshold_set": self.threshold_set,
            "threshold_metrics": self.threshold_metrics,
            "sets": {name: scores.to_dict() for name, scores in self.sets.items()},
        }


def score_trajectories(
    scorer: StepScorer, trajectories: Sequence[Trajectory], name: str
) -> list[list[float]]:
    """One ``scorer.score`` call on copies of the trajectories without their labels (a verifier never sees
    the answer key); each list must hold one finite score per step, else an error names the row."""
    unlabelled = [dataclasses.replace(t, labels=None, label_source=None) for t in trajectories]
    scores = [list(s) for s in scorer.score(unlabelled)] if trajectories else []
    if len(scores) != len(trajectories):
        raise ValueError(
            f"{name}: the scorer returned {len(scores)} score lists for {len(trajectories)} rows"
        )
    for i, (t, s) in enumerate(zip(trajectories, scores, strict=True)):
        if len(s) != t.num_steps or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in s):
            raise ValueError(
                f"{name}, row {i} (id {t.question_id!r}): the scorer returned {s!r:.80} for {t.num_steps} steps; "
                "expected one finite number per step"
            )
    return scores


def first_error_scores(
    name: str, trajectories: Sequence[Trajectory], scores: Sequence[Sequence[float]], threshold: float
) -> FirstErrorScores:
    """:func:`processbench_f1` of the predictions ``min{j : s_j < τ}`` against the trajectories' first
    errors (``Trajectory.first_error``), with the step AUROC, the largest-drop detector's accuracy and the
    per-row detail."""
    labels = [t.first_error for t in trajectories]
    predictions = [first_error_prediction(s, threshold) for s in scores]
    metrics = processbench_f1(predictions, labels)
    detection = detection_accuracy(
        [largest_drop(s) for s in scores], labels, [t.num_steps for t in trajectories]
    )
    return FirstErrorScores(
        name=name,
        **metrics,
        step_auroc=step_auroc(scores, [t.labels for t in trajectories]),
        detection_accuracy=detection["accuracy"],
        random_step_accuracy=detection["random_step"],
        answer_auroc=answer_auroc(trajectories, scores),
        ids=[str(t.meta.get("id", t.question_id)) for t in trajectories],
        labels=labels,
        predictions=predictions,
    )


def answer_auroc(trajectories: Sequence[Trajectory], scores: Sequence[Sequence[float]]) -> float | None:
    """How well a verifier ranks whole answers: :func:`~sapo.models.verifier_metrics.step_auroc` with one
    "step" per row, its mean step score ``r(τ)`` (:func:`~sapo.data.reward.trajectory_reward`) against its
    checked outcome. ``None`` when a row has no outcome, or when every row is right or every row wrong."""
    if not trajectories or any(t.outcome is None for t in trajectories):
        return None
    return step_auroc(
        [[trajectory_reward(s)] for s in scores], [[float(bool(t.outcome))] for t in trajectories]
    )


def evaluate_labelled(
    scorer: StepScorer,
    sets: Mapping[str, Sequence[Trajectory]],
    threshold: float | None = None,
    threshold_set: tuple[str, Sequence[Trajectory]] | None = None,
) -> VerifierEvaluation:
    """The ProcessBench protocol on labelled trajectories: τ given, or chosen on ``threshold_set``
    (``(name, trajectories)``, kept apart from ``sets``), or :data:`DEFAULT_THRESHOLD` when neither is given
    (recorded as ``"default"``); then each set scored at τ."""
    if threshold is not None and threshold_set is not None:
        raise ValueError("give a threshold or a separate set to choose it on, not both")
    threshold_metrics = None
    source = "given" if threshold is not None else "chosen" if threshold_set is not None else "default"
    if threshold is None and threshold_set is None:
        threshold = DEFAULT_THRESHOLD
    if threshold_set is not None:
        name, trajectories = threshold_set
        if not trajectories:
            raise ValueError(f"{name}: no rows to choose the threshold on")
        scores = score_trajectories(scorer, trajectories, name)
        threshold, threshold_metrics = choose_threshold(scores, [t.first_error for t in trajectories])
    assert threshold is not None
    results = {
        name: first_error_scores(
            name, trajectories, score_trajectories(scorer, trajectories, name), threshold
        )
        for name, trajectories in sets.items()
    }
    return VerifierEvaluation(
        threshold=float(threshold),
        threshold_source=source,
        threshold_set=None if threshold_set is None else threshold_set[0],
        threshold_metrics=threshold_metrics,
        sets=results,
    )


# --- entry points -----------------------------------------------------------------------------------------


def evaluate_processbench(
    scorer: StepScorer,
    path_or_rows: Source | Mapping[str, Source] | Sequence[str | os.PathLike],
    threshold: float | None = None,
    threshold_file: Source | None = None,
) -> VerifierEvaluation:
    """Score a verifier on ProcessBench files, per file.

    Args:
        scorer: the verifier (any :class:`~sapo.supervision.protocols.StepScorer`); it is called once per
            file, on all its rows.
        path_or_rows: a file; several files (a list of paths, or a mapping ``name -> file``); or rows in
            memory (a list of dicts, named ``"rows"``).
        threshold: τ, when it is known.
        threshold_file: else, a separate file (or rows) to choose τ on by best F1.

    At most one of ``threshold`` and ``threshold_file`` may be given; with neither, τ =
    :data:`DEFAULT_THRESHOLD`. The result says which, with τ.
    """
    sets = {name: _load_source(source, name) for name, source in _named_sources(path_or_rows).items()}
    chosen_on = None
    if threshold_file is not None:
        name = _source_name(threshold_file, "threshold rows")
        chosen_on = (name, _load_source(threshold_file, name))
    return evaluate_labelled(scorer, sets, threshold=threshold, threshold_set=chosen_on)


def evaluate_on_oracle(
    scorer: StepScorer,
    task: Task,
    trajectories: Sequence[Trajectory],
    questions: Sequence[Question] | None = None,
    threshold: float | None = None,
    threshold_trajectories: Sequence[Trajectory] | None = None,
) -> VerifierEvaluation:
    """The ProcessBench protocol on sampled trajectories whose true first errors come from ``task``'s oracle.

    Each trajectory's labels are ``task.oracle_labels`` (1 before the oracle's first error, 0 from it on;
    the inputs are not changed). ``questions`` are those the trajectories answer (default: ``task.load()``).
    τ is ``threshold``, or chosen on ``threshold_trajectories`` (other trajectories, labelled the same way),
    or :data:`DEFAULT_THRESHOLD`. The set is named after the task.
    """
    if not task.has_oracle:
        raise ValueError(f"task {task.name!r} has no step oracle")
    by_id = {q.id: q for q in (task.load() if questions is None else questions)}
    chosen_on = None
    if threshold_trajectories is not None:
        chosen_on = (f"{task.name} (threshold)", _oracle_labelled(task, threshold_trajectories, by_id))
    sets = {task.name: _oracle_labelled(task, trajectories, by_id)}
    return evaluate_labelled(scorer, sets, threshold=threshold, threshold_set=chosen_on)


def _oracle_labelled(
    task: Task, trajectories: Sequence[Trajectory], questions: Mapping[str, Question]
) -> list[Trajectory]:
    """Copies of the trajectories labelled by the task's oracle."""
    labelled = []
    for i, t in enumerate(trajectories):
        if t.question_id not in questions:
            raise KeyError(
                f"trajectory {i} answers question {t.question_id!r}, which is not among the questions"
            )
        if not t.steps:
            raise ValueError(f"trajectory {i} (question {t.question_id!r}) has no steps to score")
        labels = task.oracle_labels(t, questions[t.question_id])
        labelled.append(dataclasses.replace(t, labels=labels, label_source="oracle", meta=dict(t.meta)))
    return labelled


def _named_sources(sources: Any) -> dict[str, Source]:
    """``{name: source}``: a mapping as it is; a list of paths by path; one path or a list of rows alone."""
    if isinstance(sources, Mapping):
        return dict(sources)
    if isinstance(sources, (str, os.PathLike)):
        return {os.fspath(sources): sources}
    if sources and all(isinstance(s, (str, os.PathLike)) for s in sources):
        return {os.fspath(s): s for s in sources}
    return {"rows": sources}


def _source_name(source: Source, default: str) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else default


def _load_source(source: Source, name: str) -> list[Trajectory]:
    if isinstance(source, (str, os.PathLike)):
        return read_processbench(source)
    return processbench_trajectories(source, name)
