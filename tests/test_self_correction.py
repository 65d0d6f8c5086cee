"""Self-correction (SPHERE's second stage) on hand-built cases: where it rewrites from, what it pairs, and
what it charges."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from test_supervision import ScriptedScorer

from sapo.data.trajectory import Cost, Trajectory, prefix_labels
from sapo.supervision import (
    Correction,
    Prefix,
    Rollout,
    SupervisionInputError,
    correction_pairs,
    largest_drop,
    scored_first_error,
    self_correct,
)

TOKENS = 7


class PrefixSampler:
    """Rollouts succeed iff the prefix holds no step at or after the question's true first error; records
    every prefix asked for and whether early stop was on."""

    def __init__(self, first_errors: dict[str, int], k_right: int = 1) -> None:
        self.first_errors = first_errors
        self.k_right = k_right  # a good prefix's rollouts fail until this one (1: the first succeeds)
        self.calls: list[tuple[list[tuple[str, int]], int, bool]] = []

    def rollouts(self, prefixes: Sequence[Prefix], k: int, early_stop: bool = False) -> list[list[Rollout]]:
        self.calls.append(([(p.trajectory.question_id, p.num_steps) for p in prefixes], k, early_stop))
        out = []
        for p in prefixes:
            good = p.num_steps <= self.first_errors[p.trajectory.question_id]
            rollouts = []
            for j in range(k):
                ok = good and j + 1 >= self.k_right
                rollouts.append(Rollout([f"fixed {j}", "The answer is 5."], "5" if ok else "4", ok, TOKENS))
                if early_stop and ok:
                    break
            out.append(rollouts)
        return out


def wrong(question_id: str, steps: int = 4, labels: list[float] | None = None) -> Trajectory:
    return Trajectory(
        question_id=question_id,
        question=f"question {question_id}",
        steps=[f"{question_id} step {i}" for i in range(steps - 1)] + ["The answer is 4."],
        final_answer="4",
        outcome=False,
        labels=labels,
        gold_answer="5",
    )


def test_scored_first_error_takes_the_first_step_below_threshold_else_the_largest_drop() -> None:
    assert scored_first_error([0.9, 0.7, 0.3, 0.1]) == 2
    assert scored_first_error([0.4, 0.9, 0.2]) == 0
    # nothing below 0.5: the verifier missed the error, SAPO's detector places it
    assert scored_first_error([0.95, 0.9, 0.6, 0.55]) == largest_drop([0.95, 0.9, 0.6, 0.55]) == 2
    assert scored_first_error([0.9, 0.8, 0.6], threshold=0.7) == 2


def test_rewrites_from_the_located_error_and_keeps_the_prefix() -> None:
    sampler = PrefixSampler({"a": 2, "b": 0})
    scorer = ScriptedScorer({"a": [0.9, 0.8, 0.2, 0.1], "b": [0.3, 0.2, 0.2, 0.1]})
    right = Trajectory("c", "question c", ["5"], final_answer="5", outcome=True)
    corrections = self_correct([wrong("a"), right, wrong("b")], sampler, scorer, attempts=3)
    assert [c.original.question_id for c in corrections] == ["a", "b"]  # the right answer is left alone
    assert sampler.calls == [([("a", 2), ("b", 0)], 3, True)]  # one batched call, early stop on
    a, b = corrections
    assert (a.first_error, a.located_by, b.first_error) == (2, "verifier", 0)
    assert a.corrected is not None and a.corrected.steps == [
        "a step 0",
        "a step 1",
        "fixed 0",
        "The answer is 5.",
    ]
    assert a.corrected.outcome is True and a.corrected.final_answer == "5"
    assert b.corrected is not None and b.corrected.steps == ["fixed 0", "The answer is 5."]
    assert scorer.calls == [["a", "b"]]


def test_labels_place_the_error_without_the_verifier() -> None:
    sampler = PrefixSampler({"a": 1, "b": 3})
    scorer = ScriptedScorer({"b": [0.9, 0.9, 0.9, 0.2]})
    # a: labelled by a strategy (first error at 1); b: labels that call every step right do not place it
    corrections = self_correct(
        [wrong("a", labels=prefix_labels(4, 1)), wrong("b", labels=[1.0] * 4)], sampler, scorer
    )
    assert [(c.first_error, c.located_by) for c in corrections] == [(1, "labels"), (3, "verifier")]
    assert scorer.calls == [["b"]]
    with pytest.raises(SupervisionInputError, match="'b'.*no labels"):
        self_correct([wrong("b")], sampler, None)


def test_a_failed_rewrite_has_no_correction_and_costs_every_attempt() -> None:
    # the verifier places a's error too late (3, the true one is 1): no rewrite from 3 can succeed
    sampler = PrefixSampler({"a": 1, "b": 2}, k_right=2)
    scorer = ScriptedScorer({"a": [0.9, 0.8, 0.7, 0.1], "b": [0.9, 0.9, 0.1, 0.1]})
    a, b = self_correct([wrong("a"), wrong("b")], sampler, scorer, attempts=4)
    assert a.corrected is None and a.attempts == 4
    assert b.corrected is not None and b.attempts == 2  # stopped at its first right continuation
    assert a.cost.completions == 4 and a.cost.generated_tokens == 4 * TOKENS and a.cost.verifier_passes == 1
    assert b.cost.completions == 2 and b.cost.generated_tokens == 2 * TOKENS


def test_pairs_put_the_correction_over_the_original_once() -> None:
    sampler = PrefixSampler({"a": 2, "b": 0})
    scorer = ScriptedScorer({"a": [0.9, 0.8, 0.2, 0.1], "b": [0.1, 0.1, 0.1, 0.1]})
    corrections = self_correct([wrong("a"), wrong("a"), wrong("b")], sampler, scorer)
    pairs = correction_pairs(corrections, prompt={"a": "PA", "b": "PB"})
    assert [(p.question_id, p.prompt) for p in pairs] == [("a", "PA"), ("b", "PB")]  # a's repeat is one pair
    assert pairs[0].chosen == corrections[0].corrected.steps and pairs[0].rejected == wrong("a").steps
    assert pairs[0].margin is None


def test_a_correction_equal_to_its_original_makes_no_pair() -> None:
    original = wrong("a", steps=2)
    same = Correction(
        original, 0, "verifier", Trajectory("a", "q", list(original.steps), outcome=True), 1, Cost()
    )
    assert correction_pairs([same]) == []


def test_round_trip_and_bad_settings() -> None:
    sampler = PrefixSampler({"a": 2})
    (c,) = self_correct([wrong("a")], sampler, ScriptedScorer({"a": [0.9, 0.8, 0.2, 0.1]}))
    again = Correction.from_dict(c.to_dict())
    assert again.corrected.steps == c.corrected.steps and again.first_error == 2 and again.cost == c.cost
    with pytest.raises(ValueError, match="attempts"):
        self_correct([wrong("a")], sampler, None, attempts=0)
    with pytest.raises(ValueError, match="threshold"):
        self_correct([wrong("a")], sampler, None, threshold=1.0)
