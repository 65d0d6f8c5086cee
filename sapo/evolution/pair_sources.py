"""A round's training rows from its samples, by ``pairs.source``: ranked pairs, outcome pairs or RFT's rows.

The ``gold`` source (SFT continued) needs no samples and stays with the loop; every other source is here, so
that the rule of which sample trains, and how, has one home.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from sapo.data.pairs import (
    PromptSource,
    build_pairs,
    outcome_pairs,
    reaches_reward,
    rft_pairs,
    unpaired_correct,
)
from sapo.data.preference import PreferencePair
from sapo.data.reward import trajectory_reward
from sapo.data.tasks.base import Task
from sapo.data.trajectory import Trajectory
from sapo.evolution.settings import FLAG, PairSettings

__all__ = ["check_pair_source", "round_pairs"]


def check_pair_source(settings: PairSettings, task: Task) -> None:
    """Raise ``ValueError`` naming ``pairs.source`` when it asks for a step oracle the task does not have."""
    if settings.source == "oracle" and not task.has_oracle:
        raise ValueError(
            f"{FLAG}.pairs.source: 'oracle' ranks pairs by the task's exact step oracle, and task "
            f"{task.name!r} has none; use 'verifier'"
        )


def round_pairs(
    settings: PairSettings,
    candidates: Sequence[Trajectory],
    step_scores: Callable[[], list[list[float]]],
    prompt: PromptSource,
    dedup_key: Callable[[Trajectory], Hashable],
    threshold: float = 0.5,
) -> list[PreferencePair]:
    """P_t from the round's ``candidates`` (trajectories with steps and an outcome) for ``settings.source``:

    - ``rft``: one SFT row per distinct right sample (:func:`~sapo.data.pairs.rft_pairs`);
    - ``outcome``: a right answer over a wrong one (:func:`~sapo.data.pairs.outcome_pairs`), no scores;
    - ``verifier`` or ``oracle``: :func:`~sapo.data.pairs.build_pairs` on ``step_scores()``, one list of
      step scores per candidate (the verifier's, or the task's exact oracle's), called only here; with
      ``rejected_from_first_error``, each rejected side carries its first step scored under ``threshold``
      (the run's ``verifier.threshold``, τ).

    With ``add_unpaired_correct`` (``outcome``, ``verifier``, ``oracle``), the distinct right samples no pair
    chose join as SFT rows, less those whose reward is under ``min_chosen_reward``: a sample the scores
    call flawed trains on neither side of the NLL.
    """
    if settings.source == "rft":
        return rft_pairs(candidates, prompt=prompt, dedup_key=dedup_key)
    rows = list(candidates)
    if settings.source == "outcome":
        pairs = outcome_pairs(candidates, None, settings.max_per_question, prompt, dedup_key)
    else:
        scores = step_scores()
        pairs = build_pairs(
            candidates,
            scores,
            margin=settings.margin,
            max_pairs_per_question=settings.max_per_question,
            require_correct_chosen=settings.require_correct_chosen,
            prompt=prompt,
            dedup_key=dedup_key,
            min_chosen_reward=settings.min_chosen_reward,
            first_error_below=threshold if settings.rejected_from_first_error else None,
        )
        rows = [
            t
            for t, s in zip(candidates, scores, strict=True)
            if reaches_reward(trajectory_reward(s), settings.min_chosen_reward)
        ]
    if settings.add_unpaired_correct:
        pairs += unpaired_correct(rows, pairs, prompt=prompt, dedup_key=dedup_key)
    return pairs
