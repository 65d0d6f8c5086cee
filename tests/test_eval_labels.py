"""Step labels against a task's oracle: first-error accuracy, which way the disagreements go, and samples whose
outcome and steps disagree."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import benchmark_script

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.trajectory import Trajectory, prefix_labels
from sapo.eval import label_agreement


@pytest.fixture(scope="module")
def task_and_question():
    task = ArithmeticTask(split="train", num_questions=4, min_steps=3, max_steps=3)
    return task, task.load()[0]


def _labelled(task, question, first_error):
    """The gold solution with its second equation's result changed (the oracle's first error: step 1),
    labelled as if the first error were ``first_error``."""
    gold = task.gold_trajectory(question)
    steps = list(gold.steps)
    left, _ = steps[1].rsplit("=", 1)
    steps[1] = f"{left}= 99999"
    wrong = dataclasses.replace(gold, steps=steps)
    return dataclasses.replace(wrong, labels=prefix_labels(len(steps), first_error))


def test_agreement_counts_earlier_and_later_first_errors(task_and_question):
    task, question = task_and_question
    assert task.oracle_labels(_labelled(task, question, 1), question)[:2] == [1.0, 0.0]
    steps = task.gold_trajectory(question).num_steps
    trajectories = [
        _labelled(task, question, 1),  # the oracle's first error
        _labelled(task, question, 0),  # a right step labelled wrong
        _labelled(task, question, 2),  # the wrong step labelled right
        _labelled(task, question, -1),  # no error at all: later
    ]
    gold = task.gold_trajectory(question)
    trajectories.append(dataclasses.replace(gold, labels=prefix_labels(steps, 0)))  # all right, called wrong
    agreement = label_agreement(task, trajectories, {question.id: question})
    assert agreement.trajectories == 5
    assert agreement.first_error_accuracy == pytest.approx(1 / 5)
    assert (agreement.earlier, agreement.later) == (2, 2)
    # 3 equations and the answer line; oracle [1, 0, 0, 0] for the changed solution, all 1 for the gold one:
    # 4 + 3 + 3 + 1 + 0 of 20 step labels agree
    assert steps == 4
    assert agreement.step_accuracy == pytest.approx(11 / 20)


def test_agreement_needs_labels_and_an_oracle(task_and_question):
    task, question = task_and_question
    assert label_agreement(task, [], {question.id: question}) is None
    with pytest.raises(ValueError, match="trajectory 0 .* has no labels"):
        label_agreement(task, [Trajectory(question.id, question.question, ["1 + 1 = 2"])], {})


def test_samples_whose_outcome_and_steps_disagree_are_counted(task_and_question):
    script = benchmark_script("labels_vs_oracle")
    task, question = task_and_question
    gold = task.gold_trajectory(question)
    right = task.trajectory(question, "\n".join(gold.steps))
    lucky = task.trajectory(question, "\n".join(_labelled(task, question, 1).steps))  # 99999, then the answer
    wrong = task.trajectory(question, "\n".join([*gold.steps[:-1], "The answer is 99999."]))
    assert (right.outcome, lucky.outcome, wrong.outcome) == (True, True, False)
    counts = script.outcome_against_steps(task, [gold, right, lucky, wrong], {question.id: question})
    assert counts == {  # the gold solution is not a sample
        "samples": 3,
        "right": 2,
        "right_with_a_wrong_step": 1,
        "wrong": 1,
        "wrong_with_every_step_right": 0,
    }


def test_a_verifiers_rewards_of_right_answers_are_set_against_the_oracle(task_and_question):
    script = benchmark_script("labels_vs_oracle")
    task, question = task_and_question
    gold = task.gold_trajectory(question)
    right = task.trajectory(question, "\n".join(gold.steps))
    lucky = task.trajectory(question, "\n".join(_labelled(task, question, 1).steps))  # a wrong step
    questions = {question.id: question}
    ordered = script.right_answer_separation(
        task, [right, lucky], [[0.9] * right.num_steps, [0.4] * lucky.num_steps], questions
    )
    assert ordered["right"] == 2 and ordered["flawed"] == 1
    assert ordered["mean_clean"] == pytest.approx(0.9) and ordered["mean_flawed"] == pytest.approx(0.4)
    assert ordered["auroc"] == 1.0
    backwards = script.right_answer_separation(
        task, [right, lucky], [[0.2] * right.num_steps, [0.4] * lucky.num_steps], questions
    )
    assert backwards["auroc"] == 0.0
