"""Binary search supervision (OmegaPRM's Ω): bisect a wrong-answer trajectory for its first error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sapo.data.trajectory import Cost, Trajectory, prefix_labels
from sapo.supervision.base import Estimate, LabelResult, SupervisionStrategy, hard_rule, rollout_estimate
from sapo.supervision.protocols import Prefix, RolloutSampler, StepScorer

__all__ = ["BinarySearchSupervision", "Bisection", "bisect_first_errors"]


@dataclass
class Bisection:
    """The search for one trajectory's first error, as prefix lengths.

    ``good`` is the longest prefix known to be correct (0: the bare question, taken as correct without
    sampling); ``bad`` the shortest known to be wrong (at first the whole wrong-answer trajectory, known
    from its outcome without sampling). The first error is step ``bad - 1`` once ``bad - good == 1``.
    """

    trajectory: Trajectory
    good: int = 0
    bad: int = -1
    probes: list[Estimate] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.bad < 0:
            self.bad = self.trajectory.num_steps

    @property
    def done(self) -> bool:
        return self.bad - self.good <= 1

    @property
    def midpoint(self) -> int:
        return (self.good + self.bad) // 2

    @property
    def first_error(self) -> int:
        return self.bad - 1

    @property
    def cost(self) -> Cost:
        return sum((e.cost for e in self.probes), Cost())

    def update(self, estimate: Estimate) -> None:
        """An estimate above 0 puts the error after the midpoint; 0 puts it at or before."""
        self.probes.append(estimate)
        if estimate.value > 0:
            self.good = estimate.prefix.num_steps
        else:
            self.bad = estimate.prefix.num_steps


def bisect_first_errors(
    sampler: RolloutSampler, trajectories: Sequence[Trajectory], k: int, early_stop: bool = False
) -> list[Bisection]:
    """Bisect every wrong-answer trajectory for its first error, one sampler call per round for all of them.

    Each bisection node costs ONE hard estimate of k completions (OpenR spends two). A trajectory of n steps
    costs floor(log2 n) or ceil(log2 n) estimates; a one-step trajectory costs none (its only step is wrong).
    """
    searches = [Bisection(t) for t in trajectories]
    while active := [s for s in searches if not s.done]:
        prefixes = [Prefix(s.trajectory, s.midpoint) for s in active]
        for search, estimate in zip(
            active, rollout_estimate(sampler, prefixes, k, hard_rule, early_stop), strict=True
        ):
            search.update(estimate)
    return searches


class BinarySearchSupervision(SupervisionStrategy):
    """Steps before the first error found by bisection get 1, the rest 0; correct answers are all 1, free.

    Args:
        k: completions per estimate (OmegaPRM: 8).
        early_stop: stop each estimate at its first correct completion. Beyond the paper: it changes cost,
            never labels. Off by default.
    """

    name = "binary_search"

    def __init__(self, k: int = 8, early_stop: bool = False) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k
        self.early_stop = early_stop

    def assign_labels(
        self, trajectories: list[Trajectory], sampler: RolloutSampler, scorer: StepScorer
    ) -> LabelResult:
        wrong = [t for t in trajectories if not t.outcome]
        searches = iter(bisect_first_errors(sampler, wrong, self.k, self.early_stop))
        labelled = []
        for t in trajectories:
            if t.outcome:
                labelled.append(self.all_correct(t))
                continue
            search = next(searches)
            probes = [[e.prefix.num_steps, e.value] for e in search.probes]
            labels = prefix_labels(t.num_steps, search.first_error)
            labelled.append(self.labelled(t, labels, search.cost, binary_search={"probes": probes}))
        return LabelResult(labelled=labelled)
