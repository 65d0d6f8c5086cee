"""Random-step supervision: first-error supervision with a random detection (SAPO's "w/o DV" ablation)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from sapo.data.trajectory import Trajectory
from sapo.supervision.first_error import Detection, FirstErrorSupervision, InconsistentPolicy
from sapo.supervision.protocols import StepScorer

__all__ = ["RandomStepSupervision", "random_step"]


def random_step(trajectory: Trajectory, seed: int) -> int:
    """A step drawn uniformly from ``trajectory``'s steps, from a stream seeded by ``seed`` and the trajectory
    itself: the same trajectory and seed always give the same step, whatever else is in the batch."""
    rng = random.Random(f"sapo-random-step/{seed}/{trajectory.question_id}/{trajectory.text()}")
    return rng.randrange(trajectory.num_steps)


class RandomStepSupervision(FirstErrorSupervision):
    """:class:`FirstErrorSupervision` whose detection picks a uniformly random step instead of asking the
    verifier; verification, correction and expansion are unchanged. Needs no scorer and costs no verifier
    pass. The pattern for every new baseline: subclass and override one method.

    Args:
        k, on_inconsistent, max_corrections, expand, early_stop: as :class:`FirstErrorSupervision`.
        seed: seeds the random step (with each trajectory's question id and text).
    """

    name = "random_step"

    def __init__(
        self,
        k: int = 8,
        on_inconsistent: InconsistentPolicy = "drop",
        max_corrections: int = 1,
        expand: bool = True,
        early_stop: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(k, on_inconsistent, max_corrections, expand, early_stop)
        self.seed = seed

    def detect(self, trajectories: Sequence[Trajectory], scorer: StepScorer) -> list[Detection]:
        """A uniformly random step of each trajectory (seeded), instead of the verifier's largest drop."""
        return [Detection(random_step(t, self.seed)) for t in trajectories]
