"""Supervision strategies on hand-built cases, with scripted samplers and scorers and exact cost counters."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sapo.data.trajectory import NO_ERROR, Cost, Trajectory, prefix_labels
from sapo.supervision import (
    BinarySearchSupervision,
    Detection,
    FirstErrorSupervision,
    LabelResult,
    MonteCarloSupervision,
    OutcomeSupervision,
    Prefix,
    RandomStepSupervision,
    Rollout,
    RolloutSampler,
    StepScorer,
    SupervisionInputError,
    SupervisionStrategy,
    expansion_labels,
    hard_rule,
    largest_drop,
    random_step,
    rollout_estimate,
    soft_rule,
    verdict,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
TOKENS = 10  # every scripted completion "generates" this many tokens
CONTINUATION = ["x = 1", "The answer is 5"]  # every scripted completion's own steps

Outcomes = Callable[[Prefix, int], Sequence[bool]]


# --- scripted sampler and scorer --------------------------------------------------------------------------


class ScriptedSampler:
    """Rollouts whose outcomes a function of (prefix, k) decides; records every call's prefixes."""

    def __init__(self, outcomes: Outcomes) -> None:
        self.outcomes = outcomes
        self.calls: list[list[tuple[str, int]]] = []
        self.early_stop_flags: list[bool] = []

    def rollouts(self, prefixes: Sequence[Prefix], k: int, early_stop: bool = False) -> list[list[Rollout]]:
        self.calls.append([(p.trajectory.question_id, p.num_steps) for p in prefixes])
        self.early_stop_flags.append(early_stop)
        batches = []
        for p in prefixes:
            outcomes = list(self.outcomes(p, k))
            assert len(outcomes) == k
            if early_stop and any(outcomes):
                outcomes = outcomes[: outcomes.index(True) + 1]
            batches.append([self.rollout(ok) for ok in outcomes])
        return batches

    @staticmethod
    def rollout(ok: bool) -> Rollout:
        return Rollout(list(CONTINUATION), "5" if ok else "4", ok, TOKENS, meta={"scripted": True})

    @property
    def prefixes(self) -> list[tuple[str, int]]:
        return [p for call in self.calls for p in call]


def first_error_sampler(first_errors: dict[str, int]) -> ScriptedSampler:
    """Rollouts from a prefix succeed iff it holds only steps before the trajectory's true first error."""
    return ScriptedSampler(lambda p, k: [p.num_steps <= first_errors[p.trajectory.question_id]] * k)


def table_sampler(table: dict[int, Sequence[bool] | bool]) -> ScriptedSampler:
    """Rollouts from a prefix of m steps have the outcomes ``table[m]`` (a bool: all k alike)."""

    def outcomes(p: Prefix, k: int) -> Sequence[bool]:
        row = table[p.num_steps]
        return [row] * k if isinstance(row, bool) else row

    return ScriptedSampler(outcomes)


def seeded_sampler(seed: int, p_correct: float = 0.4) -> ScriptedSampler:
    """Random outcomes, seeded by the seed and the prefix (so independent of batching)."""

    def outcomes(p: Prefix, k: int) -> Sequence[bool]:
        rng = random.Random(f"{seed}/{p.trajectory.question_id}/{p.num_steps}")
        return [rng.random() < p_correct for _ in range(k)]

    return ScriptedSampler(outcomes)


class ScriptedScorer:
    """Scores by question id; records every call."""

    def __init__(self, scores: dict[str, list[float]]) -> None:
        self.scores = scores
        self.calls: list[list[str]] = []

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        self.calls.append([t.question_id for t in trajectories])
        return [list(self.scores[t.question_id]) for t in trajectories]


def drop_at(n: int, step: int) -> list[float]:
    """Scores of n steps whose largest drop is at ``step``."""
    return [0.9] * step + [0.2] * (n - step)


def trajectory(question_id: str, n: int, outcome: bool | None = False) -> Trajectory:
    return Trajectory(
        question_id, f"question {question_id}", [f"step {j}" for j in range(n)], outcome=outcome
    )


def counters(cost: Cost) -> tuple[int, int, int, int]:
    return cost.rollout_estimates, cost.completions, cost.generated_tokens, cost.verifier_passes


def estimates_cost(estimates: int, k: int = 8) -> tuple[int, int, int, int]:
    return estimates, estimates * k, estimates * k * TOKENS, 0


def test_scripted_doubles_satisfy_the_protocols():
    assert isinstance(first_error_sampler({}), RolloutSampler)
    assert isinstance(ScriptedScorer({}), StepScorer)


# --- rules and the shared estimate ------------------------------------------------------------------------


def test_label_rules():
    assert hard_rule([False, False, True]) == 1.0 and hard_rule([False] * 8) == 0.0
    assert soft_rule([True, False, False, True]) == 0.5 and soft_rule([False]) == 0.0
    assert prefix_labels(4, 1) == [1.0, 0.0, 0.0, 0.0] and prefix_labels(2, NO_ERROR) == [1.0, 1.0]


def test_rollout_estimate_one_call_values_and_cost():
    t = trajectory("q", 3)
    sampler = table_sampler({1: [True, False, False, False], 2: [False] * 4, 3: [True] * 4})
    prefixes = [Prefix(t, 1), Prefix(t, 2), Prefix(t, 3)]
    hard = rollout_estimate(sampler, prefixes, 4, "hard")
    soft = rollout_estimate(sampler, prefixes, 4, "soft")
    assert [e.value for e in hard] == [1.0, 0.0, 1.0] and [e.value for e in soft] == [0.25, 0.0, 1.0]
    assert all(counters(e.cost) == (1, 4, 40, 0) for e in hard)
    assert len(sampler.calls) == 2 and sampler.calls[0] == [("q", 1), ("q", 2), ("q", 3)]
    assert rollout_estimate(sampler, [], 4) == [] and len(sampler.calls) == 2  # nothing to estimate: no call


def test_rollout_estimate_early_stop_hard_only():
    t = trajectory("q", 2)
    sampler = table_sampler({1: [False, False, True, False], 2: [False] * 4})
    first, second = rollout_estimate(sampler, [Prefix(t, 1), Prefix(t, 2)], 4, "hard", early_stop=True)
    assert sampler.early_stop_flags == [True]
    assert (first.value, counters(first.cost)) == (1.0, (1, 3, 30, 0))
    assert (second.value, counters(second.cost)) == (0.0, (1, 4, 40, 0))
    with pytest.raises(ValueError, match="hard rule"):
        rollout_estimate(sampler, [Prefix(t, 1)], 4, "soft", early_stop=True)
    with pytest.raises(ValueError, match="early_stop"):
        MonteCarloSupervision(rule="soft", early_stop=True)


# --- outcome ----------------------------------------------------------------------------------------------


def test_outcome_labels_every_step_with_the_outcome_at_no_cost():
    result = OutcomeSupervision().label([trajectory("a", 3, True), trajectory("b", 2, False)])  # no sampler
    assert [t.labels for t in result.labelled] == [[1.0] * 3, [0.0] * 2]
    assert {t.label_source for t in result.labelled} == {"outcome"}
    assert counters(result.cost) == (0, 0, 0, 0) and result.expanded == result.dropped == []


# --- Monte Carlo ------------------------------------------------------------------------------------------

MC_TABLE = {1: [True, False, False, False], 2: [False] * 4, 3: [True, True, False, False], 4: [True] * 4}


@pytest.mark.parametrize(
    ("rule", "labels"), [("hard", [1.0, 0.0, 1.0, 0.0]), ("soft", [0.25, 0.0, 0.5, 0.0])]
)
def test_monte_carlo_hard_and_soft_values(rule, labels):
    sampler = table_sampler(MC_TABLE)
    result = MonteCarloSupervision(k=4, rule=rule).label([trajectory("w", 4)], sampler)
    (labelled,) = result.labelled
    assert labelled.labels == labels  # the last step (the answer) gets the outcome without sampling
    assert sampler.calls == [[("w", 1), ("w", 2), ("w", 3)]]
    assert counters(labelled.cost) == counters(result.cost) == (3, 12, 120, 0)
    assert labelled.label_source == "monte_carlo"


def test_monte_carlo_correct_answers_free_by_default_estimated_on_request():
    trajectories = [trajectory("c", 3, True), trajectory("w", 3, False)]
    sampler = table_sampler(MC_TABLE)
    result = MonteCarloSupervision(k=4).label(trajectories, sampler)
    assert result.labelled[0].labels == [1.0, 1.0, 1.0] and counters(result.labelled[0].cost) == (0, 0, 0, 0)
    assert sampler.calls == [[("w", 1), ("w", 2)]]

    sampler = table_sampler(MC_TABLE)
    result = MonteCarloSupervision(k=4, rule="soft", estimate_correct_answers=True).label(
        trajectories, sampler
    )
    assert result.labelled[0].labels == [0.25, 0.0, 1.0]  # the last step: the outcome
    assert sampler.calls == [[("c", 1), ("c", 2), ("w", 1), ("w", 2)]]  # one call for every trajectory
    assert counters(result.cost) == (4, 16, 160, 0)


def test_monte_carlo_estimate_final_step():
    sampler = table_sampler(MC_TABLE)
    result = MonteCarloSupervision(k=4, estimate_final_step=True).label([trajectory("w", 4)], sampler)
    assert result.labelled[0].labels == [1.0, 0.0, 1.0, 1.0]
    assert counters(result.cost) == (4, 16, 160, 0)


def test_monte_carlo_early_stop_counts_fewer_completions_same_labels():
    plain = MonteCarloSupervision(k=4).label([trajectory("w", 4)], table_sampler(MC_TABLE))
    early = MonteCarloSupervision(k=4, early_stop=True).label([trajectory("w", 4)], table_sampler(MC_TABLE))
    assert early.labelled[0].labels == plain.labelled[0].labels
    assert counters(early.cost) == (3, 1 + 4 + 1, 60, 0)


# --- binary search ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 9))
def test_binary_search_finds_every_first_error(n):
    for e in range(n):
        sampler = first_error_sampler({"w": e})
        result = BinarySearchSupervision().label([trajectory("w", n)], sampler)
        (labelled,) = result.labelled
        assert labelled.labels == prefix_labels(n, e), (n, e)
        assert labelled.first_error == e
        probes = len(sampler.prefixes)
        assert math.floor(math.log2(n)) <= probes <= math.ceil(math.log2(n))
        assert all(len(call) == 1 for call in sampler.calls)  # ONE estimate per bisection node
        assert 0 not in [m for _, m in sampler.prefixes] and n not in [m for _, m in sampler.prefixes]
        assert counters(result.cost) == estimates_cost(probes)
        assert labelled.meta["binary_search"]["probes"] == [[m, float(m <= e)] for _, m in sampler.prefixes]


@pytest.mark.parametrize(
    ("e", "probed"), [(0, [2, 1]), (1, [2, 1]), (2, [2, 3]), (3, [2, 3, 4]), (4, [2, 3, 4])]
)
def test_binary_search_probes_of_five_steps(e, probed):
    sampler = first_error_sampler({"w": e})
    BinarySearchSupervision().label([trajectory("w", 5)], sampler)
    assert [m for _, m in sampler.prefixes] == probed


def test_binary_search_one_call_per_round_across_trajectories_correct_answers_free():
    trajectories = [trajectory("a", 8), trajectory("b", 4), trajectory("c", 5, True), trajectory("d", 1)]
    sampler = first_error_sampler({"a": 5, "b": 0, "d": 0})
    result = BinarySearchSupervision(k=2).label(trajectories, sampler)
    assert [len(call) for call in sampler.calls] == [2, 2, 1]
    assert [t.first_error for t in result.labelled] == [5, 0, -1, 0]
    assert [t.cost.rollout_estimates for t in result.labelled] == [3, 2, 0, 0]
    assert counters(result.cost) == estimates_cost(5, k=2)


# --- first error: detection -------------------------------------------------------------------------------


def test_largest_drop_starts_from_one_and_takes_the_earliest_tie():
    assert largest_drop([0.9, 0.8, 0.2, 0.1]) == 2
    assert largest_drop([0.1, 0.1, 0.0]) == 0  # ĉ_{-1} = 1 lets step 0 be the error
    assert largest_drop([0.8, 0.1, 1.0, 0.5]) == 1  # a drop, never a rise
    assert largest_drop([1.0, 0.75, 0.25, 0.75, 0.25]) == 2  # ties: the earliest
    assert [verdict(1, 0), verdict(1, 1), verdict(0, 0), verdict(0, 1)] == [
        "confirmed",
        "later",
        "earlier",
        "inconsistent",
    ]


# --- first error: the four outcomes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("true_error", "verdict_", "first_error"), [(2, "confirmed", 2), (4, "later", 3), (0, "earlier", 1)]
)
def test_first_error_consistent_outcomes(true_error, verdict_, first_error):
    sampler = first_error_sampler({"w": true_error})
    scorer = ScriptedScorer({"w": drop_at(5, 2)})
    result = FirstErrorSupervision(expand=False).label([trajectory("w", 5)], sampler, scorer)
    (labelled,) = result.labelled
    assert labelled.labels == prefix_labels(5, first_error)
    assert sampler.calls == [[("w", 2), ("w", 3)]]  # before and at, in one call
    assert scorer.calls == [["w"]]
    assert counters(labelled.cost) == counters(result.cost) == (2, 16, 160, 1)
    record = labelled.meta["verification"]
    assert (record["detected"], record["verdict"], record["first_error"]) == (2, verdict_, first_error)
    assert record["rounds"] == [
        {"boundary": 2, "before": float(2 <= true_error), "at": float(3 <= true_error), "verdict": verdict_}
    ]
    assert result.stats[verdict_] == 1 and result.stats["boundary_moves"] == int(first_error != 2)


INCONSISTENT = {1: True, 2: False, 3: True, 4: True}  # before (2 steps) wrong, at (3 steps) right


def test_first_error_inconsistent_dropped_by_default():
    sampler = table_sampler(INCONSISTENT)
    scorer = ScriptedScorer({"w": drop_at(5, 2)})
    result = FirstErrorSupervision().label([trajectory("w", 5), trajectory("c", 2, True)], sampler, scorer)
    (dropped,) = result.dropped
    assert dropped.labels is None and dropped.label_source is None
    assert dropped.meta["verification"]["verdict"] == "inconsistent"
    assert dropped.meta["verification"]["on_inconsistent"] == "drop"
    assert dropped.meta["verification"]["first_error"] is None
    assert [t.question_id for t in result.labelled] == ["c"] and result.expanded == []  # never expanded
    assert counters(dropped.cost) == counters(result.cost) == (2, 16, 160, 1)  # a dropped one still cost
    assert (result.stats["labelled"], result.stats["dropped"], result.stats["inconsistent"]) == (1, 1, 1)


def test_first_error_inconsistent_kept():
    sampler = table_sampler(INCONSISTENT)
    result = FirstErrorSupervision(on_inconsistent="keep").label(
        [trajectory("w", 5)], sampler, ScriptedScorer({"w": drop_at(5, 2)})
    )
    (labelled,) = result.labelled
    assert labelled.labels == prefix_labels(5, 2) and result.expanded == []
    assert counters(result.cost) == (2, 16, 160, 1)


def test_first_error_inconsistent_binary_search():
    sampler = table_sampler(INCONSISTENT)
    result = FirstErrorSupervision(on_inconsistent="binary_search").label(
        [trajectory("w", 5)], sampler, ScriptedScorer({"w": drop_at(5, 2)})
    )
    (labelled,) = result.labelled
    # bisection of 5 steps: prefix 2 is wrong, prefix 1 right: the first error is step 1
    assert sampler.calls == [[("w", 2), ("w", 3)], [("w", 2)], [("w", 1)]]
    assert labelled.labels == prefix_labels(5, 1) and result.expanded == []
    assert counters(labelled.cost) == (4, 32, 320, 1)
    assert labelled.meta["verification"]["on_inconsistent"] == "binary_search"


def test_first_error_at_step_zero_takes_the_bare_question_as_correct():
    for true_error, first_error in [(0, 0), (3, 1)]:
        sampler = first_error_sampler({"w": true_error})
        result = FirstErrorSupervision().label(
            [trajectory("w", 3)], sampler, ScriptedScorer({"w": [0.1] * 3})
        )
        assert sampler.calls == [[("w", 1)]]  # only "at": the bare question is not sampled
        assert result.labelled[0].labels == prefix_labels(3, first_error)
        assert result.labelled[0].meta["verification"]["rounds"][0]["before"] == 1.0
        assert counters(result.labelled[0].cost) == (1, 8, 80, 1)


def test_first_error_later_at_the_last_step_keeps_all_correct_but_last():
    sampler = ScriptedSampler(lambda p, k: [True] * k)  # even the whole (wrong-answer) trajectory "succeeds"
    result = FirstErrorSupervision(expand=False).label(
        [trajectory("w", 3)], sampler, ScriptedScorer({"w": [1, 1, 0.2]})
    )
    (labelled,) = result.labelled
    assert sampler.calls == [[("w", 2), ("w", 3)]]
    assert labelled.labels == [1.0, 1.0, 0.0]
    assert labelled.meta["verification"]["verdict"] == "later"
    assert labelled.meta["verification"]["first_error"] == 2


def test_first_error_more_corrections_reuse_estimates_one_call_per_round():
    def run(max_corrections):
        sampler = first_error_sampler({"w": 4})
        result = FirstErrorSupervision(max_corrections=max_corrections, expand=False).label(
            [trajectory("w", 6)], sampler, ScriptedScorer({"w": drop_at(6, 1)})
        )
        return sampler.calls, result.labelled[0]

    calls, labelled = run(2)
    assert calls == [[("w", 1), ("w", 2)], [("w", 3)]]  # prefix 2 is not estimated again
    assert labelled.first_error == 3 and counters(labelled.cost) == (3, 24, 240, 1)
    calls, labelled = run(10)
    assert calls == [[("w", 1), ("w", 2)], [("w", 3)], [("w", 4)], [("w", 5)]]
    assert labelled.first_error == 4 and [r["verdict"] for r in labelled.meta["verification"]["rounds"]] == [
        "later",
        "later",
        "later",
        "confirmed",
    ]


def test_first_error_without_verification_keeps_the_detection():
    sampler = first_error_sampler({"w": 0})
    result = FirstErrorSupervision(max_corrections=0).label(
        [trajectory("w", 4)], sampler, ScriptedScorer({"w": drop_at(4, 2)})
    )
    assert sampler.calls == [] and result.labelled[0].labels == prefix_labels(4, 2)
    assert result.labelled[0].meta["verification"]["verdict"] is None and result.stats["unverified"] == 1
    assert counters(result.cost) == (0, 0, 0, 1)


@SETTINGS
@given(
    st.integers(1, 8).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(0, n - 1)))
)
def test_first_error_with_enough_corrections_finds_the_true_error(case):
    n, true_error, detected = case
    sampler = first_error_sampler({"w": true_error})
    strategy = FirstErrorSupervision(max_corrections=n, expand=False)
    result = strategy.label([trajectory("w", n)], sampler, ScriptedScorer({"w": drop_at(n, detected)}))
    assert result.labelled[0].first_error == true_error
    assert result.labelled[0].cost.rollout_estimates <= abs(true_error - detected) + 2


def test_first_error_batches_all_trajectories_and_frees_correct_answers():
    trajectories = [trajectory("a", 4), trajectory("b", 3, True), trajectory("c", 5), trajectory("d", 2)]
    sampler = first_error_sampler({"a": 1, "c": 4, "d": 0})
    scorer = ScriptedScorer({"a": drop_at(4, 1), "c": drop_at(5, 2), "d": drop_at(2, 0)})
    result = FirstErrorSupervision().label(trajectories, sampler, scorer)
    assert sampler.calls == [[("a", 1), ("a", 2), ("c", 2), ("c", 3), ("d", 1)]]
    assert scorer.calls == [["a", "c", "d"]]  # correct answers are not scored either
    assert [t.first_error for t in result.labelled] == [1, -1, 3, 0]
    assert counters(result.labelled[1].cost) == (0, 0, 0, 0)
    assert counters(result.cost) == (5, 40, 400, 3)
    assert sum(counters(t.cost)[0] for t in result.labelled) == 5
    assert result.stats == {
        **result.stats,
        "trajectories": 4,
        "correct_answers": 1,
        "labelled": 4,
        "confirmed": 2,
        "later": 1,
    }


# --- first error: expansion -------------------------------------------------------------------------------


def test_expansion_labels_rule():
    right, wrong = ScriptedSampler.rollout(True), ScriptedSampler.rollout(False)
    assert expansion_labels([1.0, 1.0], right) == [1.0] * 4
    assert expansion_labels([1.0, 1.0], wrong) is None  # its first error is unknown
    assert expansion_labels([1.0, 0.0], wrong) == [1.0, 0.0, 0.0, 0.0]
    assert expansion_labels([1.0, 0.0], right) == [1.0, 0.0, 0.0, 0.0]
    assert expansion_labels([1.0], Rollout([], "5", True, 0)) is None


def test_expansion_of_a_confirmed_error():
    # k = 2: the "before" prefix (2 steps) has one right and one wrong completion, the "at" prefix two wrong
    sampler = table_sampler({2: [False, True], 3: [False, False]})
    parent = trajectory("w", 4)
    parent.meta["id"] = "w#0"
    result = FirstErrorSupervision(k=2).label([parent], sampler, ScriptedScorer({"w": drop_at(4, 2)}))
    assert result.labelled[0].labels == [1.0, 1.0, 0.0, 0.0]
    expanded = result.expanded
    assert [t.labels for t in expanded] == [[1.0] * 4, [1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0]]
    assert [t.steps for t in expanded] == [
        ["step 0", "step 1", *CONTINUATION],
        ["step 0", "step 1", "step 2", *CONTINUATION],
        ["step 0", "step 1", "step 2", *CONTINUATION],
    ]
    assert [t.outcome for t in expanded] == [True, False, False]
    assert [t.meta["expanded_from"] for t in expanded] == [
        {"question_id": "w", "index": 0, "prefix_steps": 2, "rollout": 1, "id": "w#0"},
        {"question_id": "w", "index": 0, "prefix_steps": 3, "rollout": 0, "id": "w#0"},
        {"question_id": "w", "index": 0, "prefix_steps": 3, "rollout": 1, "id": "w#0"},
    ]
    assert all(t.meta["scripted"] for t in expanded)  # the rollout's own meta travels along
    assert {t.label_source for t in expanded} == {"first_error/expansion"}
    assert all(counters(t.cost) == (0, 0, 0, 0) for t in expanded)  # charged to the parent
    assert counters(result.cost) == (2, 4, 40, 1) and result.stats["expanded"] == 3
    assert len(result.trajectories) == 4


def test_expansion_after_moving_earlier_uses_the_corrected_labels():
    sampler = first_error_sampler({"w": 0})  # (0, 0) at t̂ = 2: the error moves to step 1
    result = FirstErrorSupervision(k=1).label(
        [trajectory("w", 4)], sampler, ScriptedScorer({"w": drop_at(4, 2)})
    )
    assert result.labelled[0].labels == [1.0, 0.0, 0.0, 0.0]
    assert [t.labels for t in result.expanded] == [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]]


def test_expansion_after_moving_later_keeps_only_correct_completions():
    sampler = table_sampler({2: [True, False], 3: [False, True]})  # (1, 1): both prefixes judged correct
    result = FirstErrorSupervision(k=2).label(
        [trajectory("w", 5)], sampler, ScriptedScorer({"w": drop_at(5, 2)})
    )
    assert result.labelled[0].labels == prefix_labels(5, 3)
    assert [t.labels for t in result.expanded] == [[1.0] * 4, [1.0] * 5]


def test_no_expansion_when_disabled():
    sampler = first_error_sampler({"w": 2})
    result = FirstErrorSupervision(expand=False).label(
        [trajectory("w", 4)], sampler, ScriptedScorer({"w": drop_at(4, 2)})
    )
    assert result.expanded == [] and result.stats["expanded"] == 0


def test_first_error_early_stop():
    sampler = table_sampler({2: [False, False, True, False, True, True, True, True], 3: [False] * 8})
    result = FirstErrorSupervision(early_stop=True, expand=False).label(
        [trajectory("w", 4)], sampler, ScriptedScorer({"w": drop_at(4, 2)})
    )
    assert sampler.early_stop_flags == [True]
    assert result.labelled[0].labels == prefix_labels(4, 2)
    assert counters(result.cost) == (2, 3 + 8, 110, 1)


# --- random step ----------------------------------------------------------------------------------------------


def test_random_step_overrides_only_detection():
    own = {name for name in vars(RandomStepSupervision) if not name.startswith("_")}
    assert own == {"name", "detect"}  # and __init__, for the seed


def test_random_step_is_seeded_uniform_and_needs_no_scorer():
    trajectories = [trajectory(f"q{i}", 4) for i in range(60)]

    def detected(result: LabelResult) -> dict[str, int]:
        return {t.question_id: t.meta["verification"]["detected"] for t in result.labelled + result.dropped}

    first = RandomStepSupervision(seed=3).label(trajectories, seeded_sampler(0))  # no scorer
    again = RandomStepSupervision(seed=3).label(list(reversed(trajectories)), seeded_sampler(0))
    other = RandomStepSupervision(seed=4).label(trajectories, seeded_sampler(0))
    assert detected(first) == detected(again)  # seeded, and independent of the batch's order
    assert detected(first) == {t.question_id: random_step(t, 3) for t in trajectories}
    assert detected(first) != detected(other)
    assert set(detected(first).values()) == set(range(4))  # every step gets drawn
    by_id = {t.question_id: t.labels for t in again.labelled}
    assert all(by_id[t.question_id] == t.labels for t in first.labelled)
    assert first.cost.verifier_passes == 0 and {t.label_source for t in first.labelled} == {"random_step"}


# --- determinism ----------------------------------------------------------------------------------------------


def labelled_view(result: LabelResult) -> list:
    return [(t.question_id, t.labels, t.steps) for t in result.labelled + result.expanded + result.dropped]


@pytest.mark.parametrize(
    "make",
    [
        OutcomeSupervision,
        lambda: MonteCarloSupervision(rule="soft"),
        BinarySearchSupervision,
        lambda: FirstErrorSupervision(on_inconsistent="binary_search", max_corrections=2),
        lambda: RandomStepSupervision(seed=7),
    ],
)
def test_identical_inputs_and_seeds_give_identical_labels(make):
    rng = random.Random(0)
    trajectories = [trajectory(f"q{i}", rng.randint(1, 7), rng.random() < 0.3) for i in range(20)]
    scores = {t.question_id: [rng.random() for _ in t.steps] for t in trajectories}
    runs = [make().label(trajectories, seeded_sampler(5), ScriptedScorer(scores)) for _ in range(2)]
    assert labelled_view(runs[0]) == labelled_view(runs[1])
    assert counters(runs[0].cost) == counters(runs[1].cost)
    assert all(t.labels is None for t in trajectories)  # inputs untouched


# --- bad input --------------------------------------------------------------------------------------------


ALL_STRATEGIES = [OutcomeSupervision, MonteCarloSupervision, BinarySearchSupervision, FirstErrorSupervision]


@pytest.mark.parametrize("make", [*ALL_STRATEGIES, RandomStepSupervision])
def test_trajectory_without_outcome_is_named(make):
    with pytest.raises(SupervisionInputError, match=r"'q7' \(index 1\) has no outcome"):
        make().label([trajectory("q6", 2), trajectory("q7", 2, outcome=None)], first_error_sampler({}))


@pytest.mark.parametrize("make", [*ALL_STRATEGIES, RandomStepSupervision])
def test_trajectory_without_steps_is_named(make):
    with pytest.raises(SupervisionInputError, match=r"'empty' \(index 2\) has zero steps"):
        make().label(
            [trajectory("a", 2), trajectory("b", 1), trajectory("empty", 0)], first_error_sampler({})
        )


def test_scorer_with_wrong_number_of_scores_is_named():
    trajectories = [trajectory("a", 3), trajectory("ok", 2, True), trajectory("b", 3)]
    scorer = ScriptedScorer({"a": drop_at(3, 1), "b": [0.5, 0.1]})
    with pytest.raises(SupervisionInputError, match=r"2 scores for trajectory 'b' \(index 2\) with 3 steps"):
        FirstErrorSupervision().label(trajectories, first_error_sampler({"a": 1, "b": 1}), scorer)


def test_scorer_with_wrong_number_of_lists_or_bad_values_is_named():
    class Short:
        def score(self, trajectories):
            return [[0.5] * trajectories[0].num_steps]

    trajectories = [trajectory("a", 3), trajectory("b", 3)]
    with pytest.raises(SupervisionInputError, match=r"1 score lists for 2 trajectories .*'b' \(index 1\)"):
        FirstErrorSupervision().label(trajectories, first_error_sampler({}), Short())
    with pytest.raises(SupervisionInputError, match=r"outside \[0, 1\] for trajectory 'b' \(index 1\)"):
        FirstErrorSupervision().label(
            trajectories, first_error_sampler({}), ScriptedScorer({"a": [0.5] * 3, "b": [0.5, 1.5, 0.0]})
        )


def test_missing_sampler_or_scorer_is_named():
    with pytest.raises(
        SupervisionInputError, match=r"needs a step scorer to label trajectory 'w' \(index 1\)"
    ):
        FirstErrorSupervision().label([trajectory("c", 2, True), trajectory("w", 2)], first_error_sampler({}))
    with pytest.raises(SupervisionInputError, match=r"needs a rollout sampler .*'w' \(index 0\)"):
        MonteCarloSupervision().label([trajectory("w", 3)])


def test_sampler_with_wrong_number_of_rollouts_is_named():
    sampler = ScriptedSampler(lambda p, k: [False] * k)
    short = ScriptedSampler(lambda p, k: [False] * k)
    short.rollouts = lambda prefixes, k, early_stop=False: [[ScriptedSampler.rollout(False)] * (k - 1)]
    with pytest.raises(
        SupervisionInputError, match=r"7 rollouts for the 1-step prefix of trajectory 'w' \(index 0\)"
    ):
        MonteCarloSupervision().label([trajectory("w", 2)], short)
    MonteCarloSupervision().label([trajectory("w", 2)], sampler)


def test_detection_outside_the_trajectory_is_named():
    class Beyond(FirstErrorSupervision):
        def detect(self, trajectories, scorer):
            return [Detection(t.num_steps) for t in trajectories]

    with pytest.raises(SupervisionInputError, match=r"'w' \(index 0\) at step 3, outside its 3 steps"):
        Beyond().label([trajectory("w", 3)], first_error_sampler({}))


def test_bad_arguments():
    with pytest.raises(ValueError, match="on_inconsistent"):
        FirstErrorSupervision(on_inconsistent="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rule"):
        MonteCarloSupervision(rule="median")  # type: ignore[arg-type]
    for make in (MonteCarloSupervision, BinarySearchSupervision, FirstErrorSupervision):
        with pytest.raises(ValueError, match="k must be"):
            make(k=0)
    with pytest.raises(ValueError, match="max_corrections"):
        FirstErrorSupervision(max_corrections=-1)


def test_a_strategy_that_loses_a_trajectory_is_refused():
    class Lossy(SupervisionStrategy):
        name = "lossy"

        def assign_labels(self, trajectories, sampler, scorer):
            return LabelResult(labelled=[self.all_correct(t) for t in trajectories[1:]])

    with pytest.raises(RuntimeError, match="every input must be"):
        Lossy().label([trajectory("a", 1), trajectory("b", 1)])


# --- configuration --------------------------------------------------------------------------------------------


def test_strategies_are_built_by_class_path_through_jsonargparse():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_subclass_arguments(SupervisionStrategy, "strategy")
    config = parser.parse_object(
        {
            "strategy": {
                "class_path": "sapo.supervision.FirstErrorSupervision",
                "init_args": {"k": 4, "on_inconsistent": "binary_search", "max_corrections": 2},
            }
        }
    )
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    strategy = instantiate(config).strategy
    assert isinstance(strategy, FirstErrorSupervision)
    assert (strategy.k, strategy.on_inconsistent, strategy.max_corrections, strategy.expand) == (
        4,
        "binary_search",
        2,
        True,
    )
    with pytest.raises((jsonargparse.ArgumentError, SystemExit, ValueError)):
        parser.parse_object(
            {"strategy": {"class_path": "sapo.supervision.FirstErrorSupervision", "init_args": {"bogus": 1}}}
        )
