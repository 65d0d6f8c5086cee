"""A round's rows by pairs.source: the oracle's pairs, the least reward of a trained right answer."""

from __future__ import annotations

import re

import pytest

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.tasks.mbpp import MBPPTask
from sapo.data.trajectory import Trajectory
from sapo.evolution.pair_sources import check_pair_source, round_pairs
from sapo.evolution.settings import PairSettings
from sapo.supervision import OracleScorer


def _bump(step: str) -> str:
    """The step with its last number (the result) one higher: a wrong step."""
    numbers = list(re.finditer(r"\d+", step))
    last = numbers[-1]
    return f"{step[: last.start()]}{int(last.group()) + 1}{step[last.end() :]}"


@pytest.fixture(scope="module")
def round_samples() -> tuple[ArithmeticTask, list[Trajectory]]:
    """Per question: the gold solution; the same with the first step's result wrong and the answer right
    (a right answer through a wrong step); and one with a wrong answer."""
    task = ArithmeticTask(num_questions=6, seed=4, min_steps=3, max_steps=4)
    samples = []
    for q in task.load():
        steps = task.split_steps(q.solution)
        flawed = [_bump(steps[0]), *steps[1:]]
        wrong = [*steps[:-1], f"The answer is {int(q.answer) + 1}."]
        for kind, written in (("clean", steps), ("flawed", flawed), ("wrong", wrong)):
            samples.append(task.trajectory(q, task.completion_text(written), kind=kind))
    kinds = [(s.meta["kind"], s.outcome) for s in samples]
    assert kinds == [("clean", True), ("flawed", True), ("wrong", False)] * 6
    return task, samples


def _kind(samples: list[Trajectory], question_id: str, steps: list[str]) -> str:
    return next(s.meta["kind"] for s in samples if s.question_id == question_id and s.steps == steps)


def test_the_oracle_source_trains_only_right_answers_whose_every_step_is_right(round_samples):
    task, samples = round_samples
    scorer = OracleScorer(task)
    rewards = {s.meta["kind"]: sum(v) / len(v) for s in samples[:3] for v in [scorer.score_one(s)]}
    assert rewards["clean"] == 1.0 and rewards["flawed"] < 1.0  # the flawed answer's first step is wrong

    def rows(least: float) -> list:
        settings = PairSettings(
            source="oracle",
            margin=0.0,
            max_per_question=2,
            min_chosen_reward=least,
            add_unpaired_correct=True,
        )
        return round_pairs(settings, samples, lambda: scorer.score(samples), None, task.dedup_key)

    strict = rows(1.0)
    assert {_kind(samples, p.question_id, p.chosen) for p in strict} == {"clean"}
    assert all(p.rejected is not None for p in strict)  # every clean answer is a pair's chosen side
    assert sorted(_kind(samples, p.question_id, p.rejected) for p in strict) == ["flawed"] * 6 + ["wrong"] * 6
    # with no least reward, the flawed right answers train too: as unpaired SFT rows
    loose = rows(0.0)
    unpaired = [p for p in loose if p.rejected is None]
    assert [_kind(samples, p.question_id, p.chosen) for p in unpaired] == ["flawed"] * 6


def test_sources_without_scores_never_ask_for_them(round_samples):
    task, samples = round_samples

    def refuse() -> list[list[float]]:
        raise AssertionError("scores asked for")

    rft = round_pairs(PairSettings(source="rft"), samples, refuse, None, task.dedup_key)
    assert len(rft) == 12 and all(p.rejected is None for p in rft)  # right answers, flawed ones too
    outcome = round_pairs(PairSettings(source="outcome"), samples, refuse, None, task.dedup_key)
    assert {_kind(samples, p.question_id, p.rejected) for p in outcome if p.rejected} == {"wrong"}


def test_the_oracle_source_needs_a_task_with_an_oracle():
    check_pair_source(PairSettings(source="oracle"), ArithmeticTask(num_questions=2))
    check_pair_source(PairSettings(source="verifier"), MBPPTask())
    with pytest.raises(ValueError, match=r"model\.init_args\.pairs\.source.*'mbpp' has none"):
        check_pair_source(PairSettings(source="oracle"), MBPPTask())


@pytest.mark.parametrize("least", [-0.1, 1.5])
def test_a_least_reward_outside_zero_to_one_is_refused(least):
    with pytest.raises(ValueError, match=r"model\.init_args\.pairs\.min_chosen_reward"):
        PairSettings(min_chosen_reward=least)


def test_rejected_sides_carry_the_oracles_first_error(round_samples):
    task, samples = round_samples
    scorer = OracleScorer(task)
    settings = PairSettings(source="oracle", margin=0.0, max_per_question=2, rejected_from_first_error=True)
    pairs = round_pairs(settings, samples, lambda: scorer.score(samples), None, task.dedup_key)
    marked = {_kind(samples, p.question_id, p.rejected): set() for p in pairs}
    for p in pairs:
        marked[_kind(samples, p.question_id, p.rejected)].add((p.rejected_first_error, len(p.rejected) - 1))
    # a flawed answer's first step is wrong (the whole side); a wrong answer's last step (the answer alone)
    assert {first for first, _ in marked["flawed"]} == {0}
    assert all(first == last for first, last in marked["wrong"])
    plain = round_pairs(
        PairSettings(source="oracle", margin=0.0, max_per_question=2),
        samples,
        lambda: scorer.score(samples),
        None,
        task.dedup_key,
    )
    assert [p.rejected for p in plain] == [p.rejected for p in pairs]
    assert {p.rejected_first_error for p in plain} == {None}


@pytest.mark.parametrize("source", ["outcome", "rft", "gold"])
def test_a_first_error_needs_step_scores(source):
    with pytest.raises(ValueError, match=r"model\.init_args\.pairs\.rejected_from_first_error.*" + source):
        PairSettings(source=source, rejected_from_first_error=True)


def test_the_first_error_is_the_first_step_under_the_threshold():
    task = ArithmeticTask(num_questions=1, seed=4, min_steps=3, max_steps=3)
    question = task.load()[0]
    steps = task.split_steps(question.solution)
    right = task.trajectory(question, task.completion_text(steps))
    wrong = task.trajectory(
        question, task.completion_text([*steps[:-1], f"The answer is {int(question.answer) + 1}."])
    )
    scores = [[0.95] * right.num_steps, [0.8, 0.4] + [0.1] * (wrong.num_steps - 2)]
    settings = PairSettings(margin=0.0, max_per_question=1, rejected_from_first_error=True)

    def first_error(threshold: float) -> int | None:
        (pair,) = round_pairs(settings, [right, wrong], lambda: scores, None, task.dedup_key, threshold)
        return pair.rejected_first_error

    assert [first_error(t) for t in (0.5, 0.3, 0.9, 0.05)] == [1, 2, 0, None]  # 0.05: no step under it
