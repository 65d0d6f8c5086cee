"""GSM8K: answer extraction, numeric equality, gold solutions, loading, bad rows and the approximate oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from sapo.data.tasks.base import Question, Task
from sapo.data.tasks.gsm8k import GSM8KTask, gold_solution, gsm8k_gold_equations
from sapo.data.tasks.loading import InvalidRowError
from sapo.data.tasks.math import answers_equal, extract_answers, extract_final_answer, parse_number

DATA = SHARED_DATA / "gsm8k"
needs_data = pytest.mark.skipif(not (DATA / "train.jsonl").is_file(), reason="GSM8K files not present")

NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


# --- answers ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("48 + 24 = 72\nThe answer is 72.", "72", "72"),
        ("So the answer is $1,250.50 in total", "1250.5", "1250.5"),
        ("#### 72", "72", "72"),
        ("so we get \\boxed{\\frac{3}{4}}", "0.75", "4"),
        ("\\boxed{18 \\text{ apples}}", "18", "18"),
        ("The answer is 5. Wait, 5 + 1 = 6. The answer is 6", "6", "6"),
        ("Final answer: -3", "-3", "-3"),
        ("So she has 3 + 4 = 7 apples.", None, "7"),
        ("I do not know.", None, None),
        ("The answer is unclear, maybe 12", None, "12"),
    ],
)
def test_strict_and_flexible_extraction(text, strict, flexible):
    found = extract_answers(text)
    assert (found.strict, found.flexible) == (strict, flexible)
    assert extract_final_answer(text) == (strict if strict is not None else flexible)


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("1,000", "1000"),
        ("$18.", "18"),
        ("7.0", "7"),
        ("18 dollars", "18"),
        ("0.5", "1/2"),
        ("50%", "50"),
        ("-$5", "-5"),
    ],
)
def test_numeric_equality_survives_formatting(answer, gold):
    assert answers_equal(answer, gold)


@pytest.mark.parametrize(
    ("answer", "gold"), [("7.01", "7"), ("1/3", "0.33"), ("seven", "7"), (None, "7"), ("17", "7")]
)
def test_numeric_equality_is_exact(answer, gold):
    assert not answers_equal(answer, gold)


def test_parse_number_rejects_text_with_numbers_after_words():
    assert parse_number("around 12") is None and parse_number("12 apples and 3 pears") is None
    assert parse_number("  $ 3,000.50 ") == parse_number("3000.5")


# --- gold solutions -------------------------------------------------------------------------------------------------


def test_gold_solution_is_plain_equations_one_step_per_line():
    reference = NATALIA["answer"].split("####")[0]
    assert gold_solution(reference, "72") == [
        "Natalia sold 48/2 = 24 clips in May.",
        "Natalia sold 48+24 = 72 clips altogether in April and May.",
        "The answer is 72.",
    ]


def test_an_annotation_without_written_equation_is_written_out():
    reference = "He has <<5*2=10>>10 apples.\nTheir child is <<15=15>>15 years old.\n"
    assert gold_solution(reference, "10")[:2] == ["He has 5*2 = 10 apples.", "Their child is 15 years old."]
    equations = [e.expression for e in gsm8k_gold_equations(reference)]
    assert "5 * 2 = 10" in equations


# --- loading ------------------------------------------------------------------------------------------------------


@needs_data
def test_local_test_file():
    task = GSM8KTask(source=str(DATA / "test.jsonl"))
    questions = task.load()
    assert len(questions) == 1319 and questions[0].id == "gsm8k/test/0"
    assert all(q.solution.rstrip().endswith(f"The answer is {q.answer}.") for q in questions)
    assert not any("<<" in q.solution or "####" in q.solution for q in questions)
    assert questions[5].meta["where"].endswith("test.jsonl, line 6")
    sliced = GSM8KTask(source=str(DATA / "test.jsonl"), start=10, stop=13).load()
    assert [q.id for q in sliced] == ["gsm8k/test/10", "gsm8k/test/11", "gsm8k/test/12"]
    assert sliced[0].question == questions[10].question


def hub_layout(root: Path, rows: dict[str, list[dict]]) -> Path:
    """A local copy of the hub's openai/gsm8k layout: README configs and main/{split}-00000-of-00001.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "main").mkdir(parents=True)
    for split, records in rows.items():
        pq.write_table(pa.Table.from_pylist(records), root / "main" / f"{split}-00000-of-00001.parquet")
    data_files = "".join(f"  - split: {split}\n    path: main/{split}-*\n" for split in rows)
    (root / "README.md").write_text(f"---\nconfigs:\n- config_name: main\n  data_files:\n{data_files}---\n")
    return root


@pytest.fixture(scope="module")
def gsm8k_folder(tmp_path_factory) -> Path:
    records = [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines()[:20]]
    return hub_layout(tmp_path_factory.mktemp("hub") / "gsm8k", {"train": records, "test": records[:5]})


@needs_data
def test_hub_layout_folder(gsm8k_folder):
    task = GSM8KTask(source=str(gsm8k_folder), split="test")
    questions = task.load()
    assert len(questions) == 5 and questions[0].id == "gsm8k/test/0" and questions[0].answer == "72"
    assert questions[0].meta["where"].endswith("main/test-00000-of-00001.parquet, row 0")


@needs_data
def test_hub_id_code_path(gsm8k_folder, monkeypatch, tmp_path):
    """A hub id is read with datasets.load_dataset(id, name, split=...); here the id resolves to the local copy."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    real_load_dataset = datasets.load_dataset
    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return real_load_dataset(
            str(gsm8k_folder) if path == "openai/gsm8k" else path, name, split=split, **kwargs
        )

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    questions = GSM8KTask(source="openai/gsm8k", split="train", start=2, stop=5).load()
    assert calls == [("openai/gsm8k", "main", "train")]
    assert [q.id for q in questions] == ["gsm8k/train/2", "gsm8k/train/3", "gsm8k/train/4"]
    assert questions[0].meta["where"] == "hub dataset openai/gsm8k (main) split train, row 2"
    assert questions[0].answer == "5"


def test_constructible_by_class_path_through_jsonargparse(tmp_path):
    jsonargparse = pytest.importorskip("jsonargparse")
    path = tmp_path / "tiny.jsonl"
    path.write_text(json.dumps(NATALIA) + "\n")
    parser = jsonargparse.ArgumentParser()
    parser.add_subclass_arguments(Task, "task")
    config = parser.parse_object(
        {
            "task": {
                "class_path": "sapo.data.tasks.gsm8k.GSM8KTask",
                "init_args": {"source": str(path), "num_fewshot": 0},
            }
        }
    )
    task = (getattr(parser, "instantiate", None) or parser.instantiate_classes)(config).task
    assert isinstance(task, GSM8KTask) and task.load()[0].answer == "72"


# --- malformed data -------------------------------------------------------------------------------------------------


@pytest.fixture
def bad_file(tmp_path) -> Path:
    rows = [
        json.dumps(NATALIA),
        json.dumps({"question": "What is 2 + 2?"}),
        json.dumps({"question": "Name a colour.", "answer": "It is red.\n#### red"}),
        "not json at all",
        json.dumps({"question": "What is 3 + 4?", "answer": "3+4=<<3+4=7>>7\n#### 7"}),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_malformed_rows_raise_naming_file_line_and_field(bad_file, tmp_path):
    with pytest.raises(InvalidRowError) as missing:
        GSM8KTask(source=str(bad_file), stop=2).load()
    assert str(missing.value).startswith(f"{bad_file}, line 2: field 'answer' is missing")
    with pytest.raises(InvalidRowError) as not_a_number:
        GSM8KTask(source=str(bad_file), start=2, stop=3).load()
    assert f"{bad_file}, line 3: field 'answer'" in str(not_a_number.value) and "'red'" in str(
        not_a_number.value
    )
    with pytest.raises(InvalidRowError, match=r"bad\.jsonl, line 4: is not valid JSON"):
        GSM8KTask(source=str(bad_file), start=3).load()


def test_skip_invalid_skips_and_counts(bad_file):
    task = GSM8KTask(source=str(bad_file), skip_invalid=True)
    questions = task.load()
    assert [q.answer for q in questions] == ["72", "7"]
    assert [q.id for q in questions] == ["gsm8k/bad/0", "gsm8k/bad/4"]  # ids keep the row's position
    assert len(task.skipped) == 3
    reasons = sorted(task.skipped.reasons, key=lambda r: r.split(", line ")[1])
    assert [r.split(": ", 1)[0] for r in reasons] == [f"{bad_file}, line {n}" for n in (2, 3, 4)]
    assert "field 'answer' is missing" in reasons[0] and "field 'answer'" in reasons[1]
    assert "not valid JSON" in reasons[2]


# --- the approximate oracle -----------------------------------------------------------------------------------------


WENG = {
    "question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
    "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
    "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
}


def single_question_task(tmp_path, row) -> tuple[GSM8KTask, object]:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(row) + "\n")
    task = GSM8KTask(source=str(path))
    return task, task.load()[0]


@pytest.fixture
def natalia(tmp_path):
    return single_question_task(tmp_path, NATALIA)


def test_gold_and_corrupted_solutions(tmp_path, natalia):
    task, q = natalia
    gold = q.solution.strip().split("\n")
    assert task.judge(gold, q).all_correct
    assert task.oracle_labels(task.gold_trajectory(q), q) == [1.0, 1.0, 1.0]
    assert task.judge(["Natalia sold 48/2 = 25 clips in May.", *gold[1:]], q).first_error == 0  # wrong result
    wrong_operand = [gold[0], "Natalia sold 48+25 = 73 clips.", gold[2]]
    assert task.judge(wrong_operand, q).first_error == 1
    assert task.judge([*gold[:2], "The answer is 71."], q).first_error == 2  # wrong final line

    task, q = single_question_task(tmp_path, WENG)
    gold = q.solution.strip().split("\n")
    assert task.judge(gold, q).all_correct
    assert task.judge(gold[1:], q).first_error == 0  # skipped step: 0.2 was never computed
    assert task.judge([gold[0], "She earned 0.2 x 55 = $11.", gold[2]], q).first_error == 1


def test_alternative_correct_paths_count_as_errors(natalia):
    task, q = natalia
    # 48 * 1.5 = 72 is right, but 1.5 is neither in the question nor on the reference's computation
    result = task.judge(["48 * 1.5 = 72", "The answer is 72."], q)
    assert result.first_error == 0 and task.trajectory(q, "48 * 1.5 = 72\nThe answer is 72.").outcome


def test_fewshot_examples_are_other_questions(tmp_path):
    path = tmp_path / "three.jsonl"
    rows = [
        NATALIA,
        {"question": "What is 3 + 4?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
        {**NATALIA, "question": "Q3"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = GSM8KTask(source=str(path), num_fewshot=1)
    first, second, _ = task.load()
    assert "What is 3 + 4?" in task.prompt(first) and task.prompt(first).count("Question:") == 2
    assert task.prompt(second).startswith(f"Question: {NATALIA['question']}")


@needs_data
def test_whole_training_file_extracts_and_passes_the_oracle():
    """Every reference gives its own answer; the approximate oracle accepts at least 99% of references."""
    task = GSM8KTask(source=str(DATA / "train.jsonl"))
    questions = task.load()
    assert len(questions) == 7473
    extracted = sum(task.is_correct(task.extract_answer(q.solution), q) for q in questions)
    all_correct = sum(task.judge(task.gold_trajectory(q), q).all_correct for q in questions)
    assert extracted == len(questions)
    assert all_correct / len(questions) >= 0.99, all_correct


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="0123456789+-*/x=().,$%: abcXyz\n#", max_size=60), max_size=5))
def test_approximate_oracle_and_extraction_never_crash(steps):
    task = GSM8KTask(source="unused.jsonl")
    question = Question(
        id="q", question=NATALIA["question"], answer="72", meta={"reference": NATALIA["answer"]}
    )
    result = task.judge(steps, question)
    assert len(result.prefix_labels()) == len(steps)
    found = extract_answers("\n".join(steps))
    assert found.final is None or parse_number(found.final) is not None
