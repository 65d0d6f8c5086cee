"""How close a strategy's step labels come to a task's step oracle.

A supervision strategy labels steps from rollout estimates; on a task with a step oracle (the synthetic
arithmetic task exactly, GSM8K approximately) the true labels are known, so the labels themselves can be
scored before a verifier learns from them. A label's first error is its first step labelled below 0.5
(:func:`~sapo.data.trajectory.first_error_of`), or none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sapo.data.tasks.base import Question, Task
from sapo.data.trajectory import NO_ERROR, Trajectory, first_error_of

__all__ = ["LabelAgreement", "label_agreement"]


@dataclass
class LabelAgreement:
    """Labels against the oracle's, on one set of labelled trajectories.

    Attributes:
        trajectories: how many were compared.
        first_error_accuracy: the share whose first error is the oracle's (both "none" counts).
        earlier: how many put the first error before the oracle's, "none" counting as after the last step:
            a right step labelled wrong. A rollout estimate of 0 at a right prefix (every completion from
            it failed: a weak completer on a hard question) gives exactly this.
        later: how many put it after the oracle's: a wrong step labelled right.
        step_accuracy: the share of steps whose label, read at 0.5, is the oracle's.
    """

    trajectories: int
    first_error_accuracy: float
    earlier: int
    later: int
    step_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def label_agreement(
    task: Task, trajectories: Sequence[Trajectory], questions: Mapping[str, Question]
) -> LabelAgreement | None:
    """Each trajectory's ``labels`` against ``task.oracle_labels`` (None when there is nothing to compare).

    Args:
        task: a task with a step oracle (``task.has_oracle``).
        trajectories: labelled trajectories (every one needs ``labels``).
        questions: the questions they answer, by id.
    """
    if not task.has_oracle:
        raise ValueError(f"task {task.name!r} has no step oracle")
    if not trajectories:
        return None
    agree = earlier = later = steps = steps_agree = 0
    for i, trajectory in enumerate(trajectories):
        if trajectory.labels is None:
            raise ValueError(f"trajectory {i} (question {trajectory.question_id!r}) has no labels")
        oracle = task.oracle_labels(trajectory, questions[trajectory.question_id])
        steps += len(oracle)
        steps_agree += sum((a >= 0.5) == (b >= 0.5) for a, b in zip(trajectory.labels, oracle, strict=True))
        labelled, true = first_error_of(trajectory.labels), first_error_of(oracle)
        if labelled == true:
            agree += 1
        elif true == NO_ERROR or (labelled != NO_ERROR and labelled < true):
            earlier += 1
        else:
            later += 1
    return LabelAgreement(
        trajectories=len(trajectories),
        first_error_accuracy=agree / len(trajectories),
        earlier=earlier,
        later=later,
        step_accuracy=steps_agree / steps if steps else 1.0,
    )
