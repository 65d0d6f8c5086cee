"""MBPP and HumanEval tasks: split boundaries, prompts, code extraction, steps, invalid rows, and checking
through the sandbox (reference solutions pass, wrong programs fail, a batch is one call)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from sapo.data.tasks.humaneval import HumanEvalTask, humaneval_program, inline_check
from sapo.data.tasks.loading import InvalidRowError
from sapo.data.tasks.mbpp import MBPP_SPLITS, MBPPTask, extract_code
from sapo.data.trajectory import Trajectory

MBPP_FILE = str(SHARED_DATA / "mbpp" / "mbpp.jsonl")
HUMANEVAL_FILE = str(SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz")
pytestmark = pytest.mark.skipif(not Path(MBPP_FILE).is_file(), reason="the MBPP data file is not here")


@pytest.fixture(scope="module")
def mbpp_test() -> MBPPTask:
    return MBPPTask(source=MBPP_FILE, split="test", timeout=10.0)


@pytest.mark.parametrize(
    ("split", "count", "first", "last"),
    [("prompt", 10, 1, 10), ("test", 500, 11, 510), ("validation", 90, 511, 600), ("train", 374, 601, 974)],
)
def test_split_boundaries(split, count, first, last):
    questions = MBPPTask(source=MBPP_FILE, split=split).load()
    assert len(questions) == count
    assert questions[0].id == f"mbpp/{first}" and questions[-1].id == f"mbpp/{last}"
    assert all(first <= q.meta["task_id"] <= last for q in questions)


def test_slices_and_unknown_split():
    questions = MBPPTask(source=MBPP_FILE, split="train", start=2, stop=5).load()
    assert [q.id for q in questions] == ["mbpp/603", "mbpp/604", "mbpp/605"]
    with pytest.raises(ValueError, match="split"):
        MBPPTask(source=MBPP_FILE, split="dev")


def test_question_and_prompt_follow_the_paper(mbpp_test):
    question = mbpp_test.load()[0]
    assert question.id == "mbpp/11" and len(question.tests) == 3
    prompt = mbpp_test.prompt(question)
    assert prompt.startswith(
        "You are an expert Python programmer, and here is your task: Write a python function"
    )
    assert "Your code should pass these tests:\n\nassert remove_Occ(" in prompt
    assert question.solution and "def remove_Occ" in question.solution


def test_reference_solutions_pass_in_the_sandbox(mbpp_test):
    wanted = {"mbpp/11", "mbpp/17", "mbpp/250", "mbpp/367", "mbpp/500"}  # 367 needs test_setup_code
    questions = {q.id: q for q in mbpp_test.load() if q.id in wanted}
    golds = [mbpp_test.gold_trajectory(q) for q in questions.values()]
    for gold in golds:
        gold.outcome = None
    mbpp_test.check(golds, questions)
    assert [(g.question_id, g.outcome) for g in golds] == [(g.question_id, True) for g in golds], [
        g.meta["check"] for g in golds
    ]
    assert all(g.final_answer and "def " in g.final_answer for g in golds)


def test_check_runs_a_batch_in_one_call_and_records_verdicts(mbpp_test, monkeypatch):
    question = mbpp_test.load()[0]
    completions = [
        f"Here is my solution:\n```python\n{question.solution}```\nIt removes the characters.",
        "```python\ndef remove_Occ(s, ch):\n    return s\n```",
        "```python\n```",
        "I do not know.",
    ]
    trajectories = [
        Trajectory(question_id=question.id, question=question.question, steps=mbpp_test.split_steps(c))
        for c in completions
    ]
    calls = []
    original = mbpp_test.sandbox.run_many
    monkeypatch.setattr(mbpp_test.sandbox, "run_many", lambda jobs: calls.append(len(jobs)) or original(jobs))
    mbpp_test.check(trajectories, {question.id: question})
    assert calls == [3]  # the completion without code fails without running anything
    assert [t.outcome for t in trajectories] == [True, False, False, False]
    assert [t.meta["check"]["kind"] for t in trajectories] == ["passed", "assertion", "no_code", "syntax"]


def test_steps_are_the_programs_nonempty_lines(mbpp_test):
    completion = (
        "Sure!\n```python\nimport re\n\ndef f(x):\n\tif x:\n\t\treturn 1  \n    \n\treturn 2\n```\nDone."
    )
    steps = mbpp_test.split_steps(completion)
    assert steps == ["import re", "def f(x):", "\tif x:", "\t\treturn 1", "\treturn 2"]
    assert mbpp_test.completion_text(steps) == "import re\ndef f(x):\n\tif x:\n\t\treturn 1\n\treturn 2\n"
    assert mbpp_test.extract_answer(mbpp_test.completion_text(steps)) == mbpp_test.completion_text(steps)


def test_gold_trajectory_is_the_reference_program(mbpp_test):
    question = mbpp_test.load()[0]
    gold = mbpp_test.gold_trajectory(question)
    assert gold.outcome is True and gold.labels == [1.0] * len(gold.steps)
    assert gold.final_answer == question.solution


@pytest.mark.parametrize(
    ("completion", "code"),
    [
        ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
        ("Here you go:\n\n```py\nx = 1\n```\n\n```python\ny = 2\n```", "x = 1\n"),
        ("```text\nnot code\n```\n```\nz = 3\n```", "z = 3\n"),
        ("```python\ndef f():\n    return 1", "def f():\n    return 1\n"),  # cut by the token limit
        ("def f():\n    return 1\n```\nThat is all.", "def f():\n    return 1\n"),  # the prompt opened it
        ("[BEGIN]\ndef f():\n    return 1\n[DONE]\nmore", "def f():\n    return 1\n"),
        ("\n\n    return x + 1\n", "    return x + 1\n"),  # a HumanEval body keeps its indentation
        ("def f():\n    return 1\n", "def f():\n    return 1\n"),
        ("", None),
        ("```python\n\n```", None),
    ],
)
def test_extract_code(completion, code):
    assert extract_code(completion) == code


def _write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _row(task_id: int, **changes) -> dict:
    row = {
        "task_id": task_id,
        "text": "Write a function that returns one.",
        "code": "def one():\n    return 1",
        "test_list": ["assert one() == 1"],
        "test_setup_code": "",
        "challenge_test_list": [],
    }
    row.update(changes)
    return row


def test_row_without_tests_is_invalid_and_named(tmp_path):
    source = _write_rows(tmp_path / "mbpp.jsonl", [_row(601), _row(602, test_list=[]), _row(603)])
    with pytest.raises(InvalidRowError) as caught:
        MBPPTask(source=source, split="train").load()
    message = str(caught.value)
    assert "mbpp.jsonl, line 2" in message and "'test_list'" in message
    task = MBPPTask(source=source, split="train", skip_invalid=True)
    assert [q.id for q in task.load()] == ["mbpp/601", "mbpp/603"]
    assert len(task.skipped) == 1 and "line 2" in task.skipped.reasons[0]


def test_missing_tests_field_is_invalid(tmp_path):
    row = _row(601)
    del row["test_list"]
    source = _write_rows(tmp_path / "mbpp.jsonl", [row])
    with pytest.raises(InvalidRowError, match="line 1: field 'test_list' is missing"):
        MBPPTask(source=source, split="train").load()


def test_rows_outside_the_split_are_not_validated(tmp_path):
    source = _write_rows(tmp_path / "mbpp.jsonl", [_row(5, test_list=[]), _row(700)])
    assert [q.id for q in MBPPTask(source=source, split="train").load()] == ["mbpp/700"]


def test_split_names_match_the_readme():
    assert MBPP_SPLITS == {
        "prompt": (1, 10),
        "test": (11, 510),
        "validation": (511, 600),
        "train": (601, 974),
    }


# --- HumanEval ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def humaneval() -> HumanEvalTask:
    return HumanEvalTask(source=HUMANEVAL_FILE, timeout=10.0)


def test_humaneval_loads_and_canonical_solutions_pass(humaneval):
    questions = humaneval.load()
    assert len(questions) == 164 and questions[0].id == "humaneval/0"
    chosen = {q.id: q for q in questions[:4]}
    golds = [humaneval.gold_trajectory(q) for q in chosen.values()]
    humaneval.check(golds, chosen)
    assert all(g.outcome for g in golds), [g.meta["check"] for g in golds]


def test_humaneval_accepts_a_body_or_a_whole_function(humaneval):
    question = humaneval.load()[2]  # truncate_number(number: float) -> float
    assert question.meta["entry_point"] == "truncate_number"
    body = "    return number % 1.0\n"
    whole = "Here:\n```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n```"
    wrong = "    return number\n"
    outcomes = [humaneval.is_correct(humaneval.extract_answer(c), question) for c in (body, whole, wrong)]
    assert outcomes == [True, True, False]


def test_humaneval_program_joins_prompt_and_completion():
    prompt = "def f(x):\n    '''Doc.'''\n"
    assert humaneval_program(prompt, "    return x\n", "f") == prompt + "    return x\n"
    assert humaneval_program(prompt, "def f(x):\n    return x\n", "f").endswith(
        "\n\ndef f(x):\n    return x\n"
    )


def test_humaneval_chat_message_shows_the_code(humaneval):
    question = humaneval.load()[0]
    message = humaneval.user_message(question)
    assert message.startswith(humaneval.instruction) and "```python\nfrom typing import List" in message
    assert humaneval.prompt(question) == question.question  # without a chat template: the code itself


def test_trajectory_from_a_completion(mbpp_test):
    question = mbpp_test.load()[0]
    trajectory = mbpp_test.trajectory(question, f"```python\n{question.solution}```")
    assert isinstance(trajectory, Trajectory) and trajectory.outcome is True
    assert trajectory.steps == question.solution.splitlines()


def test_humaneval_checks_of_asserts_are_inlined_for_the_parent_to_decide(humaneval):
    questions = humaneval.load()
    question = questions[0]  # has_close_elements: check is only asserts
    program, tests, setup = humaneval.job(humaneval.extract_answer(question.solution), question)
    assert setup is None and len(tests) > 1 and all(t.startswith("assert") for t in tests)
    assert "candidate" not in " ".join(tests) and "has_close_elements(" in tests[0]
    result = humaneval.sandbox.run(program, tests, setup)
    assert result.passed and result.verdict == "parent", result
    wrong = humaneval.sandbox.run(*humaneval.job("    return True\n", question))
    assert not wrong.passed and wrong.verdict == "parent"
    gold = humaneval.gold_trajectory(question)
    humaneval.check([gold], {question.id: question})
    assert gold.outcome and gold.meta["check"]["verdict"] == "parent"
    looped = "def check(candidate):\n    for x in range(3):\n        assert candidate(x) == x\n"
    assert inline_check(looped, "f") is None
    assert inline_check("import math\ndef check(candidate):\n    assert candidate(1)\n", "f") is None
    assert inline_check("METADATA = {}\ndef check(candidate):\n    assert candidate(1) == 2\n", "g") == [
        "assert g(1) == 2"
    ]
