"""Preference pairs from step scores: the reward, the margin rule, the reuse rule, validation, RFT data."""

from __future__ import annotations

import math

import pytest

from sapo.data.pairs import build_pairs, outcome_pairs, rft_pairs, trajectory_reward, unpaired_correct
from sapo.data.trajectory import Trajectory


def _trajectory(question_id: str, name: str, steps: int = 2, outcome: bool | None = False) -> Trajectory:
    """A trajectory whose steps spell its name, so pairs are easy to read back."""
    return Trajectory(
        question_id, f"question {question_id}", [f"{name} step {j}" for j in range(steps)], outcome=outcome
    )


def _names(pairs) -> list[tuple[str, str]]:
    return [(p.chosen[0].split()[0], p.rejected[0].split()[0]) for p in pairs]


def test_reward_is_the_mean_step_score():
    assert trajectory_reward([1.0, 0.5, 0.0, 0.5]) == pytest.approx(0.5)
    assert trajectory_reward([0.2]) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="without steps"):
        trajectory_reward([])


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("mean", 0.6875), ("min", 0.25), ("last", 0.5), ("product", 0.125)],  # 2.75 / 4; 1 · 0.25 · 1 · 0.5
)
def test_reward_under_each_aggregation_by_hand(aggregation, expected):
    scores = [1.0, 0.25, 1.0, 0.5]
    assert trajectory_reward(scores, aggregation) == expected
    with pytest.raises(ValueError, match="without steps"):
        trajectory_reward([], aggregation)


def test_the_mean_reward_does_not_depend_on_the_order_of_the_steps():
    scores = [0.1, 0.2, 0.3, 0.4]
    assert sum(scores) != sum(reversed(scores))  # a plain running sum would tell these two apart
    assert trajectory_reward(scores) == trajectory_reward(scores[::-1]) == 0.25


def test_an_unknown_aggregation_is_refused():
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        trajectory_reward([0.9, 0.4], "median")


def test_pairs_need_the_margin_and_a_correct_chosen_side():
    trajectories = [_trajectory("q", "A", outcome=True), _trajectory("q", "B"), _trajectory("q", "C")]
    scores = [[1.0, 1.0], [0.75, 0.25], [0.0, 0.0]]  # rewards 1, 0.5, 0
    pairs = build_pairs(trajectories, scores, margin=0.3)
    assert _names(pairs) == [("A", "C"), ("A", "B")]
    assert [p.margin for p in pairs] == [1.0, 0.5]
    assert all(p.question_id == "q" and p.prompt == "question q" for p in pairs)
    # the paper's score-only rule: B (wrong, reward 0.5) may be chosen against C too
    score_only = build_pairs(trajectories, scores, margin=0.3, require_correct_chosen=False)
    assert _names(score_only) == [("A", "C"), ("A", "B"), ("B", "C")]
    assert _names(build_pairs(trajectories, scores, margin=0.6)) == [("A", "C")]
    assert build_pairs(trajectories, scores, margin=1.0, max_pairs_per_question=1)[0].margin == 1.0


def test_fresh_trajectories_come_before_reused_ones():
    trajectories = [
        _trajectory("q", "A", outcome=True),
        _trajectory("q", "B", outcome=True),
        _trajectory("q", "C"),
        _trajectory("q", "D"),
    ]
    scores = [[1.0], [0.75], [0.25], [0.0]]
    for t in trajectories:
        t.steps = t.steps[:1]
    # by margin alone: (A,D) 1.0, (A,C) 0.75, (B,D) 0.75, (B,C) 0.5; (A,B) is only 0.25 apart
    assert _names(build_pairs(trajectories, scores, max_pairs_per_question=2)) == [("A", "D"), ("B", "C")]
    assert _names(build_pairs(trajectories, scores, max_pairs_per_question=4)) == [
        ("A", "D"),
        ("B", "C"),
        ("A", "C"),
        ("B", "D"),
    ]
    # one correct sample among wrong ones still gives max_pairs_per_question pairs, worst rejected first
    one_good = [_trajectory("q", n, 1, outcome=n == "A") for n in "ABCDEF"]
    pairs = build_pairs(one_good, [[1.0], [0.5], [0.0], [0.25], [0.125], [0.0]], max_pairs_per_question=3)
    assert _names(pairs) == [("A", "C"), ("A", "F"), ("A", "E")]


def test_margin_test_tolerates_float_rounding_and_never_pairs_equal_rewards():
    trajectories = [_trajectory("q", "A", 1, outcome=True), _trajectory("q", "B", 1, outcome=True)]
    assert 0.7 - 0.4 < 0.3  # the float difference falls short of the margin it stands for
    assert len(build_pairs(trajectories, [[0.7], [0.4]], margin=0.3)) == 1
    assert build_pairs(trajectories, [[0.5], [0.5]], margin=0.0) == []
    assert _names(build_pairs(trajectories, [[0.5], [0.25]], margin=0.0)) == [("A", "B")]


def test_questions_are_paired_separately_and_summarised():
    trajectories = [
        _trajectory("q1", "A", outcome=True),
        _trajectory("q2", "B", outcome=True),
        _trajectory("q1", "C"),
        _trajectory("q2", "D"),
        _trajectory("q3", "E"),
        _trajectory("q3", "F"),
    ]
    scores = [[1.0, 1.0], [0.5, 0.5], [0.0, 0.5], [0.5, 0.375], [1.0, 1.0], [0.0, 0.0]]
    pairs = build_pairs(trajectories, scores)
    assert _names(pairs) == [("A", "C")]  # q2 is 0.0625 apart; q3 has no correct answer
    assert pairs[0].margin == pytest.approx(0.75)


def test_equal_solutions_are_never_a_pair():
    same = [
        Trajectory("q", "question", ["x = 1", "The answer is 1"], outcome=True),
        Trajectory("q", "question", ["X = 1", "The  answer is 1"], outcome=True),
    ]
    assert build_pairs(same, [[1.0, 1.0], [0.0, 0.0]]) == []


def test_prompts_come_from_a_function_a_mapping_or_the_question():
    trajectories = [_trajectory("q", "A", outcome=True), _trajectory("q", "B")]
    scores = [[1.0, 1.0], [0.0, 0.0]]
    assert build_pairs(trajectories, scores)[0].prompt == "question q"
    assert build_pairs(trajectories, scores, prompt={"q": "<prompt>"})[0].prompt == "<prompt>"
    assert build_pairs(trajectories, scores, prompt=lambda t: t.question.upper())[0].prompt == "QUESTION Q"
    with pytest.raises(KeyError, match="'q'"):
        build_pairs(trajectories, scores, prompt={"other": "p"})


@pytest.mark.parametrize("margin", [1.5, -0.1, math.nan, True])
def test_impossible_margins_are_refused(margin):
    trajectories = [_trajectory("q", "A", outcome=True)]
    with pytest.raises(ValueError, match="margin"):
        build_pairs(trajectories, [[1.0, 1.0]], margin=margin)


def test_other_bad_inputs_name_what_is_wrong():
    trajectories = [_trajectory("q0", "A", outcome=True), _trajectory("q1", "B", steps=3)]
    with pytest.raises(ValueError, match="max_pairs_per_question"):
        build_pairs(trajectories, [[1.0, 1.0], [0.0, 0.0, 0.0]], max_pairs_per_question=0)
    with pytest.raises(ValueError, match="1 lists for 2 trajectories"):
        build_pairs(trajectories, [[1.0, 1.0]])
    with pytest.raises(ValueError, match=r"trajectory 1 \(question_id 'q1'\): 2 scores for 3 steps"):
        build_pairs(trajectories, [[1.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"trajectory 0 \(question_id 'q0'\): score of step 1"):
        build_pairs(trajectories, [[1.0, 1.2], [0.0, 0.0, 0.0]])
    empty = Trajectory("q2", "question", [], outcome=True)
    with pytest.raises(ValueError, match=r"trajectory 0 \(question_id 'q2'\): has no steps"):
        build_pairs([empty], [[]])


def test_pairs_do_not_depend_on_other_questions_or_on_repeated_calls():
    group = [_trajectory("q", n, 1, outcome=n in "AB") for n in "ABCD"]
    scores = [[1.0], [1.0], [0.0], [0.0]]  # every margin ties: input order decides
    alone = build_pairs(group, scores)
    assert _names(alone) == [("A", "C"), ("B", "D"), ("A", "D"), ("B", "C")]
    mixed = [group[0], _trajectory("x", "X", 1), group[1], group[2], _trajectory("x", "Y", 1), group[3]]
    mixed_scores = [[1.0], [0.5], [1.0], [0.0], [0.0], [0.0]]
    assert _names(build_pairs(mixed, mixed_scores)) == _names(alone)
    assert build_pairs(group, scores) == alone


def test_unpaired_correct_adds_rfts_rows_that_no_pair_chose():
    """A question with a single sample gives no pair but keeps its right sample as an SFT row; a right sample
    beyond the pairs' chosen sides is kept; a chosen side (or the same solution written otherwise)
    is not added again; wrong and unchecked samples never are."""
    trajectories = [
        Trajectory("q1", "one", ["x = 1", "The answer is 1"], outcome=True),
        Trajectory("q1", "one", ["y = 1", "The answer is 1"], outcome=True),
        Trajectory("q1", "one", ["X = 1", "the answer is  1"], outcome=True),  # the first, written otherwise
        Trajectory("q1", "one", ["x = 2", "The answer is 2"], outcome=False),
        Trajectory("q2", "two", ["a = 2", "The answer is 2"], outcome=True),  # alone: no pair
        Trajectory("q3", "three", ["z = 3"], outcome=None),
    ]
    scores = [[0.9, 0.9], [0.5, 0.5], [0.8, 0.8], [0.1, 0.1], [0.7, 0.7], [0.5]]
    pairs = build_pairs(trajectories, scores, margin=0.0, max_pairs_per_question=1)
    assert [(p.question_id, p.chosen) for p in pairs] == [("q1", ["x = 1", "The answer is 1"])]
    rows = unpaired_correct(trajectories, pairs, prompt={"q1": "P1", "q2": "P2", "q3": "P3"})
    assert [(p.question_id, p.prompt, p.chosen) for p in rows] == [
        ("q1", "P1", ["y = 1", "The answer is 1"]),
        ("q2", "P2", ["a = 2", "The answer is 2"]),
    ]
    assert all(p.rejected is None and p.margin is None for p in rows)
    assert unpaired_correct(trajectories, [], prompt=None) == rft_pairs(trajectories)


def test_rft_pairs_are_distinct_correct_solutions_without_rejected_side():
    trajectories = [
        Trajectory("q1", "one", ["x = 1", "The answer is 1"], outcome=True),
        Trajectory("q1", "one", ["X = 1", "the answer is  1"], outcome=True),  # the same solution
        Trajectory("q1", "one", ["x = 2", "The answer is 2"], outcome=False),
        Trajectory("q1", "one", ["y = 1", "The answer is 1"], outcome=True),
        Trajectory("q2", "two", ["x = 1", "The answer is 1"], outcome=True),  # same text, other question
        Trajectory("q2", "two", ["z = 3"], outcome=None),  # unchecked: not trained on
    ]
    pairs = rft_pairs(trajectories, prompt={"q1": "P1", "q2": "P2"})
    assert [(p.question_id, p.prompt, p.chosen) for p in pairs] == [
        ("q1", "P1", ["x = 1", "The answer is 1"]),
        ("q1", "P1", ["y = 1", "The answer is 1"]),
        ("q2", "P2", ["x = 1", "The answer is 1"]),
    ]
    assert all(p.rejected is None and p.margin is None for p in pairs)
    by_answer = rft_pairs(trajectories, dedup_key=lambda t: " ".join(t.steps[-1].lower().split()))
    assert len(by_answer) == 2


def test_outcome_pairs_put_right_over_wrong_hardest_wrong_first():
    def t(qid, steps, outcome):
        return Trajectory(question_id=qid, question="q", steps=steps, outcome=outcome)

    trajectories = [
        t("a", ["r1"], True),
        t("a", ["w1"], False),
        t("a", ["w2"], False),
        t("a", ["r2"], True),
        t("b", ["w"], False),  # b has no right answer: no pair
        t("c", ["same"], True),
        t("c", ["Same"], False),  # the same solution (normalised) is never a pair
    ]
    scores = [[0.2], [0.1], [0.9], [0.6], [0.5], [0.5], [0.5]]
    pairs = outcome_pairs(
        trajectories, scores, max_pairs_per_question=2, prompt={"a": "PA", "b": "PB", "c": "PC"}
    )
    # the wrong answer the verifier liked (w2, 0.9) first, over the best-rated right one (r2); then w1 with r1,
    # the unused sides, although the verifier preferred w2 to both right answers
    assert [(p.chosen, p.rejected) for p in pairs] == [(["r2"], ["w2"]), (["r1"], ["w1"])]
    assert pairs[0].margin == pytest.approx(0.6 - 0.9) and pairs[0].prompt == "PA"
    with pytest.raises(ValueError, match="trajectory 1"):
        outcome_pairs(trajectories, [[0.2], [1.5], *scores[2:]])
    # without a verifier (w/o RM): the same right-over-wrong rule, the input order choosing, margins 0
    unranked = outcome_pairs(trajectories, None, max_pairs_per_question=2)
    assert [(p.chosen, p.rejected) for p in unranked] == [(["r1"], ["w1"]), (["r2"], ["w2"])]
    assert [p.margin for p in unranked] == [0.0, 0.0]


def test_a_chosen_side_needs_the_least_reward_but_a_rejected_side_does_not():
    trajectories = [
        _trajectory("q1", "high", outcome=True),
        _trajectory("q1", "middle", outcome=True),
        _trajectory("q1", "low", outcome=False),
    ]
    scores = [[0.9, 0.9], [0.6, 0.6], [0.1, 0.1]]
    pairs = build_pairs(trajectories, scores, margin=0.0, max_pairs_per_question=4, min_chosen_reward=0.7)
    assert sorted(_names(pairs)) == [("high", "low"), ("high", "middle")]
    everything = build_pairs(trajectories, scores, margin=0.0, max_pairs_per_question=4)
    assert ("middle", "low") in _names(everything)
    with pytest.raises(ValueError, match="min_chosen_reward"):
        build_pairs(trajectories, scores, min_chosen_reward=1.2)
