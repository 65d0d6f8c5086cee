"""The one interface every supervision strategy implements, the rollout estimate they all share, and cost.

A strategy turns trajectories (with outcomes) into labelled trajectories. It spends rollouts through a
:class:`~sapo.supervision.protocols.RolloutSampler` and, where it needs step scores, calls a
:class:`~sapo.supervision.protocols.StepScorer`. Every rollout goes through :func:`rollout_estimate`, every
score through :func:`score_steps`, so every strategy counts its cost the same way:

- a rollout estimate costs 1 ``rollout_estimates``, its completions and their generated tokens;
- scoring a trajectory costs 1 ``verifier_passes`` (the verifier scores all steps in one forward pass);
- ``seconds`` of a batched sampler (or scorer) call are shared among the estimates (trajectories) of that
  call in proportion to their generated tokens (falling back to completions, then to equal shares when a
  scripted sampler reports no tokens).

Each labelled trajectory carries its own cost in ``trajectory.cost``; :class:`LabelResult` carries the total
of the call, whose ``seconds`` is the wall time of the whole call.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from sapo.data.trajectory import NO_ERROR, Cost, Trajectory, prefix_labels
from sapo.supervision.protocols import Prefix, Rollout, RolloutSampler, StepScorer

__all__ = [
    "LABEL_RULES",
    "Estimate",
    "LabelResult",
    "LabelRule",
    "SupervisionInputError",
    "SupervisionStrategy",
    "hard_rule",
    "label_rule",
    "rollout_estimate",
    "score_steps",
    "share_seconds",
    "soft_rule",
]


class SupervisionInputError(ValueError):
    """A strategy cannot label its input; the message names the trajectory (question id and index) and why."""


# --- label rules ---------------------------------------------------------------------------------------------

LabelRule = Callable[[Sequence[bool]], float]


def hard_rule(outcomes: Sequence[bool]) -> float:
    """1.0 iff at least one rollout reaches the gold answer, else 0.0 (Math-Shepherd, OmegaPRM, SAPO)."""
    return 1.0 if any(outcomes) else 0.0


def soft_rule(outcomes: Sequence[bool]) -> float:
    """The fraction of rollouts that reach the gold answer (Math-Shepherd's soft label)."""
    if not outcomes:
        raise ValueError("the soft rule needs at least one rollout")
    return sum(map(bool, outcomes)) / len(outcomes)


LABEL_RULES: dict[str, LabelRule] = {"hard": hard_rule, "soft": soft_rule}
RuleName = Literal["hard", "soft"]


def label_rule(rule: str | LabelRule) -> LabelRule:
    """The rule named ``"hard"`` or ``"soft"``, or ``rule`` itself when it is already a function."""
    if callable(rule):
        return rule
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {rule!r}; choose one of {sorted(LABEL_RULES)}")
    return LABEL_RULES[rule]


def check_choice(value: str, choices: Sequence[str], argument: str) -> str:
    """``value`` when it is one of ``choices``, else a ValueError naming the ``argument``."""
    if value not in choices:
        raise ValueError(f"{argument} must be one of {list(choices)}, got {value!r}")
    return value


# --- the rollout estimate --------------------------------------------------------------------------------


@dataclass
class Estimate:
    """The rollout estimate of one prefix: its completions, the value the rule gave them, and their cost."""

    prefix: Prefix
    rollouts: list[Rollout]
    value: float
    cost: Cost

    @property
    def outcomes(self) -> list[bool]:
        return [r.outcome for r in self.rollouts]


def share_seconds(seconds: float, weights: Sequence[float]) -> list[float]:
    """Split ``seconds`` in proportion to ``weights`` (equal shares when every weight is 0)."""
    total = sum(weights)
    if total <= 0:
        return [seconds / len(weights)] * len(weights) if weights else []
    return [seconds * w / total for w in weights]


def rollout_estimate(
    sampler: RolloutSampler,
    prefixes: Sequence[Prefix],
    k: int,
    rule: str | LabelRule = "hard",
    early_stop: bool = False,
) -> list[Estimate]:
    """Estimate every prefix from ``k`` rollouts, in ONE sampler call (the sampler batches across prefixes).

    Args:
        sampler: samples and checks the continuations.
        prefixes: the prefixes to estimate, of any number of trajectories.
        k: completions per prefix.
        rule: ``"hard"``, ``"soft"`` or a function from the rollouts' outcomes to a value in [0, 1].
        early_stop: let the sampler stop a prefix at its first correct completion. Only the hard rule's
            value is unchanged by that, so any other rule refuses it.

    Returns:
        One :class:`Estimate` per prefix, in order. No prefixes: no sampler call.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rule = label_rule(rule)
    if early_stop and rule is not hard_rule:
        raise ValueError("early_stop is only sound with the hard rule: it changes every other rule's value")
    if not prefixes:
        return []
    start = time.perf_counter()
    batches = sampler.rollouts(list(prefixes), k, early_stop=early_stop)
    seconds = time.perf_counter() - start
    if len(batches) != len(prefixes):
        raise SupervisionInputError(
            f"the sampler returned {len(batches)} rollout lists for {len(prefixes)} prefixes"
        )
    tokens = [sum(r.num_tokens for r in rollouts) for rollouts in batches]
    weights = tokens if sum(tokens) > 0 else [len(rollouts) for rollouts in batches]
    return [
        Estimate(
            prefix=prefix,
            rollouts=list(rollouts),
            value=rule([r.outcome for r in rollouts]),
            cost=Cost(rollout_estimates=1, completions=len(rollouts), generated_tokens=n, seconds=share),
        )
        for prefix, rollouts, n, share in zip(
            prefixes, batches, tokens, share_seconds(seconds, weights), strict=True
        )
    ]


def score_steps(scorer: StepScorer, trajectories: Sequence[Trajectory]) -> list[tuple[list[float], Cost]]:
    """Score every step of each trajectory in ONE scorer call; each trajectory costs one verifier pass.

    Returns ``(scores, cost)`` per trajectory, in order. No trajectories: no scorer call.
    """
    if not trajectories:
        return []
    start = time.perf_counter()
    scores = scorer.score(list(trajectories))
    seconds = time.perf_counter() - start
    if len(scores) != len(trajectories):
        raise SupervisionInputError(
            f"the scorer returned {len(scores)} score lists for {len(trajectories)} trajectories"
        )
    shares = share_seconds(seconds, [1.0] * len(trajectories))
    return [
        (list(s), Cost(verifier_passes=1, seconds=share)) for s, share in zip(scores, shares, strict=True)
    ]


# --- checks that name the trajectory ---------------------------------------------------------------------


class _InputNames:
    """Names a trajectory of one ``label`` call by its question id and its index in the call's input."""

    def __init__(self, trajectories: Sequence[Trajectory]) -> None:
        self._index: dict[int, int] = {}
        for i, t in enumerate(trajectories):
            self._index.setdefault(id(t), i)

    def __call__(self, trajectory: Trajectory) -> str:
        index = self._index.get(id(trajectory))
        where = f"index {index}" if index is not None else "not an input of this call"
        return f"trajectory {trajectory.question_id!r} ({where})"


class _CheckedSampler:
    """Wraps the caller's sampler: refuses answers of the wrong shape, naming the trajectory and prefix."""

    def __init__(self, sampler: RolloutSampler | None, name: _InputNames, strategy: str) -> None:
        self.sampler = sampler
        self.name = name
        self.strategy = strategy

    def rollouts(self, prefixes: Sequence[Prefix], k: int, early_stop: bool = False) -> list[list[Rollout]]:
        if self.sampler is None:
            raise SupervisionInputError(
                f"{self.strategy} needs a rollout sampler to label {self.name(prefixes[0].trajectory)}, got None"
            )
        batches = self.sampler.rollouts(prefixes, k, early_stop=early_stop)
        if len(batches) != len(prefixes):
            raise SupervisionInputError(
                f"the sampler returned {len(batches)} rollout lists for {len(prefixes)} prefixes; "
                "a RolloutSampler must return one list per prefix, in order"
            )
        for prefix, rollouts in zip(prefixes, batches, strict=True):
            self._check(prefix, list(rollouts), k, early_stop)
        return batches

    def _check(self, prefix: Prefix, rollouts: list[Rollout], k: int, early_stop: bool) -> None:
        where = f"the {prefix.num_steps}-step prefix of {self.name(prefix.trajectory)}"
        if not early_stop and len(rollouts) != k:
            raise SupervisionInputError(
                f"the sampler returned {len(rollouts)} rollouts for {where}; expected k = {k}"
            )
        if early_stop and not (
            1 <= len(rollouts) <= k and (len(rollouts) == k or any(r.outcome for r in rollouts))
        ):
            raise SupervisionInputError(
                f"the sampler returned {len(rollouts)} rollouts for {where} with early_stop; expected k = {k}, "
                "or fewer ending at the first correct one"
            )
        for r in rollouts:
            if not isinstance(r.outcome, bool) or not isinstance(r.num_tokens, int) or r.num_tokens < 0:
                raise SupervisionInputError(f"the sampler returned a malformed rollout for {where}: {r!r}")


class _CheckedScorer:
    """Wraps the caller's scorer: one score in [0, 1] per step, or an error naming the trajectory."""

    def __init__(self, scorer: StepScorer | None, name: _InputNames, strategy: str) -> None:
        self.scorer = scorer
        self.name = name
        self.strategy = strategy

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        if self.scorer is None:
            raise SupervisionInputError(
                f"{self.strategy} needs a step scorer to label {self.name(trajectories[0])}, got None"
            )
        scores = self.scorer.score(trajectories)
        if len(scores) != len(trajectories):
            missing = trajectories[min(len(scores), len(trajectories) - 1)]
            raise SupervisionInputError(
                f"the scorer returned {len(scores)} score lists for {len(trajectories)} trajectories "
                f"(first without its own: {self.name(missing)}); a StepScorer returns one list per trajectory"
            )
        for t, s in zip(trajectories, scores, strict=True):
            if len(s) != t.num_steps:
                raise SupervisionInputError(
                    f"the scorer returned {len(s)} scores for {self.name(t)} with {t.num_steps} steps; "
                    "a StepScorer returns exactly one score per step"
                )
            bad = [
                v for v in s if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0
            ]
            if bad or any(math.isnan(v) for v in s):
                raise SupervisionInputError(
                    f"the scorer returned scores outside [0, 1] for {self.name(t)}: {s!r}"
                )
        return scores


# --- the result and the interface ------------------------------------------------------------------------


@dataclass
class LabelResult:
    """What one ``label`` call produced.

    Attributes:
        labelled: the input trajectories that received labels (copies; inputs are never modified), in input
            order, each with its own ``cost``.
        expanded: extra labelled trajectories built from sampled completions (their cost is charged to
            their parent, so theirs is zero).
        dropped: input trajectories that received no labels (copies with ``labels=None``, their ``cost``
            and ``meta`` saying why).
        cost: the total of the call: the sum over ``labelled`` and ``dropped``, with ``seconds`` the wall
            time of the whole call.
        stats: counts worth logging (numbers only): ``trajectories``, ``correct_answers``, ``labelled``,
            ``expanded``, ``dropped``, plus whatever the strategy adds.
    """

    labelled: list[Trajectory]
    expanded: list[Trajectory] = field(default_factory=list)
    dropped: list[Trajectory] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def trajectories(self) -> list[Trajectory]:
        """Everything that can train a verifier: the labelled inputs, then the expansions."""
        return self.labelled + self.expanded


class SupervisionStrategy(ABC):
    """Turns trajectories with outcomes into labelled trajectories, spending rollouts (and step scores).

    Subclasses implement :meth:`assign_labels` and set :attr:`name`; callers use :meth:`label`, which checks
    the input, wraps sampler and scorer so that malformed answers are reported with the trajectory they
    concern, and totals cost and label yield. Constructors take plain, annotated arguments so that a recipe
    can choose a strategy by class path in YAML.
    """

    #: the strategy's name, written to every labelled trajectory's ``label_source``
    name: ClassVar[str] = "strategy"

    def label(
        self,
        trajectories: Sequence[Trajectory],
        sampler: RolloutSampler | None = None,
        scorer: StepScorer | None = None,
    ) -> LabelResult:
        """Label ``trajectories`` (each needs an outcome and at least one step); the inputs are not modified.

        ``sampler`` and ``scorer`` may be ``None`` for a strategy (or an input) that does not use them; a
        strategy that needs one it was not given says so, naming the first trajectory concerned.
        """
        start = time.perf_counter()
        trajectories = list(trajectories)
        self.check_inputs(trajectories)
        names = _InputNames(trajectories)
        result = self.assign_labels(
            trajectories,
            _CheckedSampler(sampler, names, type(self).__name__),
            _CheckedScorer(scorer, names, type(self).__name__),
        )
        self._check_result(trajectories, result)
        total = sum((t.cost for t in result.labelled + result.dropped), Cost())
        result.cost = replace(total, seconds=time.perf_counter() - start)
        result.stats = {
            "trajectories": len(trajectories),
            "correct_answers": sum(bool(t.outcome) for t in trajectories),
            "labelled": len(result.labelled),
            "expanded": len(result.expanded),
            "dropped": len(result.dropped),
            **result.stats,
        }
        return result

    @abstractmethod
    def assign_labels(
        self, trajectories: list[Trajectory], sampler: RolloutSampler, scorer: StepScorer
    ) -> LabelResult:
        """Label checked trajectories: every input ends in ``labelled`` or ``dropped``, in input order.

        Spend rollouts through :func:`rollout_estimate` and scores through :func:`score_steps`, gathering the
        prefixes of all trajectories into as few calls as the method allows. Build outputs with
        :meth:`labelled` and :meth:`all_correct`; :meth:`label` fills ``LabelResult.cost`` and the yield
        counts of ``stats``.
        """

    # --- helpers for subclasses ---------------------------------------------------------------------------
    def labelled(
        self, trajectory: Trajectory, labels: list[float] | None, cost: Cost | None = None, **meta: Any
    ) -> Trajectory:
        """A copy of ``trajectory`` with ``labels``, ``cost`` and ``meta`` added, and this strategy as
        ``label_source`` (``labels=None``, for a dropped trajectory: no labels and no source)."""
        return replace(
            trajectory,
            labels=None if labels is None else list(labels),
            label_source=None if labels is None else self.name,
            cost=cost or Cost(),
            meta={**trajectory.meta, **meta},
        )

    def all_correct(self, trajectory: Trajectory) -> Trajectory:
        """A correct-answer trajectory labelled all 1 at no cost: it reaches the gold answer from every prefix."""
        return self.labelled(trajectory, prefix_labels(trajectory.num_steps, NO_ERROR))

    @staticmethod
    def check_inputs(trajectories: Sequence[Trajectory]) -> None:
        """Refuse what no strategy can label, naming the trajectory (question id, index) and why."""
        for i, t in enumerate(trajectories):
            if not isinstance(t, Trajectory):
                raise SupervisionInputError(f"input {i} is a {type(t).__name__}, not a Trajectory")
            if t.outcome is None:
                raise SupervisionInputError(
                    f"trajectory {t.question_id!r} (index {i}) has no outcome: check it with its task "
                    "(Task.check) before labelling"
                )
            if t.num_steps == 0:
                raise SupervisionInputError(
                    f"trajectory {t.question_id!r} (index {i}) has zero steps: nothing to label"
                )

    def _check_result(self, trajectories: list[Trajectory], result: LabelResult) -> None:
        accounted = len(result.labelled) + len(result.dropped)
        if accounted != len(trajectories):
            raise RuntimeError(
                f"{type(self).__name__} returned {len(result.labelled)} labelled and {len(result.dropped)} "
                f"dropped trajectories for {len(trajectories)} inputs; every input must be one or the other"
            )
        for t in result.labelled + result.expanded:
            if t.labels is None or len(t.labels) != t.num_steps:
                raise RuntimeError(
                    f"{type(self).__name__} returned trajectory {t.question_id!r} without a label per step"
                )
