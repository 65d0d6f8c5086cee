"""Trajectory records: validation, JSONL round-trip, converters to TRL's stepwise format and ProcessBench."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sapo.data.trajectory import (
    NO_ERROR,
    Cost,
    Trajectory,
    TrajectoryFormatError,
    first_error_of,
    from_processbench,
    from_trl_stepwise,
    prefix_labels,
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


#: a cost record as trajectories and run manifests held it before the sampler's cost merged into ``Cost``
OLD_LABEL_COST = {
    "rollout_estimates": 2,
    "completions": 16,
    "generated_tokens": 400,
    "verifier_passes": 1,
    "seconds": 2.5,
}
#: a sampler's cost record (``SamplingCost.to_dict``) from the same time
OLD_SAMPLING_COST = {
    "calls": 2,
    "batches": 3,
    "completions": 10,
    "generated_tokens": 70,
    "prompt_tokens": 400,
    "prefill_tokens": 150,
    "padding_tokens": 30,
    "idle_row_steps": 10,
    "stop_check_seconds": 0.25,
    "seconds": 4.0,
}


def test_cost_reads_old_labelling_and_sampling_records():
    label = Cost.from_dict(OLD_LABEL_COST)
    assert label == Cost(
        rollout_estimates=2, completions=16, generated_tokens=400, verifier_passes=1, seconds=2.5
    )
    assert label.calls == label.prompt_tokens == 0 and label.stop_check_seconds == 0.0
    sampling = Cost.from_dict(OLD_SAMPLING_COST)
    assert (sampling.calls, sampling.batches, sampling.idle_row_steps) == (2, 3, 10)
    assert sampling.rollout_estimates == sampling.verifier_passes == 0
    assert sampling.tokens_per_second == 17.5 and sampling.sequences_per_second == 2.5
    assert sampling.padding_share == 0.2 and sampling.prefill_saving == 400 / 150
    assert sampling.idle_share == 10 / 80
    assert Cost.from_dict({}) == Cost() and Cost.from_dict({"seconds": 1}) == Cost(seconds=1.0)
    assert Cost().tokens_per_second == Cost().padding_share == Cost().idle_share == 0.0


@pytest.mark.parametrize(
    "record, message",
    [
        ({"completions": 1, "colour": 2}, r"where: unknown field\(s\) \['colour'\]"),
        ({"completions": -1}, r"where\.completions: expected a non-negative number, got -1"),
        ({"seconds": "1.0"}, r"where\.seconds: expected a non-negative number, got '1.0'"),
        ({"calls": True}, r"where\.calls: expected a non-negative number"),
        ([1, 2], "where: expected an object, got list"),
    ],
)
def test_cost_rejects_unknown_fields_and_bad_values_naming_the_place(record, message):
    with pytest.raises(TrajectoryFormatError, match=message):
        Cost.from_dict(record, where="where")


def test_cost_writes_only_what_is_not_zero_and_reads_it_back():
    assert Cost().to_dict() == {}
    label = Cost(rollout_estimates=1, completions=8, generated_tokens=80, seconds=0.5)
    assert label.to_dict() == {
        "rollout_estimates": 1,
        "completions": 8,
        "generated_tokens": 80,
        "seconds": 0.5,
    }
    assert Cost(verifier_passes=1).to_dict() == {"verifier_passes": 1}
    for cost in (Cost(), label, Cost.from_dict(OLD_LABEL_COST), Cost.from_dict(OLD_SAMPLING_COST)):
        assert Cost.from_dict(cost.to_dict()) == cost
        assert Cost.from_dict(json.loads(json.dumps(cost.to_dict()))) == cost
    assert Cost.from_dict(OLD_SAMPLING_COST).to_dict() == OLD_SAMPLING_COST  # no zero in it
    t = Trajectory("q1", "?", ["a"], labels=[1.0], cost=label)
    assert t.to_dict()["cost"] == label.to_dict()
    assert Trajectory.from_dict(json.loads(json.dumps(t.to_dict()))) == t


def test_cost_adds_subtracts_and_adds_in_place():
    a, b = Cost.from_dict(OLD_SAMPLING_COST), Cost.from_dict(OLD_LABEL_COST)
    total = a + b
    assert (total.rollout_estimates, total.completions, total.calls, total.seconds) == (2, 26, 2, 6.5)
    assert total - b == a and total - a == b and a - a == Cost()
    running = Cost()
    running.add(a)
    running.add(b)
    assert running == total and a == Cost.from_dict(OLD_SAMPLING_COST)  # add changes only its target
    assert sum([a, b, a], Cost()) == a + b + a
    with pytest.raises(TypeError):
        a + 1


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


def test_first_error_of_and_prefix_labels_by_hand():
    assert NO_ERROR == -1  # ProcessBench's "no wrong step"
    assert first_error_of([1.0, 1.0, 0.0, 0.0]) == 2
    assert first_error_of([1.0, 0.4, 1.0]) == 1  # soft labels are thresholded, later steps do not matter
    assert first_error_of([1.0, 0.5, 1.0]) == NO_ERROR  # 0.5 is not below 0.5
    assert first_error_of([1.0, 1.0]) == NO_ERROR and first_error_of([]) == NO_ERROR
    assert first_error_of([0.9, 0.6, 0.2], threshold=0.7) == 1
    assert prefix_labels(4, 1) == [1.0, 0.0, 0.0, 0.0]
    assert prefix_labels(3, 0) == [0.0, 0.0, 0.0]
    assert prefix_labels(3, 2) == [1.0, 1.0, 0.0]
    assert prefix_labels(2, NO_ERROR) == [1.0, 1.0] and prefix_labels(0, NO_ERROR) == []
    for outside in (3, 4, -2):  # the step count itself is no longer a way of saying "no error"
        with pytest.raises(ValueError, match="first error"):
            prefix_labels(3, outside)


@pytest.mark.parametrize("n", range(6))
def test_first_error_of_and_prefix_labels_are_inverse(n):
    for e in [NO_ERROR, *range(n)]:
        assert first_error_of(prefix_labels(n, e)) == e
    for first_error in range(n + 1):  # every prefix-shaped labelling: ones, then zeros
        labels = [1.0] * first_error + [0.0] * (n - first_error)
        assert prefix_labels(n, first_error_of(labels)) == labels
