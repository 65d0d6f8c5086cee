"""ProcessBench evaluation: a small file written here, a scorer that reads its scores from a table, F1 worked
out by hand; a threshold chosen on a separate file; bad rows rejected by name; the oracle benchmark."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.tasks.loading import InvalidRowError
from sapo.data.trajectory import Trajectory
from sapo.eval.processbench import answer_auroc, evaluate_on_oracle, evaluate_processbench, read_processbench
from sapo.supervision.oracle_scorer import OracleScorer
from sapo.supervision.protocols import StepScorer


class TableScorer:
    """A verifier whose step scores are looked up by the row's id; it refuses to see labels."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.calls = 0

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        self.calls += 1
        assert all(t.labels is None for t in trajectories), "the verifier must not see the labels"
        return [list(self.table[t.question_id]) for t in trajectories]


class ConstantScorer:
    """Scores every step the same."""

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        return [[self.value] * t.num_steps for t in trajectories]


def row(row_id: str, label: int, num_steps: int) -> dict:
    return {
        "id": row_id,
        "generator": "test",
        "problem": f"problem {row_id}",
        "steps": [f"step {i} of {row_id}" for i in range(num_steps)],
        "label": label,
        "final_answer_correct": label == -1,
    }


#: (row, scores). At τ = 0.5 the predictions (first score below τ) are:
#:   r1 -1 (label -1, right)  r2 1 (label -1, wrong)  r3 1 (label 1, right)
#:   r4 0  (label 0, right)   r5 -1 (label 2, wrong)  r6 2 (label 2, right)
#: error accuracy 3/4, correct accuracy 1/2, F1 = 2 · 0.75 · 0.5 / 1.25 = 0.6.
TEST_ROWS = [
    (row("r1", -1, 3), [0.9, 0.8, 0.7]),
    (row("r2", -1, 2), [0.9, 0.4]),
    (row("r3", 1, 3), [0.9, 0.3, 0.2]),
    (row("r4", 0, 2), [0.45, 0.1]),
    (row("r5", 2, 3), [0.8, 0.7, 0.9]),
    (row("r6", 2, 4), [0.7, 0.6, 0.45, 0.2]),
]
#: The validation file: its distinct scores 0.3 < 0.4 < 0.8 < 0.9 give the candidates 0.3, 0.35, 0.6, 0.85
#: and just above 0.9; only τ = 0.35 gets both rows right (v1 -1, v2 1), F1 = 1.
VALIDATION_ROWS = [(row("v1", -1, 2), [0.9, 0.4]), (row("v2", 1, 2), [0.8, 0.3])]
SCORES = {r["id"]: s for r, s in TEST_ROWS + VALIDATION_ROWS}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def test_file(tmp_path):
    return write_jsonl(tmp_path / "test.jsonl", [r for r, _ in TEST_ROWS])


@pytest.fixture
def validation_file(tmp_path):
    path = tmp_path / "validation.json"
    path.write_text(json.dumps([r for r, _ in VALIDATION_ROWS]), encoding="utf-8")  # a JSON array
    return path


def test_the_scorer_is_a_step_scorer():
    assert isinstance(TableScorer({}), StepScorer)


def test_read_processbench_gives_labelled_trajectories(test_file):
    trajectories = read_processbench(test_file)
    assert [t.question_id for t in trajectories] == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert [t.first_error for t in trajectories] == [-1, -1, 1, 0, 2, 2]
    assert trajectories[2].labels == [1.0, 0.0, 0.0]
    assert trajectories[0].outcome is True and trajectories[2].outcome is False


def test_f1_at_a_given_threshold_by_hand(test_file):
    scorer = TableScorer(SCORES)
    result = evaluate_processbench(scorer, test_file, threshold=0.5)
    assert result.threshold == 0.5 and result.threshold_source == "given" and result.threshold_set is None
    scores = result.sets[str(test_file)]
    assert scores.predictions == [-1, 1, 1, 0, -1, 2]
    assert scores.labels == [-1, -1, 1, 0, 2, 2]
    assert scores.ids == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert scores.error_accuracy == pytest.approx(0.75)
    assert scores.correct_accuracy == pytest.approx(0.5)
    assert scores.f1 == pytest.approx(0.6)
    assert (scores.num_error, scores.num_correct) == (4, 2)
    assert scorer.calls == 1  # one call per file
    assert json.loads(json.dumps(result.to_dict()))["sets"][str(test_file)]["f1"] == pytest.approx(0.6)


def test_step_auroc_and_largest_drop_detection_by_hand(test_file):
    """Right steps (label 1) score 0.9 x3, 0.8 x2, 0.7 x3, 0.6, 0.4; wrong ones 0.9, 0.45 x2, 0.3, 0.2 x2, 0.1:
    59.5 of the 70 (right, wrong) pairs are ordered (a tie counts one half), AUROC 0.85. The largest drops
    (from 1.0 before the first step) are r3 1, r4 0, r5 0, r6 0 against first errors 1, 0, 2, 2: 2 of 4; a
    random step would find 1/3, 1/2, 1/3 and 1/4 of them."""
    scores = evaluate_processbench(TableScorer(SCORES), test_file, threshold=0.5).sets[str(test_file)]
    assert scores.step_auroc == pytest.approx(59.5 / 70)
    assert scores.detection_accuracy == pytest.approx(0.5)
    assert scores.random_step_accuracy == pytest.approx((1 / 3 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    summary = scores.summary()  # what a run's evaluation phase records
    assert summary["verifier_f1"] == pytest.approx(0.6) and summary["verifier_step_auroc"] == pytest.approx(
        0.85
    )
    assert summary["random_step_detection_accuracy"] == scores.random_step_accuracy
    assert summary["verifier_rows"] == {"with_error": 4, "correct": 2} and "verifier_ids" not in summary
    # whole answers by mean step score: right r1 0.8, r2 0.65 against wrong r3 0.467, r4 0.275, r5 0.8 (a
    # tie with r1), r6 0.4875: 6.5 of the 8 pairs ordered
    assert summary["verifier_answer_auroc"] == pytest.approx(6.5 / 8)


def test_rows_in_memory_and_several_files(tmp_path, test_file):
    rows = [r for r, _ in TEST_ROWS]
    in_memory = evaluate_processbench(TableScorer(SCORES), rows, threshold=0.5)
    assert in_memory.sets["rows"].f1 == pytest.approx(0.6)
    second = write_jsonl(tmp_path / "second.jsonl", rows[:3])  # r1 right, r2 wrong, r3 right
    both = evaluate_processbench(TableScorer(SCORES), {"all": test_file, "first3": second}, threshold=0.5)
    assert both.sets["all"].f1 == pytest.approx(0.6)
    first3 = both.sets["first3"]
    assert (first3.error_accuracy, first3.correct_accuracy) == (1.0, 0.5)
    assert first3.f1 == pytest.approx(2 / 3)


def test_threshold_chosen_on_a_separate_file(test_file, validation_file):
    result = evaluate_processbench(TableScorer(SCORES), test_file, threshold_file=validation_file)
    assert result.threshold_source == "chosen"
    assert result.threshold_set == str(validation_file)
    assert result.threshold == pytest.approx(0.35)
    assert result.threshold_metrics["f1"] == 1.0
    # At τ = 0.35 on the test file: r1 -1, r2 -1, r3 1 right; r4 1 (label 0), r5 -1 (label 2), r6 3 (label 2)
    # wrong: correct accuracy 1, error accuracy 1/4, F1 = 2 · 0.25 / 1.25 = 0.4.
    scores = result.sets[str(test_file)]
    assert scores.predictions == [-1, -1, 1, 1, -1, 3]
    assert (scores.correct_accuracy, scores.error_accuracy) == (1.0, 0.25)
    assert scores.f1 == pytest.approx(0.4)


def test_threshold_defaults_to_one_half_and_says_so(test_file, validation_file):
    result = evaluate_processbench(TableScorer(SCORES), test_file)
    assert (result.threshold, result.threshold_source) == (0.5, "default")
    with pytest.raises(ValueError, match="not both"):
        evaluate_processbench(TableScorer(SCORES), test_file, threshold=0.5, threshold_file=validation_file)


@pytest.mark.parametrize(
    ("bad", "field", "problem"),
    [
        (row("bad-7", 3, 3), "label", "must be -1 or a step index in \\[0, 2\\], got 3"),
        (row("bad-7", -2, 3), "label", "got -2"),
        (row("bad-7", 0, 0), "steps", "is empty"),
        (
            {k: v for k, v in row("bad-7", -1, 2).items() if k != "final_answer_correct"},
            "final_answer_correct",
            "missing",
        ),
        ({k: v for k, v in row("bad-7", -1, 2).items() if k != "problem"}, "problem", "missing"),
        ({**row("bad-7", -1, 2), "label": "1"}, "label", "must be an integer, got str"),
        ({**row("bad-7", -1, 2), "label": True}, "label", "must be an integer, got bool"),
        ({**row("bad-7", -1, 2), "steps": "one step"}, "steps", "must be a list of strings"),
        ({**row("bad-7", -1, 2), "steps": ["fine", " "]}, "steps", "item 1 must be a non-empty string"),
        (
            {**row("bad-7", -1, 2), "final_answer_correct": "yes"},
            "final_answer_correct",
            "must be true or false",
        ),
    ],
)
def test_a_bad_row_is_rejected_naming_file_row_id_field_and_problem(tmp_path, bad, field, problem):
    path = write_jsonl(tmp_path / "bench.jsonl", [row("good-1", -1, 2), bad])
    with pytest.raises(InvalidRowError, match=problem) as error:
        read_processbench(path)
    message = str(error.value)
    assert str(path) in message and "line 2" in message and "'bad-7'" in message and f"'{field}'" in message


def test_a_bad_row_in_a_json_array_is_named_by_its_index(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps([row("good-1", -1, 2), row("good-2", 0, 2), row("bad-9", 5, 2)]))
    with pytest.raises(InvalidRowError, match=r"bench.json, row 2 \(id 'bad-9'\): field 'label'"):
        read_processbench(path)


def test_a_row_without_an_id_is_named_by_its_line(tmp_path):
    path = write_jsonl(tmp_path / "bench.jsonl", [{k: v for k, v in row("x", -1, 2).items() if k != "id"}])
    with pytest.raises(InvalidRowError, match=r"bench.jsonl, line 1: field 'id' is missing"):
        read_processbench(path)


def test_rows_in_memory_are_checked_too():
    with pytest.raises(InvalidRowError, match=r"rows\[1\] \(id 'bad-3'\): field 'label'"):
        evaluate_processbench(ConstantScorer(1.0), [row("a", -1, 2), row("bad-3", 2, 2)], threshold=0.5)


def test_a_scorer_that_returns_the_wrong_number_of_scores_is_named(test_file):
    table = dict(SCORES, r4=[0.5])
    with pytest.raises(ValueError, match=r"row 3 \(id 'r4'\): the scorer returned \[0.5\] for 2 steps"):
        evaluate_processbench(TableScorer(table), test_file, threshold=0.5)


# --- the oracle benchmark --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_answer_auroc_ranks_whole_answers_by_their_mean_step_score():
    """Mean step scores: right answers 0.85 and 0.5, a wrong one 0.45: both right ones rank above it (1.0).
    With the wrong one at 0.6, one of the two pairs is ordered (0.5). It needs checked outcomes of both kinds."""

    def answer(outcome, *scores):
        steps = [f"step {j}" for j in range(len(scores))]
        return Trajectory(question_id="q", question="?", steps=steps, outcome=outcome), list(scores)

    rows = [answer(True, 0.9, 0.8), answer(False, 0.7, 0.2), answer(True, 0.5, 0.5)]
    assert answer_auroc([t for t, _ in rows], [s for _, s in rows]) == pytest.approx(1.0)
    rows[1] = answer(False, 0.8, 0.4)
    assert answer_auroc([t for t, _ in rows], [s for _, s in rows]) == pytest.approx(0.5)
    unchecked = [answer(None, 0.9), answer(False, 0.1)]
    assert answer_auroc([t for t, _ in unchecked], [s for _, s in unchecked]) is None
    all_right = [answer(True, 0.9), answer(True, 0.1)]
    assert answer_auroc([t for t, _ in all_right], [s for _, s in all_right]) is None


@pytest.fixture
def arithmetic():
    task = ArithmeticTask(split="test", num_questions=4, seed=3, min_steps=3, max_steps=4)
    return task, task.load()


def with_wrong_step(task, question, index):
    """The gold solution with the result of equation ``index`` off by one (arithmetically false)."""
    steps = task.split_steps(question.solution)
    left, result = steps[index].rsplit("=", 1)
    steps[index] = f"{left}= {int(result) + 1}"
    return task.trajectory(question, task.completion_text(steps))


def oracle_trajectories(task, questions):
    """Per question: the gold solution (no error), and one with its error at step q % 3."""
    gold = [task.trajectory(q, q.solution) for q in questions]
    wrong = [with_wrong_step(task, q, i % 3) for i, q in enumerate(questions)]
    return gold + wrong


def test_oracle_benchmark_with_a_perfect_and_a_blind_verifier(arithmetic):
    task, questions = arithmetic
    trajectories = oracle_trajectories(task, questions)
    perfect = evaluate_on_oracle(OracleScorer(task, questions), task, trajectories, threshold=0.5)
    scores = perfect.sets[task.name]
    assert scores.labels == [-1, -1, -1, -1, 0, 1, 2, 0]  # the oracle's true first errors
    assert scores.predictions == scores.labels and scores.f1 == 1.0
    assert all(t.labels is None for t in trajectories)  # the inputs are not labelled in place
    blind = evaluate_on_oracle(ConstantScorer(1.0), task, trajectories, questions=questions, threshold=0.5)
    blind_scores = blind.sets[task.name]  # never flags a step: right on correct rows only
    assert (blind_scores.correct_accuracy, blind_scores.error_accuracy, blind_scores.f1) == (1.0, 0.0, 0.0)
    assert scores.step_auroc == 1.0 and blind_scores.step_auroc == 0.5  # a ranking, and none
    assert scores.detection_accuracy == 1.0 and blind_scores.detection_accuracy < 1.0


def test_oracle_benchmark_threshold_chosen_on_other_trajectories(arithmetic):
    task, questions = arithmetic
    trajectories = oracle_trajectories(task, questions)
    scorer = OracleScorer(task, questions, noise=0.2, seed=1)
    result = evaluate_on_oracle(scorer, task, trajectories[1::2], threshold_trajectories=trajectories[::2])
    assert result.threshold_source == "chosen" and result.threshold_set == f"{task.name} (threshold)"
    assert 0.0 <= result.threshold <= 1.0 and result.threshold_metrics is not None
    assert result.sets[task.name].num_error + result.sets[task.name].num_correct == 4


def test_oracle_benchmark_needs_an_oracle_and_known_questions(arithmetic):
    task, questions = arithmetic
    other = ArithmeticTask(split="train", num_questions=1).load()[0]
    stranger = task.trajectory(other, other.solution)
    with pytest.raises(KeyError, match="not among the questions"):
        evaluate_on_oracle(ConstantScorer(1.0), task, [stranger], questions=questions)
