"""A trajectory's reward: the verifier's step scores ĉ_0 … ĉ_m of one solution turned into one number.

The pairs of the loop rank a question's samples by the mean (:mod:`sapo.data.pairs`); best-of-N compares
every aggregation (:mod:`sapo.eval.best_of_n`). Both call :func:`trajectory_reward`, so one rule holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["AGGREGATIONS", "trajectory_reward"]

#: the names :func:`trajectory_reward` accepts
AGGREGATIONS = ("mean", "min", "last", "product")


def trajectory_reward(scores: Sequence[float], aggregation: str = "mean") -> float:
    """The reward ``r(τ)`` of a trajectory from its step scores ``ĉ_0 … ĉ_m``:

    - ``mean``:    ``r(τ) = (1 / (m + 1)) · Σ_{j=0..m} ĉ_j`` (SAPO's reward for preference pairs);
    - ``min``:     ``r(τ) = min_j ĉ_j`` (a solution is as good as its weakest step: Math-Shepherd's rule);
    - ``last``:    ``r(τ) = ĉ_m`` (the score of the whole solution, as an outcome reward model gives it);
    - ``product``: ``r(τ) = Π_j ĉ_j`` (the chance that every step is right, were the scores independent).

    The mean's sum is exact (:func:`math.fsum`), so the order of the steps never changes the reward. A
    trajectory without steps has no reward: callers decide what it counts as.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; known: {list(AGGREGATIONS)}")
    if len(scores) == 0:
        raise ValueError("a trajectory without steps has no reward (no step scores to aggregate)")
    if aggregation == "mean":
        return math.fsum(scores) / len(scores)
    if aggregation == "min":
        return min(scores)
    if aggregation == "last":
        return scores[-1]
    return math.prod(scores)
