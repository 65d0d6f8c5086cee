"""OracleScorer: a task's step oracle with seeded noise, and the strategies run against the oracle."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.tasks.base import Question, Task
from sapo.data.trajectory import Trajectory
from sapo.supervision import (
    BinarySearchSupervision,
    FirstErrorSupervision,
    MonteCarloSupervision,
    OracleScorer,
    Prefix,
    Rollout,
    StepScorer,
    SupervisionInputError,
    noisy_score,
)


@pytest.fixture(scope="module")
def task() -> ArithmeticTask:
    return ArithmeticTask(num_questions=12, seed=4, min_steps=3, max_steps=6)


def corrupt(task: ArithmeticTask, question: Question, step: int) -> Trajectory:
    """The gold solution with the first number of ``step`` and the final answer changed: the oracle's first
    error is ``step`` and the outcome is wrong."""
    steps = task.split_steps(question.solution)
    steps[step] = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), steps[step], count=1)
    steps[-1] = f"The answer is {int(question.answer) + 1}."
    return task.trajectory(question, task.completion_text(steps))


@pytest.fixture(scope="module")
def wrong(task) -> list[Trajectory]:
    """One wrong-answer trajectory per question, with its first error at a known step."""
    out = []
    for i, q in enumerate(task.load()):
        t = corrupt(task, q, i % (len(task.split_steps(q.solution)) - 1))
        assert t.outcome is False
        out.append(t)
    return out


class OracleSampler:
    """Rollouts from a prefix reach the gold answer iff the oracle finds no error in the prefix."""

    def __init__(self, task: Task, questions: dict[str, Question]) -> None:
        self.task = task
        self.questions = questions

    def rollouts(self, prefixes: Sequence[Prefix], k: int, early_stop: bool = False) -> list[list[Rollout]]:
        out = []
        for p in prefixes:
            labels = self.task.oracle_labels(p.trajectory, self.questions[p.trajectory.question_id])
            ok = all(labels[: p.num_steps])
            out.append([Rollout(["The answer is 1."], "1", ok, 5) for _ in range(k)])
        return out


def test_noise_free_scores_are_the_oracle_labels(task, wrong):
    scorer = OracleScorer(task)
    assert isinstance(scorer, StepScorer)
    questions = {q.id: q for q in task.load()}
    for t, scores in zip(wrong, scorer.score(wrong), strict=True):
        assert scores == task.oracle_labels(t, questions[t.question_id])
        assert 0 in scores and scores[0] in (0.0, 1.0)
    gold = task.gold_trajectory(task.load()[0])
    assert scorer.score([gold]) == [[1.0] * gold.num_steps]


def test_noise_is_seeded_clipped_and_per_trajectory(task, wrong):
    noisy = OracleScorer(task, task.load(), noise=0.3, seed=1)
    first = noisy.score(wrong)
    assert first == OracleScorer(task, noise=0.3, seed=1).score(wrong)
    assert first != OracleScorer(task, noise=0.3, seed=2).score(wrong)
    assert list(reversed(first)) == noisy.score(list(reversed(wrong)))  # not a function of the batch
    assert all(0.0 <= v <= 1.0 for scores in first for v in scores)
    assert first != OracleScorer(task).score(wrong)


def test_noisy_score_model():
    import random

    rng = random.Random(0)
    draws = [noisy_score(1.0, 0.5, rng) for _ in range(2000)]
    assert max(draws) == 1.0 and min(draws) >= 0.0
    assert 0.45 < sum(v == 1.0 for v in draws) / len(draws) < 0.55  # half the noise is clipped away
    assert noisy_score(0.0, 0.0, rng) == 0.0


def test_bad_oracle_scorer_arguments(task):
    class NoOracle(ArithmeticTask):
        @property
        def has_oracle(self) -> bool:
            return False

    with pytest.raises(ValueError, match="no step oracle"):
        OracleScorer(NoOracle(num_questions=1))
    with pytest.raises(ValueError, match="noise"):
        OracleScorer(task, noise=-0.1)
    stranger = Trajectory("elsewhere/1", "?", ["1 + 1 = 2"], outcome=False)
    with pytest.raises(SupervisionInputError, match=r"'elsewhere/1' \(index 0\)"):
        OracleScorer(task).score([stranger])


def test_strategies_recover_the_oracle_first_errors(task, wrong):
    """With a perfect verifier and a sampler that follows the oracle, every strategy labels like the oracle."""
    questions = {q.id: q for q in task.load()}
    truth = [task.oracle_labels(t, questions[t.question_id]) for t in wrong]
    sampler = OracleSampler(task, questions)
    first_error = FirstErrorSupervision(k=1).label(wrong, sampler, OracleScorer(task))
    assert [t.labels for t in first_error.labelled] == truth
    assert first_error.stats["confirmed"] == len(wrong)
    assert [t.meta["verification"]["detected"] for t in first_error.labelled] == [
        labels.index(0.0) for labels in truth
    ]
    assert [t.labels for t in BinarySearchSupervision(k=1).label(wrong, sampler).labelled] == truth
    mc = MonteCarloSupervision(k=1).label(wrong, sampler)
    assert [t.labels for t in mc.labelled] == truth
    assert mc.cost.rollout_estimates > first_error.cost.rollout_estimates
