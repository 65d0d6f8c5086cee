"""Best-of-N: how much a verifier gains by choosing among N sampled solutions of each question.

For each question the reasoner sampled solutions τ_1, τ_2, …; each has a final answer, an outcome and one
verifier score per step ĉ_0 … ĉ_m. A solution's score is an **aggregate** of its step scores
(:data:`AGGREGATES`; each is :func:`~sapo.data.reward.trajectory_reward`, the rule the preference pairs use):

    min: min_j ĉ_j        mean: (1/(m+1)) Σ_j ĉ_j        last: ĉ_m        product: ∏_j ĉ_j

A solution without steps scores 0 (there is nothing the verifier could approve). Over the first ``N``
samples of a question (:func:`best_of_n_table` takes the first ``N`` of the same list for every ``N``, so
the rows of the table differ only by ``N``), the methods pick an answer:

- **best-of-N** (reranking): the sample with the highest aggregate, ``argmax_i r(τ_i)``; right iff its outcome is.
- **weighted vote**: the answer ``a`` with the largest ``Σ_{i : answer(τ_i) = a} r(τ_i)``.
- **majority vote**: the answer given by the most samples, ``argmax_a #{i : answer(τ_i) = a}``.
- **pass@N**: whether any of the N samples is right (the ceiling every method is below).

Votes count only samples with an answer (``final_answer`` not ``None``); a question where no sample has one
counts as wrong. An answer's outcome is that of the first sample giving it (samples with equal answers are
equally right). **Ties** go to the earliest: the earliest sample among equal best scores, and among answers
with equal votes the one whose first sample comes first. Sampling order is random, so this is an unbiased
choice, and it makes results reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sapo.data.reward import trajectory_reward
from sapo.data.trajectory import Trajectory

__all__ = [
    "AGGREGATES",
    "BestOfNTable",
    "aggregate_last",
    "aggregate_mean",
    "aggregate_min",
    "aggregate_product",
    "best_of_n_table",
    "majority_vote",
    "pick_best",
    "weighted_vote",
]


def aggregate_min(scores: Sequence[float]) -> float:
    """``min_j ĉ_j``: a solution is as good as its weakest step (Math-Shepherd's rule)."""
    return trajectory_reward(scores, "min")


def aggregate_mean(scores: Sequence[float]) -> float:
    """``(1/(m+1)) Σ_j ĉ_j`` (the reward SAPO uses to build preference pairs)."""
    return trajectory_reward(scores, "mean")


def aggregate_last(scores: Sequence[float]) -> float:
    """``ĉ_m``: the score of the whole solution, as an outcome reward model would give it."""
    return trajectory_reward(scores, "last")


def aggregate_product(scores: Sequence[float]) -> float:
    """``∏_j ĉ_j``: the chance that every step is right, were the step scores independent."""
    return trajectory_reward(scores, "product")


#: the aggregates by name
AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "min": aggregate_min,
    "mean": aggregate_mean,
    "last": aggregate_last,
    "product": aggregate_product,
}


def pick_best(rewards: Sequence[float]) -> int:
    """``argmax_i r_i``, the earliest index among equal maxima."""
    if not rewards:
        raise ValueError("no samples to choose from")
    return max(range(len(rewards)), key=lambda i: (rewards[i], -i))


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """``argmax_a Σ_{i : answers_i = a} w_i`` over the answers that are not ``None`` (``None`` when there
    are none); among equal sums, the answer that appears first."""
    totals: dict[str, float] = {}
    for answer, weight in zip(answers, weights, strict=True):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + weight
    if not totals:
        return None
    # dicts keep first-appearance order: the earlier answer wins a tie
    return max(enumerate(totals), key=lambda item: (totals[item[1]], -item[0]))[1]


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The answer given most often (a weighted vote with every weight 1)."""
    return weighted_vote(answers, [1.0] * len(answers))


@dataclass
class BestOfNTable:
    """Accuracies of each method for each ``N``: ``metrics[N]["best_of_n/min"]`` and so on.

    Keys per ``N``: ``pass@N``, ``majority_vote``, ``best_of_n/{aggregate}``, ``weighted_vote/{aggregate}``.
    """

    ns: tuple[int, ...]
    aggregates: tuple[str, ...]
    num_questions: int
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "ns": list(self.ns),
            "aggregates": list(self.aggregates),
            "num_questions": self.num_questions,
            "metrics": {str(n): dict(values) for n, values in self.metrics.items()},
        }

    def to_markdown(self) -> str:
        """One row per method, one column per ``N`` (accuracies in %)."""
        names = list(self.metrics[self.ns[0]])
        lines = ["| method | " + " | ".join(f"N={n}" for n in self.ns) + " |"]
        lines.append("|---|" + "---|" * len(self.ns))
        for name in names:
            row = " | ".join(f"{100 * self.metrics[n][name]:.2f}" for n in self.ns)
            lines.append(f"| {name} | {row} |")
        return "\n".join(lines) + "\n"


def best_of_n_table(
    samples: Sequence[Sequence[Trajectory]],
    scores: Sequence[Sequence[Sequence[float]]],
    ns: Sequence[int] = (1, 4, 16),
    aggregates: Sequence[str] = ("min", "mean", "last", "product"),
) -> BestOfNTable:
    """Best-of-N, weighted and plain majority vote and pass@N, for every ``N`` in ``ns``.

    Args:
        samples: per question, its sampled solutions in sampling order, checked (``outcome`` set). Every
            question needs at least ``max(ns)`` of them; the first ``N`` are used for each ``N``.
        scores: per question, per sample, the verifier's score of every step (as many as the sample's steps).
        ns: the numbers of samples to choose among.
        aggregates: names from :data:`AGGREGATES`.

    Every metric is the share of questions whose chosen answer (or sample) is right.
    """
    _check_inputs(samples, scores, ns, aggregates)
    table = BestOfNTable(ns=tuple(ns), aggregates=tuple(aggregates), num_questions=len(samples))
    for n in ns:
        totals: dict[str, float] = {}
        for question_samples, question_scores in zip(samples, scores, strict=True):
            for name, right in _question_metrics(
                question_samples[:n], question_scores[:n], aggregates
            ).items():
                totals[name] = totals.get(name, 0.0) + right
        table.metrics[n] = {name: total / len(samples) for name, total in totals.items()}
    return table


def _question_metrics(
    samples: Sequence[Trajectory], scores: Sequence[Sequence[float]], aggregates: Sequence[str]
) -> dict[str, bool]:
    """Whether each method is right on one question's samples (see the module docstring)."""
    outcomes = [bool(t.outcome) for t in samples]
    answers = [t.final_answer for t in samples]
    result = {"pass@N": any(outcomes), "majority_vote": _answer_is_right(majority_vote(answers), samples)}
    for name in aggregates:
        rewards = [AGGREGATES[name](s) if s else 0.0 for s in scores]
        result[f"best_of_n/{name}"] = outcomes[pick_best(rewards)]
        result[f"weighted_vote/{name}"] = _answer_is_right(weighted_vote(answers, rewards), samples)
    return result


def _answer_is_right(answer: str | None, samples: Sequence[Trajectory]) -> bool:
    """The outcome of the first sample giving ``answer`` (``False`` for no answer)."""
    if answer is None:
        return False
    return bool(next(t.outcome for t in samples if t.final_answer == answer))


def _check_inputs(
    samples: Sequence[Sequence[Trajectory]],
    scores: Sequence[Sequence[Sequence[float]]],
    ns: Sequence[int],
    aggregates: Sequence[str],
) -> None:
    if not samples:
        raise ValueError("best-of-N needs at least one question")
    if not ns or min(ns) < 1:
        raise ValueError(f"every N must be >= 1, got {list(ns)}")
    unknown = [a for a in aggregates if a not in AGGREGATES]
    if unknown:
        raise ValueError(f"unknown aggregate(s) {unknown}; known: {sorted(AGGREGATES)}")
    if len(scores) != len(samples):
        raise ValueError(f"scores for {len(scores)} questions, samples for {len(samples)}")
    for question_samples, question_scores in zip(samples, scores, strict=True):
        name = question_samples[0].question_id if question_samples else "?"
        if len(question_samples) < max(ns):
            raise ValueError(f"question {name!r} has {len(question_samples)} samples, fewer than N={max(ns)}")
        if len(question_scores) != len(question_samples):
            raise ValueError(
                f"question {name!r}: {len(question_scores)} score lists for {len(question_samples)} samples"
            )
        for i, (sample, sample_scores) in enumerate(zip(question_samples, question_scores, strict=True)):
            if sample.outcome is None:
                raise ValueError(f"question {name!r}, sample {i}: not checked (outcome is None)")
            if len(sample_scores) != sample.num_steps:
                raise ValueError(
                    f"question {name!r}, sample {i}: {len(sample_scores)} scores for {sample.num_steps} steps"
                )
