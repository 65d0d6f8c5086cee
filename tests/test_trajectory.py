"""Trajectory records: validation, JSONL round-trip, converters to TRL's stepwise format and ProcessBench."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sapo.data.trajectory import (
    Cost,
    Trajectory,
    TrajectoryFormatError,
    from_processbench,
    from_trl_stepwise,
    read_jsonl,
    to_processbench,
    to_trl_stepwise,
    write_jsonl,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
steps_st = st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=8)


@st.composite
def trajectories(draw) -> Trajectory:
    steps = draw(steps_st)
    labelled = draw(st.booleans())
    labels = draw(st.lists(st.floats(0, 1), min_size=len(steps), max_size=len(steps))) if labelled else None
    return Trajectory(
        question_id=draw(st.text(min_size=1, max_size=10)),
        question=draw(st.text(max_size=50)),
        steps=steps,
        final_answer=draw(st.none() | st.text(max_size=5)),
        outcome=draw(st.none() | st.booleans()),
        labels=labels,
        label_source=draw(st.none() | st.sampled_from(["gold", "FirstErrorSupervision"])),
        cost=Cost(rollout_estimates=draw(st.integers(0, 9)), completions=3, generated_tokens=77, seconds=1.5),
        gold_answer=draw(st.none() | st.text(max_size=5)),
        meta={"seed": draw(st.integers(0, 100))},
    )


@SETTINGS
@given(st.lists(trajectories(), max_size=5))
def test_jsonl_round_trip(tmp_path_factory, items):
    path = tmp_path_factory.mktemp("t") / "labels.jsonl"
    write_jsonl(items, path)
    assert read_jsonl(path) == items


@SETTINGS
@given(trajectories())
def test_trl_stepwise_round_trip_for_hard_labels(t):
    if t.labels is None:
        with pytest.raises(ValueError, match="no labels"):
            to_trl_stepwise(t)
        return
    row = to_trl_stepwise(t)
    assert row["completions"] == t.steps and all(isinstance(v, bool) for v in row["labels"])
    back = from_trl_stepwise(row, t.question_id)
    assert back.steps == t.steps and back.question == t.question
    assert back.labels == [1.0 if v >= 0.5 else 0.0 for v in t.labels]
    assert to_trl_stepwise(back) == row


@given(st.integers(1, 8).flatmap(lambda n: st.tuples(st.just(n), st.integers(-1, n - 1))))
def test_processbench_round_trip(n_and_label):
    n, label = n_and_label
    row = {
        "id": "gsm8k-7",
        "problem": "p",
        "steps": [f"s{i}" for i in range(n)],
        "label": label,
        "final_answer_correct": label == -1,
    }
    t = from_processbench(row)
    assert t.first_error == label
    assert t.labels == [1.0 if label == -1 or i < label else 0.0 for i in range(n)]
    assert to_processbench(t) == row


def test_cost_adds_up():
    total = Cost(1, 8, 100, 1, 0.5) + Cost(2, 16, 50, 0, 1.0)
    assert total == Cost(
        rollout_estimates=3, completions=24, generated_tokens=150, verifier_passes=1, seconds=1.5
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": [1.0]}, "labels' has 1 values for 2 steps"),
        ({"labels": [1.0, 1.5]}, r"labels\[1\]' must be a number in \[0, 1\]"),
        ({"outcome": "yes"}, "outcome"),
        ({"steps": "a\nb"}, "steps"),
    ],
)
def test_invalid_fields_are_named(kwargs, message):
    base = {"question_id": "q1", "question": "?", "steps": ["a", "b"]}
    with pytest.raises(TrajectoryFormatError, match=message):
        Trajectory(**{**base, **kwargs})


def test_malformed_file_names_file_line_and_field(tmp_path):
    good = Trajectory("q1", "?", ["a"]).to_dict()
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(good), "", json.dumps({**good, "labels": [2]}), "{not json"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrajectoryFormatError, match=r"bad.jsonl, line 3: field 'labels\[0\]'"):
        read_jsonl(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(TrajectoryFormatError, match=r"bad.jsonl, line 2: not valid JSON"):
        read_jsonl(path)
    path.write_text(json.dumps({"question": "?", "steps": []}) + "\n")
    with pytest.raises(TrajectoryFormatError, match="line 1: missing field 'question_id'"):
        read_jsonl(path)
    path.write_text(json.dumps({**good, "colour": "red"}) + "\n")
    with pytest.raises(TrajectoryFormatError, match=r"unknown field\(s\) \['colour'\]"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_processbench_bad_rows_name_the_id():
    row = {"id": "r9", "problem": "p", "steps": ["a", "b"], "label": 2}
    with pytest.raises(TrajectoryFormatError, match="'r9'.*label"):
        from_processbench(row)
    with pytest.raises(TrajectoryFormatError, match="'r9'.*steps"):
        from_processbench({**row, "steps": [], "label": -1})


def test_first_error_and_text():
    t = Trajectory("q", "?", ["a = 1", "b = 2", "The answer is 2"], labels=[1, 0.3, 0])
    assert t.first_error == 1
    assert t.text() == "a = 1\nb = 2\nThe answer is 2\n"
    assert Trajectory("q", "?", ["x"], labels=[1]).first_error == -1
