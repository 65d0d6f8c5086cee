"""First-error supervision: SAPO's self-adaptive process supervision (SAPS).

For each wrong-answer trajectory: (b) detect the first error t̂ from the verifier's step scores, (c) pre-assign
labels (1 before t̂, 0 from it on), (d) verify with two hard rollout estimates, at the prefix just before t̂
and at the prefix that includes it, (e) correct the boundary by the four outcomes, (f) expand: the sampled
completions become labelled trajectories too. Correct-answer trajectories are all 1 and cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sapo.data.trajectory import Cost, Trajectory, prefix_labels
from sapo.supervision.base import (
    Estimate,
    LabelResult,
    SupervisionInputError,
    SupervisionStrategy,
    check_choice,
    hard_rule,
    rollout_estimate,
    score_steps,
)
from sapo.supervision.binary_search import Bisection, bisect_first_errors
from sapo.supervision.protocols import Prefix, Rollout, RolloutSampler, StepScorer

__all__ = [
    "VERDICTS",
    "Detection",
    "FirstErrorSupervision",
    "InconsistentPolicy",
    "expansion_labels",
    "largest_drop",
    "verdict",
]

InconsistentPolicy = Literal["drop", "binary_search", "keep"]
#: the four outcomes of a verification, keyed by (before, at)
VERDICTS = {(1, 0): "confirmed", (1, 1): "later", (0, 0): "earlier", (0, 1): "inconsistent"}


def largest_drop(scores: Sequence[float]) -> int:
    """t̂ = argmax_j (ĉ_{j-1} − ĉ_j) with ĉ_{-1} = 1: where the score falls most (the earliest step on ties)."""
    drops = [before - now for before, now in zip([1.0, *scores[:-1]], scores, strict=True)]
    return max(range(len(drops)), key=lambda j: (drops[j], -j))


def verdict(before: float, at: float) -> str:
    """Read the two estimates: (1, 0) confirmed, (1, 1) the error is later, (0, 0) earlier, (0, 1) inconsistent."""
    return VERDICTS[int(before > 0), int(at > 0)]


def expansion_labels(prefix: Sequence[float], rollout: Rollout) -> list[float] | None:
    """Labels of a completion continuing a labelled prefix, or None when it teaches nothing certain.

    A prefix judged correct (all its labels 1) whose completion reaches the gold answer: 1 on every step.
    A prefix judged wrong: the prefix's labels, then 0 on every new step ("incorrectness propagates").
    A correct prefix's wrong completion (its first error is unknown) or a completion with no steps: None.
    """
    if not rollout.steps:
        return None
    if all(v == 1.0 for v in prefix):
        return [1.0] * (len(prefix) + len(rollout.steps)) if rollout.outcome else None
    return [*prefix, *[0.0] * len(rollout.steps)]


@dataclass
class Detection:
    """Step b's answer for one trajectory: the pre-assigned first error, what finding it cost, the scores."""

    first_error: int
    cost: Cost = field(default_factory=Cost)
    scores: list[float] | None = None


@dataclass
class _Verification:
    """Steps d-e for one wrong-answer trajectory: the boundary, the estimates by prefix length, the rounds."""

    trajectory: Trajectory
    index: int
    detection: Detection
    boundary: int
    estimates: dict[int, Estimate] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    fallback: Bisection | None = None

    @property
    def inconsistent(self) -> bool:
        return bool(self.rounds) and self.rounds[0]["verdict"] == "inconsistent"

    def value(self, num_steps: int) -> float:
        """The estimate of a prefix; the bare question's is taken as 1 without sampling."""
        return 1.0 if num_steps == 0 else self.estimates[num_steps].value

    def missing_prefixes(self) -> list[int]:
        """Prefix lengths this round needs and no earlier round estimated (an estimate is never repeated)."""
        return [m for m in (self.boundary, self.boundary + 1) if m > 0 and m not in self.estimates]

    def correct(self) -> None:
        """Apply one round's verdict to the boundary."""
        before, at = self.value(self.boundary), self.value(self.boundary + 1)
        outcome = verdict(before, at)
        self.rounds.append({"boundary": self.boundary, "before": before, "at": at, "verdict": outcome})
        last = self.trajectory.num_steps - 1
        # "later" at the last step leaves the boundary there: all correct but the last (the outcome is wrong)
        if outcome in ("confirmed", "inconsistent") or (outcome == "later" and self.boundary == last):
            self.finished = True
        elif outcome == "later":
            self.boundary += 1
        else:
            self.boundary -= 1

    @property
    def cost(self) -> Cost:
        probes = self.fallback.probes if self.fallback else []
        return sum((e.cost for e in [*self.estimates.values(), *probes]), self.detection.cost)

    def first_error(self, on_inconsistent: str) -> int | None:
        """The final first error (None: dropped): the boundary, or what ``on_inconsistent`` gives."""
        if not self.inconsistent:
            return self.boundary
        if on_inconsistent == "keep":
            return self.detection.first_error
        return self.fallback.first_error if self.fallback else None


class FirstErrorSupervision(SupervisionStrategy):
    """SAPO's self-adaptive process supervision: detect the first error with the verifier, verify, correct.

    Cost per wrong-answer trajectory: one verifier pass and two rollout estimates (one when t̂ = 0, whose
    bare-question estimate is taken as 1 without sampling); with ``max_corrections > 1`` one more per extra
    round. All trajectories' "before" and "at" prefixes go to the sampler in one call per round.

    Each wrong-answer trajectory's ``meta["verification"]`` records ``detected`` (the pre-assigned t̂, for
    the self-verification error), ``scores`` (the verifier's, or None), ``verdict`` (of the first round:
    ``confirmed``, ``later``, ``earlier``, ``inconsistent``; None without verification), ``rounds`` (each
    round's boundary, estimates and verdict), ``first_error`` (the final one; None when dropped) and, for an
    inconsistent trajectory, ``on_inconsistent``.

    Args:
        k: completions per estimate. Decision: 8, the Monte Carlo baseline's k, so costs compare fairly.
        on_inconsistent: what to do with (0, 1), a correct prefix after a wrong one, which the paper does
            not cover: ``"drop"`` (default: no labels from this trajectory this round; it is returned in
            ``dropped``), ``"binary_search"`` (bisect it as BinarySearchSupervision does, adding that cost)
            or ``"keep"`` (keep the pre-assigned labels). Inconsistent trajectories are never expanded.
        max_corrections: verification rounds. The paper verifies once and shifts the boundary by one step
            at most (1); a larger value repeats verification at the new boundary, reusing estimates already
            taken; 0 keeps the verifier's pre-assigned labels with no rollouts.
        expand: turn the verification's completions into labelled trajectories (see
            :func:`expansion_labels`); False is the paper's "w/o EP" ablation.
        early_stop: stop each estimate at its first correct completion. Beyond the paper: it changes cost,
            never labels, but leaves fewer completions to expand. Off by default.
    """

    name = "first_error"

    def __init__(
        self,
        k: int = 8,
        on_inconsistent: InconsistentPolicy = "drop",
        max_corrections: int = 1,
        expand: bool = True,
        early_stop: bool = False,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if max_corrections < 0:
            raise ValueError(f"max_corrections must be at least 0, got {max_corrections}")
        self.k = k
        self.on_inconsistent = check_choice(
            on_inconsistent, ("drop", "binary_search", "keep"), "on_inconsistent"
        )
        self.max_corrections = max_corrections
        self.expand = expand
        self.early_stop = early_stop

    # --- step b: the one method a variant overrides ------------------------------------------------------
    def detect(self, trajectories: Sequence[Trajectory], scorer: StepScorer) -> list[Detection]:
        """Pre-assign the first error of each wrong-answer trajectory: the verifier's largest score drop."""
        return [Detection(largest_drop(s), cost, s) for s, cost in score_steps(scorer, trajectories)]

    # --- steps c-f ---------------------------------------------------------------------------------------
    def assign_labels(
        self, trajectories: list[Trajectory], sampler: RolloutSampler, scorer: StepScorer
    ) -> LabelResult:
        checks = self._detect_all(trajectories, scorer)
        self._verify(checks, sampler)
        if self.on_inconsistent == "binary_search":
            self._bisect_inconsistent(checks, sampler)
        by_index = {c.index: c for c in checks}
        labelled, expanded, dropped = [], [], []
        for i, t in enumerate(trajectories):
            if i not in by_index:
                labelled.append(self.all_correct(t))
                continue
            check = by_index[i]
            first_error = check.first_error(self.on_inconsistent)
            record = self._record(check, first_error)
            if first_error is None:
                dropped.append(self.labelled(t, None, check.cost, verification=record))
                continue
            labels = prefix_labels(t.num_steps, first_error)
            labelled.append(self.labelled(t, labels, check.cost, verification=record))
            if self.expand and not check.inconsistent:
                expanded.extend(self._expansions(check, labels))
        return LabelResult(labelled=labelled, expanded=expanded, dropped=dropped, stats=self._stats(checks))

    def _detect_all(self, trajectories: list[Trajectory], scorer: StepScorer) -> list[_Verification]:
        wrong = [i for i, t in enumerate(trajectories) if not t.outcome]
        detections = self.detect([trajectories[i] for i in wrong], scorer)
        if len(detections) != len(wrong):
            raise RuntimeError(
                f"{type(self).__name__}.detect returned {len(detections)} detections for {len(wrong)}"
            )
        for i, d in zip(wrong, detections, strict=True):
            t = trajectories[i]
            if not 0 <= d.first_error < t.num_steps:
                raise SupervisionInputError(
                    f"detection put the first error of trajectory {t.question_id!r} (index {i}) at step "
                    f"{d.first_error}, outside its {t.num_steps} steps"
                )
        return [
            _Verification(trajectories[i], i, d, d.first_error)
            for i, d in zip(wrong, detections, strict=True)
        ]

    def _verify(self, checks: list[_Verification], sampler: RolloutSampler) -> None:
        """Steps d-e, round by round; each round's prefixes of all trajectories go in one sampler call."""
        active = list(checks)
        for _ in range(self.max_corrections):
            needed = [(c, m) for c in active for m in c.missing_prefixes()]
            prefixes = [Prefix(c.trajectory, m) for c, m in needed]
            for (c, m), e in zip(
                needed, rollout_estimate(sampler, prefixes, self.k, hard_rule, self.early_stop), strict=True
            ):
                c.estimates[m] = e
            for c in active:
                c.correct()
            active = [c for c in active if not c.finished]
            if not active:
                break

    def _bisect_inconsistent(self, checks: list[_Verification], sampler: RolloutSampler) -> None:
        """``on_inconsistent="binary_search"``: bisect every inconsistent trajectory, one call per round."""
        inconsistent = [c for c in checks if c.inconsistent]
        searches = bisect_first_errors(sampler, [c.trajectory for c in inconsistent], self.k, self.early_stop)
        for c, search in zip(inconsistent, searches, strict=True):
            c.fallback = search

    def _record(self, check: _Verification, first_error: int | None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "detected": check.detection.first_error,
            "scores": check.detection.scores,
            "verdict": check.rounds[0]["verdict"] if check.rounds else None,
            "rounds": check.rounds,
            "first_error": first_error,
        }
        if check.inconsistent:
            record["on_inconsistent"] = self.on_inconsistent
        return record

    def _expansions(self, check: _Verification, labels: list[float]) -> list[Trajectory]:
        """Step f: the verification's completions as labelled trajectories (see :func:`expansion_labels`)."""
        parent = check.trajectory
        out = []
        for m, estimate in sorted(check.estimates.items()):
            for r, rollout in enumerate(estimate.rollouts):
                new_labels = expansion_labels(labels[:m], rollout)
                if new_labels is None:
                    continue
                origin = {
                    "question_id": parent.question_id,
                    "index": check.index,
                    "prefix_steps": m,
                    "rollout": r,
                }
                if "id" in parent.meta:
                    origin["id"] = parent.meta["id"]
                out.append(
                    Trajectory(
                        question_id=parent.question_id,
                        question=parent.question,
                        steps=parent.steps[:m] + list(rollout.steps),
                        final_answer=rollout.final_answer,
                        outcome=rollout.outcome,
                        labels=new_labels,
                        label_source=f"{self.name}/expansion",
                        gold_answer=parent.gold_answer,
                        meta={**rollout.meta, "expanded_from": origin},
                    )
                )
        return out

    def _stats(self, checks: list[_Verification]) -> dict[str, Any]:
        verdicts = [c.rounds[0]["verdict"] if c.rounds else "unverified" for c in checks]
        stats: dict[str, Any] = {name: verdicts.count(name) for name in [*VERDICTS.values(), "unverified"]}
        stats["boundary_moves"] = sum(
            c.boundary != c.detection.first_error for c in checks if not c.inconsistent
        )
        return stats
