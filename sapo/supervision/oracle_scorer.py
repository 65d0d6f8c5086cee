"""A step scorer built from a task's step oracle, with seeded noise: a verifier before one is trained."""

from __future__ import annotations

import random
from collections.abc import Sequence

from sapo.data.tasks.base import Question, Task
from sapo.data.trajectory import Trajectory
from sapo.supervision.base import SupervisionInputError

__all__ = ["OracleScorer", "noisy_score"]


def noisy_score(label: float, noise: float, rng: random.Random) -> float:
    """The noise model: ``clip(label + ε, 0, 1)`` with ``ε ~ Normal(0, noise²)``, independent per step."""
    if noise == 0:
        return float(label)
    return min(1.0, max(0.0, label + rng.gauss(0.0, noise)))


class OracleScorer:
    """Scores every step with the task's true step-prefix correctness (1.0 before the oracle's first error,
    0.0 from it on), blurred by :func:`noisy_score`.

    ``noise = 0`` is a perfect verifier; as ``noise`` grows the largest score drop wanders away from the true
    first error (about 0.3 already misplaces it often on long trajectories), which is how the benchmark sweeps
    verifier quality. The noise of a trajectory is drawn from a stream seeded by ``seed``, its question id and
    its text, so the same trajectory always gets the same scores, whatever else is in the batch, as a
    deterministic verifier would. Satisfies :class:`~sapo.supervision.protocols.StepScorer`.

    Args:
        task: a task with a step oracle (``task.has_oracle``).
        questions: the questions the trajectories answer; None: the task's own (``task.load()``).
        noise: the standard deviation of the Gaussian noise added to each 0/1 label, before clipping.
        seed: seeds the noise.
    """

    def __init__(
        self, task: Task, questions: Sequence[Question] | None = None, noise: float = 0.0, seed: int = 0
    ) -> None:
        if not task.has_oracle:
            raise ValueError(f"task {task.name!r} has no step oracle to score with")
        if noise < 0:
            raise ValueError(f"noise must be at least 0, got {noise}")
        self.task = task
        self.questions = {q.id: q for q in (task.load() if questions is None else questions)}
        self.noise = noise
        self.seed = seed

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        return [self.score_one(t, i) for i, t in enumerate(trajectories)]

    def score_one(self, trajectory: Trajectory, index: int = 0) -> list[float]:
        question = self.questions.get(trajectory.question_id)
        if question is None:
            raise SupervisionInputError(
                f"trajectory {trajectory.question_id!r} (index {index}) answers a question the oracle scorer "
                f"was not given ({len(self.questions)} questions)"
            )
        labels = self.task.oracle_labels(trajectory, question)
        rng = random.Random(f"sapo-oracle-scorer/{self.seed}/{trajectory.question_id}/{trajectory.text()}")
        return [noisy_score(v, self.noise, rng) for v in labels]
