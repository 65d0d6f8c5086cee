"""What a supervision strategy needs from the outside world: rollouts from step prefixes, and step scores.

Strategies never import a model: they receive an object that samples rollouts (the reasoner through a
Sampler and the task's checker, or a script in tests) and, where needed, one that scores steps (the
verifier, an oracle with noise, or a script).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from sapo.data.trajectory import Trajectory

__all__ = ["Prefix", "Rollout", "RolloutSampler", "StepScorer"]


@dataclass(frozen=True)
class Prefix:
    """The first ``num_steps`` steps of a trajectory (0: the bare question), from which rollouts continue."""

    trajectory: Trajectory
    num_steps: int

    def __post_init__(self) -> None:
        if not 0 <= self.num_steps <= self.trajectory.num_steps:
            raise ValueError(
                f"prefix of {self.num_steps} steps for trajectory {self.trajectory.question_id!r} "
                f"with {self.trajectory.num_steps} steps"
            )

    @property
    def steps(self) -> list[str]:
        return self.trajectory.steps[: self.num_steps]


@dataclass
class Rollout:
    """One sampled continuation of a prefix, checked against the gold answer.

    Attributes:
        steps: the continuation's own steps (after the prefix).
        final_answer: the answer it reached, or ``None``.
        outcome: whether that answer is right.
        num_tokens: tokens generated for it (its cost).
    """

    steps: list[str]
    final_answer: str | None
    outcome: bool
    num_tokens: int
    meta: dict = field(default_factory=dict)


@runtime_checkable
class RolloutSampler(Protocol):
    """Samples ``k`` checked continuations from each prefix, batched across prefixes."""

    def rollouts(self, prefixes: Sequence[Prefix], k: int, early_stop: bool = False) -> list[list[Rollout]]:
        """One list per prefix, in order. With ``early_stop`` a prefix's list may end at its first correct
        rollout (fewer than ``k``); without it every list has exactly ``k`` rollouts."""
        ...


@runtime_checkable
class StepScorer(Protocol):
    """Scores every step of each trajectory, in [0, 1] (the verifier's ĉ_j)."""

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        """One list per trajectory with exactly one score per step."""
        ...
