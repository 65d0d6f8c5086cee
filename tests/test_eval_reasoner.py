"""Reasoner evaluation: files written, every number recomputable from the items file.

Two reasoners: the tiny random Llama (real generation end to end), and the same Llama whose logits are
overwritten so that it writes a chosen text for each sample of each question (known answers: right, wrong,
right only by the strict or only by the flexible rule, a passing or a failing program).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import WrittenReasoner

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.tasks.base import Question, Task
from sapo.data.tasks.gsm8k import GSM8KTask
from sapo.data.tasks.mbpp import MBPPTask
from sapo.eval.pass_at_k import mean_pass_at_k
from sapo.eval.reasoner import evaluate_reasoner
from sapo.eval.runners import ReasonerEvaluation


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model is faster on one thread, above all on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def written_reasoner(tiny_model_and_tokenizer, plans):
    """A reasoner that writes ``plans[question text][j]`` as the ``j``-th sample of that question."""
    model, tokenizer = tiny_model_and_tokenizer
    reasoner = WrittenReasoner(model.config)
    reasoner.generation_config = model.generation_config

    def plan(prompt_text):
        found = [plan for question, plan in plans.items() if question in prompt_text]
        assert len(found) == 1, "every prompt shows one planned question"
        return found[0]

    return reasoner.eval().setup(tokenizer, plan), tokenizer


def math_completion(kind, question):
    """A completion of ``kind`` for a math question with a gold solution and answer."""
    answer = question.answer
    return {
        "right": question.solution,
        "wrong": f"1 + 1 = 2\nThe answer is {int(answer) + 1}.\n",
        "flexible_only": f"So the total is {answer}\n",  # no answer statement: only the last number is right
        "strict_only": f"The answer is {answer}. Check: 0.5 apples.\n",  # the last number is wrong
    }[kind]


def read_items(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_accuracy_and_pass_at_k_are_the_items_files_numbers(tmp_path, tiny_model_and_tokenizer):
    task = ArithmeticTask(split="test", num_questions=4, seed=5, min_steps=2, max_steps=3)
    questions = task.load()
    kinds = [
        ["wrong", "wrong", "wrong", "wrong"],  # 0 right
        ["wrong", "flexible_only", "wrong", "wrong"],  # 1 right
        ["right", "strict_only", "right", "wrong"],  # 3 right
        ["right", "right", "right", "right"],  # 4 right
    ]
    plans = {q.question: [math_completion(k, q) for k in ks] for q, ks in zip(questions, kinds, strict=True)}
    model, tokenizer = written_reasoner(tiny_model_and_tokenizer, plans)
    result = evaluate_reasoner(
        model,
        tokenizer,
        task,
        num_samples=4,
        temperature=1.0,
        ks=(1, 2, 4),
        max_new_tokens=64,
        out_dir=tmp_path,
    )
    items = read_items(tmp_path / "arithmetic_items.jsonl")
    assert [item["question_id"] for item in items] == [q.id for q in questions]
    assert [item["samples"] for item in items] == [plans[q.question] for q in questions]
    assert [item["correct"] for item in items] == [[k != "wrong" for k in ks] for ks in kinds]
    assert [item["num_correct"] for item in items] == [0, 1, 3, 4]
    assert items[2]["answers"] == [questions[2].answer] * 3 + [str(int(questions[2].answer) + 1)]
    flags = [flag for item in items for flag in item["correct"]]
    assert result.accuracy == sum(flags) / len(flags) == 0.5
    # pass@2 = mean of 1 − C(4 − c, 2)/6 over c = 0, 1, 3, 4 = (0 + 1/2 + 1 + 1)/4; pass@4 = 3/4
    assert result.pass_at_k == pytest.approx({1: 0.5, 2: 0.625, 4: 0.75})
    assert result.pass_at_k == pytest.approx(
        mean_pass_at_k(4, [item["num_correct"] for item in items], (1, 2, 4))
    )
    # strict: "flexible_only" is wrong; flexible: "strict_only" is wrong (its last number is 0.5)
    assert items[1]["strict_correct"] == [False] * 4 and items[1]["flexible_correct"] == [
        False,
        True,
        False,
        False,
    ]
    assert items[2]["strict_correct"] == [True, True, True, False]
    assert items[2]["flexible_correct"] == [True, False, True, False]
    assert result.strict_accuracy == 7 / 16 and result.flexible_accuracy == 7 / 16
    summary = json.loads((tmp_path / "arithmetic_summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary()))
    assert (
        summary["pass_at_k"]["2"] == pytest.approx(0.625)
        and summary["items_path"] == "arithmetic_items.jsonl"
    )
    assert summary["settings"]["temperature"] == 1.0 and summary["num_samples"] == 4
    assert sum(summary["finish_reasons"].values()) == 16


def test_gsm8k_reports_strict_and_flexible_accuracy(tmp_path, tiny_model_and_tokenizer):
    source = tmp_path / "test.jsonl"
    rows = [
        {
            "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
            "answer": "3+4=<<3+4=7>>7\n#### 7",
        },
        {
            "question": "A box holds 6 eggs. How many eggs are in 2 boxes?",
            "answer": "6*2=<<6*2=12>>12\n#### 12",
        },
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = GSM8KTask(source=str(source))
    first, second = task.load()
    plans = {
        first.question: [math_completion("flexible_only", first), math_completion("strict_only", first)],
        second.question: [math_completion("right", second), math_completion("wrong", second)],
    }
    model, tokenizer = written_reasoner(tiny_model_and_tokenizer, plans)
    result = evaluate_reasoner(
        model, tokenizer, task, num_samples=2, temperature=1.0, ks=(1, 2), out_dir=tmp_path
    )
    assert result.accuracy == 0.75  # both samples of the first question are right by the outcome's rule
    assert result.strict_accuracy == 0.5 and result.flexible_accuracy == 0.5
    assert result.pass_at_k == {1: 0.75, 2: 1.0}
    items = read_items(tmp_path / "gsm8k_items.jsonl")
    assert items[0]["strict_answers"] == [None, "7"] and items[0]["flexible_answers"] == ["7", "0.5"]


def test_code_tasks_are_checked_in_the_sandbox(tmp_path, tiny_model_and_tokenizer):
    source = tmp_path / "mbpp.jsonl"
    rows = [
        {"task_id": 601, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
         "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": "", "challenge_test_list": []},
        {"task_id": 602, "text": "Write a function to double a number.", "code": "def double(x):\n    return 2 * x",
         "test_list": ["assert double(2) == 4"], "test_setup_code": "", "challenge_test_list": []},
    ]  # fmt: skip
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = MBPPTask(source=str(source), split="train", timeout=20.0)
    add, double = task.load()
    plans = {
        add.question: ["```python\ndef add(a, b):\n    return a + b\n```\n"],
        double.question: ["```python\ndef double(x):\n    return x + 1\n```\n"],  # double(2) == 3: fails
    }
    model, tokenizer = written_reasoner(tiny_model_and_tokenizer, plans)
    result = evaluate_reasoner(model, tokenizer, task, max_new_tokens=64, out_dir=tmp_path)
    items = read_items(tmp_path / "mbpp_items.jsonl")
    assert [item["correct"] for item in items] == [[True], [False]]
    assert result.accuracy == result.pass_at_k[1] == 0.5
    assert result.strict_accuracy is None and result.flexible_accuracy is None
    assert items[0]["checks"][0]["kind"] == "passed" and items[1]["checks"][0]["kind"] != "passed"
    assert items[0]["answers"] == ["def add(a, b):\n    return a + b\n"]


class WordTask(Task):
    """A toy task: the answer is a completion's last word. Without :meth:`answer_forms` it is a plain task."""

    name = "words"

    def __init__(self, questions=()):
        super().__init__()
        self.questions = list(questions)

    def load(self):
        return list(self.questions)

    def extract_answer(self, completion):
        words = completion.split()
        return words[-1] if words else None

    def is_correct(self, answer, question):
        return answer == question.answer


class TwoFormWordTask(WordTask):
    """The toy task with two more readings of the answer: the first word, and the last word upper-cased."""

    def answer_forms(self, completion):
        words = completion.split()
        return {"first": words[0] if words else None, "shout": words[-1].upper() if words else None}


def test_answer_forms_of_a_math_task_and_of_a_plain_task():
    task = ArithmeticTask(split="test", num_questions=1)
    assert task.answer_forms("3 + 4 = 7\nThe answer is 7.\n") == {"strict": "7", "flexible": "7"}
    assert task.answer_forms("So the total is 12\n") == {"strict": None, "flexible": "12"}
    assert task.answer_forms("The answer is 5. Check: 0.5 apples.\n") == {"strict": "5", "flexible": "0.5"}
    assert task.answer_forms("no number here") == {"strict": None, "flexible": None}
    assert WordTask().answer_forms("a b c") == {}  # the protocol's default: no other reading


def test_evaluation_reports_one_accuracy_per_answer_form(tmp_path, tiny_model_and_tokenizer):
    one = Question(id="words/0", question="Say the letter after a.", answer="b")
    two = Question(id="words/1", question="Say the capital C.", answer="C")
    task = TwoFormWordTask([one, two])
    plans = {one.question: ["b x b", "a b"], two.question: ["c c", "x C"]}
    model, tokenizer = written_reasoner(tiny_model_and_tokenizer, plans)
    result = evaluate_reasoner(
        model, tokenizer, task, num_samples=2, temperature=1.0, ks=(1,), max_new_tokens=16, out_dir=tmp_path
    )
    items = read_items(tmp_path / "words_items.jsonl")
    assert [item["correct"] for item in items] == [[True, True], [False, True]]  # the last word
    assert [item["first_answers"] for item in items] == [["b", "a"], ["c", "x"]]
    assert [item["first_correct"] for item in items] == [[True, False], [False, False]]
    assert [item["shout_answers"] for item in items] == [["B", "B"], ["C", "C"]]
    assert [item["shout_correct"] for item in items] == [[False, False], [True, True]]
    assert result.accuracy == 3 / 4
    assert result.form_accuracy == {"first": 1 / 4, "shout": 2 / 4}
    assert result.strict_accuracy is None and result.flexible_accuracy is None
    summary = json.loads((tmp_path / "words_summary.json").read_text())
    assert summary["answer_forms"] == ["first", "shout"]
    assert summary["first_accuracy"] == 1 / 4 and summary["shout_accuracy"] == 2 / 4
    assert "strict_accuracy" not in summary
    metrics = ReasonerEvaluation(task, out_dir=str(tmp_path)).metrics(summary)
    assert metrics == {
        "words/accuracy": 0.75,
        "words/num_questions": 2.0,
        "words/pass@1": 0.75,
        "words/first_accuracy": 0.25,
        "words/shout_accuracy": 0.5,
    }


def test_answer_forms_must_name_the_same_forms_every_time(tiny_model_and_tokenizer):
    class Fickle(WordTask):
        def answer_forms(self, completion):
            return {"first": completion.split()[0]} if completion.startswith("a") else {}

    question = Question(id="words/0", question="Say a letter.", answer="b")
    model, tokenizer = written_reasoner(tiny_model_and_tokenizer, {question.question: ["a b", "b"]})
    with pytest.raises(ValueError, match="same names"):
        evaluate_reasoner(
            model, tokenizer, Fickle([question]), num_samples=2, temperature=1.0, max_new_tokens=8
        )


def test_tiny_random_model_end_to_end(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    task = ArithmeticTask(split="test", num_questions=3, seed=1, max_steps=3)
    greedy = evaluate_reasoner(
        model, tokenizer, task, max_new_tokens=12, batch_size=2, out_dir=tmp_path / "greedy"
    )
    items = read_items(tmp_path / "greedy" / "arithmetic_items.jsonl")
    assert len(items) == 3 and all(len(item["samples"]) == 1 for item in items)
    flags = [flag for item in items for flag in item["correct"]]
    assert greedy.accuracy == sum(flags) / len(flags) and greedy.pass_at_k[1] == greedy.accuracy
    assert greedy.generated_tokens == sum(n for item in items for n in item["generated_tokens"])
    assert all(0 < n <= 12 for item in items for n in item["generated_tokens"])
    assert (tmp_path / "greedy" / "arithmetic_summary.json").is_file()

    def sampled(folder):
        return evaluate_reasoner(
            model,
            tokenizer,
            task,
            num_samples=3,
            temperature=1.0,
            ks=(1, 3),
            max_new_tokens=12,
            seed=7,
            out_dir=folder,
        )

    first, again = sampled(tmp_path / "a"), sampled(tmp_path / "b")
    items = read_items(tmp_path / "a" / "arithmetic_items.jsonl")
    assert items == read_items(tmp_path / "b" / "arithmetic_items.jsonl")  # the seed fixes the samples
    assert len({s for item in items for s in item["samples"]}) > 3  # sampled, not greedy
    counts = [item["num_correct"] for item in items]
    assert first.pass_at_k == again.pass_at_k == pytest.approx(mean_pass_at_k(3, counts, (1, 3)))
    flags = [flag for item in items for flag in item["correct"]]
    assert first.accuracy == sum(flags) / len(flags)


def test_pass_at_k_needs_enough_samples(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    task = ArithmeticTask(split="test", num_questions=1)
    with pytest.raises(ValueError, match="1 <= k <= num_samples"):
        evaluate_reasoner(model, tokenizer, task, num_samples=2, temperature=1.0, ks=(1, 4))
