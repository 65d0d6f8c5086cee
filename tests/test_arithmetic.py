"""The synthetic arithmetic task and the exact equation step oracle."""

from __future__ import annotations

import random
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sapo.data.tasks.arithmetic import SCENARIOS, ArithmeticTask, generate_problem
from sapo.data.tasks.base import Question, Task
from sapo.data.tasks.math import GoldComputation, find_equations, judge_steps
from sapo.data.trajectory import Trajectory


@pytest.fixture(scope="module")
def task() -> ArithmeticTask:
    return ArithmeticTask(split="train", num_questions=300, seed=3, min_steps=2, max_steps=6)


@pytest.fixture(scope="module")
def questions(task) -> list[Question]:
    return task.load()


def steps_of(question: Question) -> list[str]:
    return question.solution.strip().split("\n")


def judge(task: ArithmeticTask, question: Question, steps: list[str]):
    return task.judge(steps, question)


# --- the generator ------------------------------------------------------------------------------------------------


def test_questions_are_deterministic_and_seeded():
    a = ArithmeticTask(num_questions=20, seed=1).load()
    b = ArithmeticTask(num_questions=20, seed=1).load()
    c = ArithmeticTask(num_questions=20, seed=2).load()
    assert [q.question for q in a] == [q.question for q in b]
    assert [q.question for q in a] != [q.question for q in c]
    later = ArithmeticTask(
        num_questions=5, seed=1, start=15
    ).load()  # a question does not depend on the others
    assert [q.question for q in later] == [q.question for q in a[15:]]
    assert [q.id for q in later] == [f"arithmetic/train/seed1/{i}" for i in range(15, 20)]


def test_splits_are_disjoint():
    train = {q.question for q in ArithmeticTask(split="train", num_questions=2000).load()}
    validation = {q.question for q in ArithmeticTask(split="validation", num_questions=1000).load()}
    test = {q.question for q in ArithmeticTask(split="test", num_questions=1000).load()}
    assert len(train) == 2000  # no duplicates within a split either
    assert not train & test and not train & validation and not validation & test


def test_problems_respect_their_settings(questions):
    for q in questions:
        equations = q.meta["gold_equations"]
        assert 2 <= len(equations) <= 6
        values = [int(v) for v in q.meta["gold_values"]]
        assert all(1 <= v <= 1000 for v in values) and q.answer == str(values[-1])
        for equation in equations:  # every step is a true whole-number equation
            a, op, b, _, c = equation.split()
            assert eval(f"{a} {op} {b}") == int(c)  # noqa: S307 - our own generated digits
        assert steps_of(q)[-1] == f"The answer is {q.answer}."
        assert not re.search(r"\{\w+\}", q.question), q.question  # every placeholder was filled


def test_questions_read_differently(questions):
    openings = {q.question.split(".")[0].split(" ", 1)[1] for q in questions}
    assert len(SCENARIOS) >= 12
    used = {s.items for s in SCENARIOS if any(s.items in q.question for q in questions)}
    assert len(used) >= 12 and len(openings) >= 100


def test_generator_settings_are_checked():
    with pytest.raises(ValueError):
        ArithmeticTask(min_steps=4, max_steps=3)
    with pytest.raises(ValueError):
        ArithmeticTask(split="dev")
    with pytest.raises(ValueError):
        ArithmeticTask(num_questions=2_000_000)
    problem = generate_problem(random.Random(0), min_steps=1, max_steps=1, max_value=100)
    assert len(problem.steps) == 1


def test_constructible_by_class_path_through_jsonargparse():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_subclass_arguments(Task, "task")
    config = parser.parse_object(
        {
            "task": {
                "class_path": "sapo.data.tasks.arithmetic.ArithmeticTask",
                "init_args": {"num_questions": 3},
            }
        }
    )
    built = (getattr(parser, "instantiate", None) or parser.instantiate_classes)(config).task
    assert isinstance(built, ArithmeticTask) and len(built.load()) == 3


# --- prompts ------------------------------------------------------------------------------------------------------


class ChatTokenizer:
    chat_template = "yes"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def test_fewshot_prompts_plain_and_chat(questions):
    task = ArithmeticTask(num_questions=3, num_fewshot=2)
    question = task.load()[0]
    plain = task.prompt(question)
    assert plain.count("Question:") == 3 and plain.endswith(f"Question: {question.question}\nAnswer:\n")
    assert plain.count("The answer is") == 2
    chat = task.prompt(question, ChatTokenizer())
    assert chat.count("<user>") == 3 and chat.count("<assistant>") == 3
    assert chat.endswith(f"{question.question}</user><assistant>")
    assert ArithmeticTask(num_questions=1).prompt(question) == f"Question: {question.question}\nAnswer:\n"


# --- the oracle on gold and corrupted solutions ---------------------------------------------------------------------


def test_every_gold_solution_is_all_correct(task, questions):
    for q in questions:
        result = judge(task, q, steps_of(q))
        assert result.all_correct, (q.question, q.solution, result.verdicts)
        assert task.oracle_labels(task.gold_trajectory(q), q) == [1.0] * len(steps_of(q))


@pytest.mark.parametrize("seed", [0, 7])
def test_gold_solutions_of_long_problems(seed):
    task = ArithmeticTask(num_questions=100, seed=seed, min_steps=6, max_steps=10, max_value=5000)
    for q in task.load():
        assert judge(task, q, steps_of(q)).all_correct


def corrupt_result(step: str) -> str:
    lhs, rhs = step.split(" = ")
    return f"{lhs} = {int(rhs) + 1}"


def test_a_wrong_result_is_caught_at_its_step(task, questions):
    for q in questions[:60]:
        steps = steps_of(q)
        for k in range(len(steps) - 1):
            bad = steps[:k] + [corrupt_result(steps[k])] + steps[k + 1 :]
            result = judge(task, q, bad)
            assert result.first_error == k, (bad, result.verdicts)
            assert result.prefix_labels() == [1.0] * k + [0.0] * (len(steps) - k)


def test_a_wrong_operand_is_caught_at_its_step(task, questions):
    for q in questions[:60]:
        steps = steps_of(q)
        gold = task.gold_computation(q)
        for k in range(len(steps) - 1):
            a, op, b, _, _ = steps[k].split()
            wrong = next(v for v in range(int(b) + 1, 10_000) if Fraction(v) not in gold.given | gold.values)
            value = eval(f"{a} {op} {wrong}")  # noqa: S307 - our own digits
            if value != int(value) or value < 0:
                continue
            bad = steps[:k] + [f"{a} {op} {wrong} = {int(value)}"] + steps[k + 1 :]
            result = judge(task, q, bad)
            assert result.first_error == k, (bad, result.verdicts)
            assert any("uses" in reason for reason in result.verdicts[k].reasons)


def test_a_skipped_step_is_caught_where_its_value_is_needed(task, questions):
    checked = 0
    for q in questions[:80]:
        steps = steps_of(q)
        for k in range(len(steps) - 2):
            result_k = steps[k].split(" = ")[1]
            if result_k not in steps[k + 1].split(" = ")[0].split():
                continue  # the next step does not use it (a group step comes first)
            earlier = {step.split(" = ")[1] for step in steps[:k]}
            if Fraction(result_k) in task.gold_computation(q).given or result_k in earlier:
                continue  # the value is known without the step, so nothing is missing
            bad = steps[:k] + steps[k + 1 :]
            result = judge(task, q, bad)
            assert result.first_error == k, (bad, result.verdicts)
            checked += 1
    assert checked > 100


def test_a_wrong_final_line_is_caught_at_the_last_step(task, questions):
    for q in questions[:60]:
        steps = steps_of(q)
        bad = steps[:-1] + [f"The answer is {int(q.answer) + 1}."]
        result = judge(task, q, bad)
        assert result.first_error == len(steps) - 1 and result.answer == str(int(q.answer) + 1)
        assert task.trajectory(q, "\n".join(bad)).outcome is False


def test_steps_after_an_error_are_judged_on_their_own(task, questions):
    q = next(q for q in questions if len(steps_of(q)) >= 4)
    steps = steps_of(q)
    bad = [corrupt_result(steps[0]), *steps[1:]]
    result = judge(task, q, bad)
    assert result.first_error == 0
    # step 1 builds on the wrong value (or on a value never computed), so it is wrong too
    assert result.step_correct[0] is False
    assert task.oracle_labels(Trajectory(q.id, q.question, bad), q) == [0.0] * len(bad)


# --- what the oracle reads ------------------------------------------------------------------------------------------


def make_gold(question: str, values: list[int], answer: int) -> GoldComputation:
    from sapo.data.tasks.math import question_numbers

    return GoldComputation(
        Fraction(answer), frozenset(Fraction(v) for v in [*values, answer]), question_numbers(question)
    )


QUESTION = (
    "Mia has 3 apples. She buys 4 more. Then she buys 1,200 grapes and gives 200 away. Each apple is doubled."
)


@pytest.mark.parametrize(
    "step",
    [
        "3 + 4 = 7",
        "3+4=7",
        "So she has 3 + 4 = 7 apples.",
        "She has 3 apples + 4 apples = 7 apples",
        "Step 1: 3 + 4 = 7.",
        "- 3 + 4 = 7",
        "(3 + 4) = 7",
        "4 + 3 = 7 apples in total",
    ],
)
def test_equations_survive_spacing_and_words(step):
    gold = make_gold(QUESTION, [7, 14, 1000], 14)
    result = judge_steps([step, "The answer is 14."], gold)
    assert result.verdicts[0].correct and result.verdicts[0].equations == 1, result.verdicts


@pytest.mark.parametrize("step", ["7 x 2 = 14", "7 * 2 = 14", "7 × 2 = 14", "7x2=14", "7 · 2 = 14"])
def test_multiplication_signs(step):
    gold = make_gold(QUESTION, [7, 14], 14)
    result = judge_steps(["3 + 4 = 7", step, "The answer is 14."], gold)
    assert result.all_correct, result.verdicts


def test_thousands_separators_and_currency():
    gold = make_gold(QUESTION, [1000], 1000)
    assert judge_steps(["1,200 - 200 = 1,000", "The answer is 1,000."], gold).all_correct
    assert judge_steps(["$1,200 - $200 = $1000.", "The answer is $1000."], gold).all_correct
    assert not judge_steps(["1,200 - 200 = 1,100", "The answer is 1000."], gold).all_correct


def test_prose_steps_are_neutral_unless_they_state_an_unknown_number():
    gold = make_gold(QUESTION, [7, 14], 14)
    thinking = judge_steps(["Let's add the apples first.", "3 + 4 = 7", "The answer is 14."], gold)
    assert thinking.verdicts[0].correct  # nothing stated, nothing wrong
    known = judge_steps(["3 + 4 = 7", "So she now has 7 apples.", "7 * 2 = 14", "The answer is 14."], gold)
    assert known.all_correct
    claim = judge_steps(["She now has 7 apples.", "7 * 2 = 14", "The answer is 14."], gold)
    assert claim.first_error == 0  # 7 stated before it is computed: a skipped computation
    wrong = judge_steps(["3 + 4 = 7", "So she has 8 apples.", "The answer is 14."], gold)
    assert wrong.first_error == 1


def test_a_true_equation_off_the_gold_computation_is_wrong():
    gold = make_gold(QUESTION, [7, 14], 14)
    result = judge_steps(["3 * 4 = 12", "The answer is 14."], gold)
    assert result.first_error == 0 and "not on the gold computation" in result.verdicts[0].reasons[0]


def test_no_final_answer_makes_the_last_step_wrong():
    gold = make_gold("Tom has two apples.", [4], 4)
    result = judge_steps(["Tom doubles his apples.", "He is happy."], gold)
    assert (
        result.answer is None and result.first_error == 1 and "no final answer" in result.verdicts[1].reasons
    )


def test_final_answer_from_the_last_number_when_not_stated():
    gold = make_gold(QUESTION, [7], 7)
    result = judge_steps(["So she has 3 + 4 = 7 apples."], gold)
    assert result.all_correct and result.answer_step == 0


def test_equations_and_numbers_found_in_a_step():
    parts = find_equations("He earns 12 * 5 = 60 dollars, and 60 - 10 = 50 remain after 3 days.")
    assert [e.expression for e in parts.equations] == ["12 * 5 = 60", "60 - 10 = 50"]
    assert [n.text for n in parts.stated] == ["3"]
    chain = find_equations("48/2 = 24 + 48 = 72").equations
    assert [e.expression for e in chain] == ["48 / 2 = 24", "24 + 48 = 72"]
    algebra = find_equations("So 2x + 3 = 11 and x = 4")
    assert not algebra.equations and [n.text for n in algebra.algebra] == ["3", "11", "4"]


# --- fuzzing --------------------------------------------------------------------------------------------------------

MATHY = st.text(alphabet="0123456789+-*/x×=().,$%: abcdeThnswr\n", max_size=80)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=60), MATHY), max_size=6))
def test_the_oracle_never_crashes(steps):
    task = ArithmeticTask(num_questions=1, seed=5)
    question = task.load()[0]
    result = task.judge(steps, question)
    assert len(result.verdicts) == len(steps)
    labels = result.prefix_labels()
    assert labels == sorted(labels, reverse=True)  # ones, then zeros
    first = result.first_error
    assert first == -1 or (not result.step_correct[first] and all(result.step_correct[:first]))
    trajectory = task.trajectory(question, "\n".join(steps))
    if trajectory.outcome is False and trajectory.steps:
        assert task.oracle_labels(trajectory, question)[-1] == 0.0  # a wrong outcome is never all-correct


@settings(max_examples=300, deadline=None)
@given(MATHY)
def test_equation_finding_never_crashes(text):
    parts = find_equations(text)
    for equation in parts.equations:
        assert len(equation.sides) >= 2
