"""Outcome supervision (an outcome reward model's labels; SAPO's "w/o PF" ablation)."""

from __future__ import annotations

from sapo.data.trajectory import Trajectory
from sapo.supervision.base import LabelResult, SupervisionStrategy
from sapo.supervision.protocols import RolloutSampler, StepScorer

__all__ = ["OutcomeSupervision"]


def outcome_labels(trajectory: Trajectory) -> list[float]:
    """Every step gets the trajectory's outcome: 1.0 if its final answer is right, else 0.0."""
    return [float(bool(trajectory.outcome))] * trajectory.num_steps


class OutcomeSupervision(SupervisionStrategy):
    """Every step gets the trajectory's outcome. Costs nothing: no rollouts, no verifier."""

    name = "outcome"

    def assign_labels(
        self, trajectories: list[Trajectory], sampler: RolloutSampler, scorer: StepScorer
    ) -> LabelResult:
        return LabelResult(labelled=[self.labelled(t, outcome_labels(t)) for t in trajectories])
