"""pass@k against the closed form in exact fractions; best-of-N aggregates, votes, ties and the table, on
samples whose every number is worked out by hand below."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from sapo.data.reward import trajectory_reward
from sapo.data.trajectory import Trajectory
from sapo.eval.best_of_n import (
    AGGREGATES,
    aggregate_last,
    aggregate_mean,
    aggregate_min,
    aggregate_product,
    best_of_n_table,
    majority_vote,
    pick_best,
    weighted_vote,
)
from sapo.eval.pass_at_k import mean_pass_at_k, pass_at_k
from sapo.eval.reasoner import paired_difference

# --- pass@k -----------------------------------------------------------------------------------------------


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """1 − C(n − c, k) / C(n, k), exactly (math.comb is 0 when k > n − c)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_matches_the_closed_form_for_every_small_case():
    cases = [(n, c, k) for n in range(1, 26) for c in range(n + 1) for k in range(1, n + 1)]
    for n, c, k in cases:
        assert float(pass_at_k(n, c, k)) == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12), (
            n,
            c,
            k,
        )


@pytest.mark.parametrize(
    ("n", "c", "k"), [(200, 3, 100), (1000, 1, 1), (1000, 7, 10), (500, 0, 250), (64, 64, 1)]
)
def test_pass_at_k_is_stable_for_large_n(n, c, k):
    """C(1000, 500) overflows a float; the product form does not need it."""
    assert float(pass_at_k(n, c, k)) == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-12, abs=1e-15)


def test_pass_at_k_is_vectorised_over_problems_with_different_n():
    n = [5, 10, 10, 3, 20]
    c = [0, 1, 10, 2, 7]
    values = pass_at_k(n, c, 3)
    assert values.shape == (5,) and values.dtype == np.float64
    expected = [float(exact_pass_at_k(ni, ci, 3)) for ni, ci in zip(n, c, strict=True)]
    np.testing.assert_allclose(values, expected, atol=1e-12)
    shared_n = pass_at_k(10, [0, 5, 10], 2)  # one n for every problem
    np.testing.assert_allclose(shared_n, [float(exact_pass_at_k(10, ci, 2)) for ci in (0, 5, 10)], atol=1e-12)


def test_pass_at_1_is_the_share_correct():
    assert mean_pass_at_k(4, [0, 1, 3, 4], [1]) == {1: pytest.approx(0.5)}


def test_mean_pass_at_k_by_hand():
    # c = 0, 1, 3, 4 of n = 4; pass@2 = 1 − C(4 − c, 2)/6 = 0, 1/2, 1, 1; pass@4 = 0, 1, 1, 1
    assert mean_pass_at_k(4, [0, 1, 3, 4], [1, 2, 4]) == pytest.approx({1: 0.5, 2: 0.625, 4: 0.75})


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (3, 1, 4, "at least 4 samples"),
        (5, 1, 0, "k must be"),
        (5, 6, 1, "num_correct"),
        (5, -1, 1, "num_correct"),
    ],
)
def test_pass_at_k_rejects_impossible_inputs(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_pass_at_k_rejects_k_above_the_smallest_n():
    with pytest.raises(ValueError, match="fewest given is 2"):
        pass_at_k([5, 2], [1, 1], 3)


# --- aggregates and votes ------------------------------------------------------------------------------------


def test_aggregates_by_hand():
    scores = [0.9, 0.5, 0.8]
    assert aggregate_min(scores) == 0.5
    assert aggregate_mean(scores) == pytest.approx(2.2 / 3)
    assert aggregate_last(scores) == 0.8
    assert aggregate_product(scores) == pytest.approx(0.36)
    assert set(AGGREGATES) == {"min", "mean", "last", "product"}


def test_the_aggregates_are_the_trajectory_reward_of_the_pairs():
    scores = [0.9, 0.4, 0.8]
    for name, aggregate in AGGREGATES.items():
        assert aggregate(scores) == trajectory_reward(scores, name)


def test_ties_go_to_the_earliest():
    assert pick_best([0.5, 0.7, 0.7]) == 1  # equal best scores: the earlier sample
    assert (
        weighted_vote(["a", "b", "b", "a"], [1.0, 1.0, 1.0, 1.0]) == "a"
    )  # equal sums: the answer seen first
    assert weighted_vote(["b", "a", "a", "b"], [1.0, 1.0, 1.0, 1.0]) == "b"
    assert majority_vote([None, "x", "y"]) == "x"  # no answer does not vote


def test_votes_by_hand():
    assert weighted_vote(["7", "5", "5", "7"], [0.8, 0.7, 0.4, 0.6]) == "7"  # 1.4 against 1.1
    assert weighted_vote(["7", "5", "5", "7"], [0.8, 0.9, 0.95, 0.6]) == "5"  # 1.4 against 1.85
    assert majority_vote(["3", None, "4", "3"]) == "3"
    assert majority_vote([None, None]) is None


# --- the table ------------------------------------------------------------------------------------------------


def sample(
    question: str, answer: str | None, outcome: bool, scores: list[float]
) -> tuple[Trajectory, list[float]]:
    steps = [f"step {i}" for i in range(len(scores))]
    return Trajectory(question, "q", steps, final_answer=answer, outcome=outcome), scores


#: Question A (gold 7). Aggregates (min, mean, last, product):
#:   s0 "7" right [0.9, 0.8]      -> 0.8, 0.85,   0.8,  0.72
#:   s1 "5" wrong [1.0, 0.7, 0.9] -> 0.7, 0.8667, 0.9,  0.63
#:   s2 "5" wrong [0.4, 0.95]     -> 0.4, 0.675,  0.95, 0.38
#:   s3 "7" right [0.6]           -> 0.6, 0.6,    0.6,  0.6
QUESTION_A = [
    sample("A", "7", True, [0.9, 0.8]),
    sample("A", "5", False, [1.0, 0.7, 0.9]),
    sample("A", "5", False, [0.4, 0.95]),
    sample("A", "7", True, [0.6]),
]
#: Question B (gold 4):
#:   s0 "3" wrong [0.2]        -> 0.2, 0.2, 0.2, 0.2
#:   s1 no answer [0.9]        -> 0.9 everywhere (best-of-N picks it and is wrong; it never votes)
#:   s2 "4" right [0.5, 0.5]   -> 0.5, 0.5, 0.5, 0.25
#:   s3 "3" wrong [0.3, 0.1]   -> 0.1, 0.2, 0.1, 0.03
QUESTION_B = [
    sample("B", "3", False, [0.2]),
    sample("B", None, False, [0.9]),
    sample("B", "4", True, [0.5, 0.5]),
    sample("B", "3", False, [0.3, 0.1]),
]


def test_best_of_n_table_by_hand():
    samples = [[t for t, _ in QUESTION_A], [t for t, _ in QUESTION_B]]
    scores = [[s for _, s in QUESTION_A], [s for _, s in QUESTION_B]]
    table = best_of_n_table(samples, scores, ns=(1, 2, 4))
    # N = 1: only s0; A's is right, B's wrong: every method scores 1/2.
    assert set(table.metrics[1].values()) == {0.5}
    # N = 2, A: best-of min 0.8 > 0.7 and product 0.72 > 0.63 pick s0 (right); mean 0.8667 > 0.85 and last
    # 0.9 > 0.8 pick s1 (wrong); the weighted votes (one sample per answer) agree; majority 1-1 goes to "7"
    # (seen first). B: s0 "3" and s1 (no answer): everything wrong.
    assert table.metrics[2] == pytest.approx(
        {
            "pass@N": 0.5,
            "majority_vote": 0.5,
            "best_of_n/min": 0.5,
            "weighted_vote/min": 0.5,
            "best_of_n/mean": 0.0,
            "weighted_vote/mean": 0.0,
            "best_of_n/last": 0.0,
            "weighted_vote/last": 0.0,
            "best_of_n/product": 0.5,
            "weighted_vote/product": 0.5,
        }
    )
    # N = 4, A: best-of as at N = 2 (s0 for min and product, s1 / s2 for mean / last); weighted votes
    # min "7" 1.4 > "5" 1.1, mean 1.45 < 1.5417, last 1.4 < 1.85, product 1.32 > 1.01; majority 2-2 -> "7".
    # B: best-of always picks s1 (0.9, no answer: wrong); weighted "4" beats "3" under every aggregate
    # (0.5 > 0.3, 0.5 > 0.4, 0.5 > 0.3, 0.25 > 0.23); majority "3" (2 votes) is wrong.
    assert table.metrics[4] == pytest.approx(
        {
            "pass@N": 1.0,
            "majority_vote": 0.5,
            "best_of_n/min": 0.5,
            "weighted_vote/min": 1.0,
            "best_of_n/mean": 0.0,
            "weighted_vote/mean": 0.5,
            "best_of_n/last": 0.0,
            "weighted_vote/last": 0.5,
            "best_of_n/product": 0.5,
            "weighted_vote/product": 1.0,
        }
    )
    assert table.num_questions == 2 and table.to_dict()["metrics"]["4"]["pass@N"] == 1.0
    markdown = table.to_markdown()
    assert "| weighted_vote/min | 50.00 | 50.00 | 100.00 |" in markdown


def test_best_of_n_tie_goes_to_the_earlier_sample():
    first, _ = sample("T", "1", False, [0.7])
    second, _ = sample("T", "2", True, [0.7])
    table = best_of_n_table([[first, second]], [[[0.7], [0.7]]], ns=(2,), aggregates=("min",))
    assert table.metrics[2]["best_of_n/min"] == 0.0  # equal scores: the first (wrong) sample is chosen
    assert table.metrics[2]["weighted_vote/min"] == 0.0  # equal sums: the answer seen first ("1")
    assert table.metrics[2]["pass@N"] == 1.0


def test_a_sample_without_steps_scores_zero():
    empty = Trajectory("E", "q", [], final_answer=None, outcome=False)
    right, _ = sample("E", "4", True, [0.1])
    table = best_of_n_table([[empty, right]], [[[], [0.1]]], ns=(2,), aggregates=("product",))
    assert table.metrics[2]["best_of_n/product"] == 1.0


def test_best_of_n_table_rejects_bad_inputs():
    samples = [[t for t, _ in QUESTION_A]]
    scores = [[s for _, s in QUESTION_A]]
    with pytest.raises(ValueError, match="fewer than N=16"):
        best_of_n_table(samples, scores, ns=(1, 16))
    with pytest.raises(ValueError, match="unknown aggregate"):
        best_of_n_table(samples, scores, ns=(1,), aggregates=("median",))
    with pytest.raises(ValueError, match="sample 1: 2 scores for 3 steps"):
        best_of_n_table(samples, [[scores[0][0], [0.5, 0.5], *scores[0][2:]]], ns=(4,))


def test_paired_difference_matches_hand_computation():
    before = [True, True, False, False, False]
    after = [True, False, True, True, False]
    # d = [0, -1, 1, 1, 0]: mean 1/5; squared deviations 1/25 + 36/25 + 16/25 + 16/25 + 1/25 = 70/25
    change, half_width = paired_difference(before, after)
    assert change == pytest.approx(0.2)
    assert half_width == pytest.approx(1.96 * math.sqrt((70 / 25) / (5 * 4)))
    # the same outcomes before and after: no change and no spread
    assert paired_difference(before, before) == (0.0, 0.0)
    with pytest.raises(ValueError, match="5 outcomes before, 4 after"):
        paired_difference(before, after[:4])
