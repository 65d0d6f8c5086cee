"""Supervision strategies: turn sampled trajectories into step labels, spending rollouts.

Every strategy is a :class:`SupervisionStrategy`: ``strategy.label(trajectories, sampler, scorer)`` returns a
:class:`LabelResult` (labelled trajectories, expansions, dropped ones, cost, yield). See ``docs/strategies.md``.
"""

from sapo.supervision.base import (
    LABEL_RULES,
    Estimate,
    LabelResult,
    LabelRule,
    SupervisionInputError,
    SupervisionStrategy,
    hard_rule,
    label_rule,
    rollout_estimate,
    score_steps,
    soft_rule,
)
from sapo.supervision.binary_search import BinarySearchSupervision, Bisection, bisect_first_errors
from sapo.supervision.first_error import (
    VERDICTS,
    Detection,
    FirstErrorSupervision,
    expansion_labels,
    largest_drop,
    verdict,
)
from sapo.supervision.monte_carlo import MonteCarloSupervision
from sapo.supervision.oracle_scorer import OracleScorer, noisy_score
from sapo.supervision.outcome import OutcomeSupervision, outcome_labels
from sapo.supervision.protocols import Prefix, Rollout, RolloutSampler, StepScorer
from sapo.supervision.random_step import RandomStepSupervision, random_step
from sapo.supervision.self_correction import (
    Correction,
    correction_pairs,
    scored_first_error,
    self_correct,
)

__all__ = [
    "LABEL_RULES",
    "VERDICTS",
    "BinarySearchSupervision",
    "Bisection",
    "Correction",
    "Detection",
    "Estimate",
    "FirstErrorSupervision",
    "LabelResult",
    "LabelRule",
    "MonteCarloSupervision",
    "OracleScorer",
    "OutcomeSupervision",
    "Prefix",
    "RandomStepSupervision",
    "Rollout",
    "RolloutSampler",
    "StepScorer",
    "SupervisionInputError",
    "SupervisionStrategy",
    "bisect_first_errors",
    "correction_pairs",
    "expansion_labels",
    "hard_rule",
    "label_rule",
    "largest_drop",
    "noisy_score",
    "outcome_labels",
    "random_step",
    "rollout_estimate",
    "score_steps",
    "scored_first_error",
    "self_correct",
    "soft_rule",
    "verdict",
]
