"""Self-correction (SPHERE's second stage): rewrite a wrong solution from its first erroneous step.

For each wrong-answer trajectory τ with steps s_1..s_n:

1. locate its first error e: the first step labelled wrong where τ carries a strategy's labels, else from
   the verifier's scores ĉ (:func:`scored_first_error`: the first step below τ, else the largest drop);
2. keep the steps before it, s_1..s_{e-1}, and sample up to ``attempts`` continuations from there, stopping at
   the first that reaches the gold answer (the rollouts' early stop);
3. the corrected solution is ``s_1..s_{e-1}`` + that continuation; paired with τ it is a preference pair whose
   two sides share the correct prefix and differ from the first error on (:func:`correction_pairs`).

Like the strategies, it sees only the :class:`~sapo.supervision.protocols.RolloutSampler` and
:class:`~sapo.supervision.protocols.StepScorer` protocols, never a model, and it charges what it spends
(completions, tokens, verifier passes, seconds) to each correction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from sapo.data.pairs import PromptSource, prompt_of
from sapo.data.preference import PreferencePair
from sapo.data.steps import normalised_steps
from sapo.data.trajectory import NO_ERROR, Cost, Trajectory, first_error_of
from sapo.supervision.base import SupervisionInputError, score_steps, share_seconds
from sapo.supervision.first_error import largest_drop
from sapo.supervision.protocols import Prefix, RolloutSampler, StepScorer

__all__ = ["Correction", "correction_pairs", "scored_first_error", "self_correct"]


def scored_first_error(scores: Sequence[float], threshold: float = 0.5) -> int:
    """The verifier's first error: the first step with ``ĉ_j < threshold``; when none is below it (the
    verifier missed the error of a wrong answer), SAPO's detector ``argmax_j (ĉ_{j-1} - ĉ_j)``
    (:func:`~sapo.supervision.first_error.largest_drop`)."""
    below = first_error_of(scores, threshold)
    return below if below != NO_ERROR else largest_drop(scores)


@dataclass
class Correction:
    """One wrong solution and what rewriting it from its first error gave.

    Attributes:
        original: the wrong-answer trajectory.
        first_error: the step regenerated from (0: the whole solution was rewritten).
        located_by: ``"labels"`` (a strategy's) or ``"verifier"``.
        corrected: the steps before the first error and the first continuation that reached the gold
            answer, checked; ``None`` when no attempt did.
        attempts: continuations sampled (at most ``attempts`` of :func:`self_correct`).
        cost: what locating and rewriting this one cost.
    """

    original: Trajectory
    first_error: int
    located_by: str
    corrected: Trajectory | None
    attempts: int
    cost: Cost

    def to_dict(self) -> dict:
        return {
            "original": self.original.to_dict(),
            "first_error": self.first_error,
            "located_by": self.located_by,
            "corrected": None if self.corrected is None else self.corrected.to_dict(),
            "attempts": self.attempts,
            "cost": self.cost.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Correction:
        corrected = data.get("corrected")
        return cls(
            original=Trajectory.from_dict(data["original"]),
            first_error=int(data["first_error"]),
            located_by=str(data["located_by"]),
            corrected=None if corrected is None else Trajectory.from_dict(corrected),
            attempts=int(data["attempts"]),
            cost=Cost.from_dict(data.get("cost", {})),
        )


def self_correct(
    trajectories: Sequence[Trajectory],
    sampler: RolloutSampler,
    scorer: StepScorer | None = None,
    attempts: int = 4,
    threshold: float = 0.5,
) -> list[Correction]:
    """Rewrite every wrong-answer trajectory of ``trajectories`` from its first error.

    Trajectories with a right answer, no steps or no outcome are not corrected (nothing to fix or nothing
    known). The first error comes from the trajectory's labels where it has them (a supervision strategy's
    output), else from ``scorer`` (:func:`scored_first_error`); a wrong trajectory with neither raises
    :class:`~sapo.supervision.base.SupervisionInputError` naming it. Labels that call every step right
    (a wrong answer the strategy could not place) are treated as unlabelled.

    All rewrites are one batched ``sampler.rollouts(prefixes, attempts, early_stop=True)`` call, so each
    prefix stops at its first right continuation. Returns one :class:`Correction` per wrong trajectory, in
    input order.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    wrong = [t for t in trajectories if t.outcome is False and t.num_steps > 0]
    labelled = {i for i, t in enumerate(wrong) if t.labels is not None and t.first_error != NO_ERROR}
    unlabelled = [t for i, t in enumerate(wrong) if i not in labelled]
    if unlabelled and scorer is None:
        raise SupervisionInputError(
            f"trajectory {unlabelled[0].question_id!r} is wrong but has no labels that place its error, and "
            "no scorer was given to locate it"
        )
    scored = iter(score_steps(scorer, unlabelled) if unlabelled else [])
    located: list[tuple[int, str, Cost]] = []
    for i, t in enumerate(wrong):
        if i in labelled:
            located.append((t.first_error, "labels", Cost()))
        else:
            scores, cost = next(scored)
            located.append((scored_first_error(scores, threshold), "verifier", cost))
    start = time.perf_counter()
    prefixes = [Prefix(t, error) for t, (error, _, _) in zip(wrong, located, strict=True)]
    batches = sampler.rollouts(prefixes, attempts, early_stop=True) if prefixes else []
    seconds = share_seconds(time.perf_counter() - start, [len(b) for b in batches])
    corrections = []
    for t, (error, by, cost), rollouts, spent in zip(wrong, located, batches, seconds, strict=True):
        cost = cost + Cost(
            completions=len(rollouts), generated_tokens=sum(r.num_tokens for r in rollouts), seconds=spent
        )
        right = next((r for r in rollouts if r.outcome and r.steps), None)
        corrected = None
        if right is not None:
            corrected = Trajectory(
                question_id=t.question_id,
                question=t.question,
                steps=[*t.steps[:error], *right.steps],
                final_answer=right.final_answer,
                outcome=True,
                gold_answer=t.gold_answer,
                meta={"corrected_from": error, "located_by": by},
            )
        corrections.append(Correction(t, error, by, corrected, len(rollouts), cost))
    return corrections


def correction_pairs(
    corrections: Sequence[Correction],
    prompt: PromptSource = None,
    dedup_key: Callable[[Trajectory], Hashable] = normalised_steps,
) -> list[PreferencePair]:
    """One pair per successful correction: the corrected solution chosen, the original rejected.

    A correction equal to its original under ``dedup_key`` (the continuation rewrote the same steps and the
    task still found the answer right) teaches nothing and is left out, as are repeated (question, corrected
    solution) pairs. ``margin`` is None: the pair is ordered by the task's answer check, not by a score.
    """
    seen: set[tuple[str, Hashable, Hashable]] = set()
    pairs = []
    for c in corrections:
        if c.corrected is None:
            continue
        key = (c.original.question_id, dedup_key(c.corrected), dedup_key(c.original))
        if key[1] == key[2] or key in seen:
            continue
        seen.add(key)
        pairs.append(
            PreferencePair(
                question_id=c.original.question_id,
                prompt=prompt_of(c.original, prompt),
                chosen=list(c.corrected.steps),
                rejected=list(c.original.steps),
            )
        )
    return pairs
