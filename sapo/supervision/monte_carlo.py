"""Monte Carlo supervision (Math-Shepherd): a rollout estimate at every step prefix."""

from __future__ import annotations

from sapo.data.trajectory import Cost, Trajectory
from sapo.supervision.base import (
    LabelResult,
    RuleName,
    SupervisionStrategy,
    check_choice,
    label_rule,
    rollout_estimate,
)
from sapo.supervision.protocols import Prefix, RolloutSampler, StepScorer

__all__ = ["MonteCarloSupervision"]


class MonteCarloSupervision(SupervisionStrategy):
    """Label step j with the rollout estimate of the prefix that ends with it (s_0..s_j).

    A trajectory of n steps costs n - 1 estimates: the prefix that ends with the last step is the whole
    trajectory, whose final answer has been checked already, so the last step gets the outcome (1.0 or
    0.0). All prefixes of all trajectories of a call go to the sampler in one call.

    Args:
        k: completions per estimate (Math-Shepherd and SAPO: 8).
        rule: ``"hard"`` (1 iff at least one completion reaches the gold answer) or ``"soft"`` (the share
            that do).
        early_stop: stop each estimate at its first correct completion (hard rule only). Beyond the
            paper: it changes cost, never labels. Off by default so the baseline's cost stays faithful.
        estimate_correct_answers: also estimate the prefixes of correct-answer trajectories. Default
            False: under the hard rule the trajectory itself is a completion that reaches the gold answer
            from each of its prefixes, so each prefix is correct by the rule's own definition and sampling
            can only contradict that; skipping them is also what every other strategy does, so the cost
            comparison is on the same work. True is Math-Shepherd as published (every step of every
            solution is estimated): use it to report MC's full cost, or for soft values below 1 on
            correct-answer trajectories.
        estimate_final_step: also estimate the whole trajectory (n estimates instead of n - 1) rather than
            labelling its last step by the outcome. Default False: continuing a finished solution re-asks
            a checked question, and under the hard rule a lucky continuation would label a wrong final
            answer correct.
    """

    name = "monte_carlo"

    def __init__(
        self,
        k: int = 8,
        rule: RuleName = "hard",
        early_stop: bool = False,
        estimate_correct_answers: bool = False,
        estimate_final_step: bool = False,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        check_choice(rule, ("hard", "soft"), "rule")
        if early_stop and rule != "hard":
            raise ValueError(
                "early_stop needs rule='hard': stopping at the first correct completion changes soft values"
            )
        self.k = k
        self.rule = rule
        self.early_stop = early_stop
        self.estimate_correct_answers = estimate_correct_answers
        self.estimate_final_step = estimate_final_step

    def estimated_prefixes(self, trajectory: Trajectory) -> list[Prefix]:
        """The prefixes whose estimates label ``trajectory`` (none for a correct answer by default)."""
        if trajectory.outcome and not self.estimate_correct_answers:
            return []
        last = trajectory.num_steps if self.estimate_final_step else trajectory.num_steps - 1
        return [Prefix(trajectory, m) for m in range(1, last + 1)]

    def assign_labels(
        self, trajectories: list[Trajectory], sampler: RolloutSampler, scorer: StepScorer
    ) -> LabelResult:
        prefixes = [self.estimated_prefixes(t) for t in trajectories]
        flat = [p for ps in prefixes for p in ps]
        estimates = iter(rollout_estimate(sampler, flat, self.k, label_rule(self.rule), self.early_stop))
        labelled = []
        for t, ps in zip(trajectories, prefixes, strict=True):
            mine = [next(estimates) for _ in ps]
            values = [e.value for e in mine]
            labels = values + [float(bool(t.outcome))] * (t.num_steps - len(values))
            labelled.append(self.labelled(t, labels, sum((e.cost for e in mine), Cost())))
        return LabelResult(labelled=labelled, stats={"estimated_prefixes": len(flat)})
