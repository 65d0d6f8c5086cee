"""The labelling benchmark (benchmarks/labelling.py): its metric definitions on hand-built cases, and the whole
script run end to end with the tiny random model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import benchmark_script

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.trajectory import NO_ERROR, Cost, Trajectory, first_error_of
from sapo.supervision import (
    FirstErrorSupervision,
    LabelResult,
    MonteCarloSupervision,
    OracleScorer,
    OutcomeSupervision,
    Prefix,
    Rollout,
)


@pytest.fixture(scope="module")
def bench():
    return benchmark_script("labelling")


def trajectory(labels, outcome, cost=None, **meta) -> Trajectory:
    steps = [f"step {i}" for i in range(len(labels))]
    return Trajectory("q", "question?", steps, outcome=outcome, labels=labels, cost=cost or Cost(), meta=meta)


# --------------------------------------------------------------------------------------------- definitions


def test_first_error_accuracy_and_step_f1_on_a_hand_built_case(bench):
    pairs = [  # (labels, oracle labels)
        ([1, 1, 0, 0], [1, 1, 0, 0]),  # same first error (2): hit; steps: 2 tp, 2 tn
        ([1, 0, 0, 0], [1, 1, 0, 0]),  # 1 against 2: miss; steps: 2 tp, 1 fp, 1 tn
        ([1, 1, 1, 0], [1, 0, 0, 0]),  # 3 against 1: miss; steps: 1 tp, 2 fn, 1 tn
        ([1, 1, 1], [1, 1, 1]),  # -1 against -1: hit; steps: 3 tn
    ]
    rate = bench.first_error_accuracy(pairs)
    assert (rate.hits, rate.total, rate.value) == (2, 4, 0.5)
    assert str(rate) == "0.500 (2/4)"
    counts = bench.wrong_step_counts(pairs)
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (5, 1, 2, 7)
    assert counts.f1 == pytest.approx(2 * 5 / (2 * 5 + 1 + 2))  # precision 5/6, recall 5/7
    assert bench.wrong_step_counts([([1, 1], [1, 1])]).f1 is None  # no wrong step on either side
    assert bench.first_error_accuracy([]).value is None
    with pytest.raises(ValueError):
        bench.wrong_step_counts([([1, 0], [1])])


def test_evaluate_divides_cost_by_what_was_labelled_and_scores_against_the_oracle(bench):
    oracle = {"w1": [1.0, 0.0, 0.0], "w2": [1.0, 1.0, 0.0], "w3": [0.0, 0.0, 0.0], "c": [1.0, 1.0, 1.0]}
    oracle["x1"] = [1.0, 0.0, 0.0, 0.0]
    oracle["x2"] = [1.0, 1.0, 1.0]

    def truth(t: Trajectory) -> list[float]:
        return oracle[t.meta["name"]]

    c = Cost(rollout_estimates=2, completions=16, generated_tokens=400, verifier_passes=1, seconds=2.0)
    result = LabelResult(
        labelled=[
            trajectory([1.0, 0.0, 0.0], False, c, name="w1", verification={"detected": 1}),  # hit
            trajectory([1.0, 0.0, 0.0], False, c, name="w2", verification={"detected": 1}),  # miss
            trajectory([1.0, 1.0, 1.0], True, name="c"),  # free, all correct
        ],
        expanded=[
            trajectory([1.0, 0.0, 0.0, 0.0], False, name="x1"),  # equals the oracle
            trajectory([1.0, 1.0, 0.0], False, name="x2"),  # does not
        ],
        dropped=[trajectory([0.0, 0.0, 0.0], False, c, name="w3", verification={"detected": 0})],
        cost=Cost(rollout_estimates=6, completions=48, generated_tokens=1200, verifier_passes=3, seconds=9.0),
        stats={"confirmed": 2, "later": 0, "earlier": 0, "inconsistent": 1, "expanded": 2},
    )
    run = bench.Run("first_error", early_stop=False, noise=0.0)
    row = bench.evaluate(run, result, truth)
    assert row.run == "first_error σ=0"
    assert (row.trajectories, row.wrong_answers, row.labelled, row.labelled_wrong) == (4, 3, 3, 2)
    assert (row.expanded, row.dropped) == (2, 1)
    # per labelled trajectory: what every input cost (the dropped one too) over the 3 labelled ones
    assert row.per_labelled == {"completions": 16.0, "generated_tokens": 400.0, "seconds": 2.0}
    # per labelled wrong answer: what the 3 wrong answers cost (the dropped one too) over the 2 labelled
    assert row.per_labelled_wrong == {"completions": 24.0, "generated_tokens": 600.0, "seconds": 3.0}
    assert (row.first_error_accuracy.hits, row.first_error_accuracy.total) == (1, 2)
    # steps of labelled trajectories: w1 2 tp 1 tn; w2 1 tp, 1 fp, 1 tn; c 3 tn
    assert (row.steps_all.tp, row.steps_all.fp, row.steps_all.fn) == (3, 1, 0)
    assert row.steps_wrong.f1 == pytest.approx(6 / 7)
    assert row.steps_correct.f1 is None
    assert (row.expansion_accuracy.hits, row.expansion_accuracy.total) == (1, 2)
    # detection (before verification) over every wrong answer, dropped included: w1 and w3 right, w2 wrong
    assert (row.detection_accuracy.hits, row.detection_accuracy.total) == (2, 3)
    assert row.verdicts == {"confirmed": 2, "later": 0, "earlier": 0, "inconsistent": 1}
    assert json.loads(json.dumps(row.to_dict()))["first_error_accuracy"]["value"] == 0.5
    # seconds charged by trajectory (a RolloutMemory's) replace the library's
    charged = bench.evaluate(
        run, result, truth, seconds=lambda t: {"w1": 1.0, "w3": 2.0}.get(t.meta["name"], 0.0)
    )
    assert charged.per_labelled["seconds"] == 1.0 and charged.per_labelled_wrong["seconds"] == 1.5


class OracleSampler:
    """Rollouts from a prefix reach the gold answer iff the oracle finds no error in the prefix; 5 tokens each."""

    def __init__(self, task, questions):
        self.task = task
        self.questions = {q.id: q for q in questions}

    def rollouts(self, prefixes, k, early_stop=False):
        out = []
        for p in prefixes:
            labels = self.task.oracle_labels(p.trajectory, self.questions[p.trajectory.question_id])
            ok = all(labels[: p.num_steps])
            out.append([Rollout(["The answer is 1."], "1", ok, 5) for _ in range(k)])
        return out


def broken_arithmetic(steps_broken=(0, 2, 3)):
    """Wrong-answer trajectories broken at known steps, a correct one, their task and questions."""
    task = ArithmeticTask(num_questions=len(steps_broken), seed=1, min_steps=4, max_steps=4)
    questions = task.load()
    wrong = []
    for q, step in zip(questions, steps_broken, strict=True):
        steps = task.split_steps(q.solution)
        steps[step] = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), steps[step], count=1)
        steps[-1] = f"The answer is {int(q.answer) + 1}."
        wrong.append(task.trajectory(q, task.completion_text(steps)))
    return task, questions, [*wrong, task.gold_trajectory(questions[0])]


def test_monte_carlo_with_an_oracle_sampler_scores_perfectly_and_outcome_does_not(bench):
    task, questions, trajectories = broken_arithmetic()
    truth = bench.OracleTruth(task, questions)
    assert [first_error_of(truth(t)) for t in trajectories] == [0, 2, 3, NO_ERROR]
    sampler = OracleSampler(task, questions)

    mc = bench.evaluate(
        bench.Run("monte_carlo"), MonteCarloSupervision(k=4).label(trajectories, sampler), truth
    )
    assert str(mc.first_error_accuracy) == "1.000 (3/3)"
    assert mc.steps_all.f1 == 1.0
    # 5 steps each (4 equations and the answer): 4 estimates of 4 rollouts of 5 tokens per wrong answer
    assert mc.per_labelled_wrong["generated_tokens"] == 4 * 4 * 5
    assert mc.per_labelled["generated_tokens"] == 3 * 80 / 4

    outcome = bench.evaluate(bench.Run("outcome"), OutcomeSupervision().label(trajectories), truth)
    assert str(outcome.first_error_accuracy) == "0.333 (1/3)"  # all 0: right only where step 0 is the error
    assert outcome.per_labelled_wrong["generated_tokens"] == 0


class CountingSampler(OracleSampler):
    """The oracle sampler, recording each call as (prefixes, k, early_stop)."""

    def __init__(self, task, questions):
        super().__init__(task, questions)
        self.calls = []

    def rollouts(self, prefixes, k, early_stop=False):
        self.calls.append((len(prefixes), k, early_stop))
        return super().rollouts(prefixes, k, early_stop)


def test_early_stop_cut_returns_whole_rounds_up_to_the_first_correct_rollout(bench):
    assert bench.early_stop_cut([False, False, True, False, True, False, False, False], 2) == 4
    assert bench.early_stop_cut([True] + [False] * 7, 2) == 2
    assert bench.early_stop_cut([False] * 8, 2) == 8
    assert bench.early_stop_cut([False] * 6 + [False, True], 3) == 8  # the last round is cut short at k
    assert bench.early_stop_cut([False, True, False], 1) == 2


def test_rollout_memory_samples_each_prefix_once_and_replays_it_to_every_run(bench):
    task, questions, trajectories = broken_arithmetic()
    inner = CountingSampler(task, questions)
    memory = bench.RolloutMemory(inner, chunk=2)
    first = MonteCarloSupervision(k=4).label(trajectories, memory)
    assert inner.calls == [(12, 4, False)]  # 4 prefixes of each of the 3 wrong answers, in one call
    charges = memory.take_charges()
    assert set(charges) == {bench.trajectory_key(t) for t in trajectories[:3]} and memory.charges == {}

    again = FirstErrorSupervision(k=4).label(trajectories, memory, OracleScorer(task, questions))
    assert len(inner.calls) == 1  # first error's prefixes (t̂ and t̂ + 1 <= n - 1 here) were all sampled
    assert [t.labels for t in again.labelled] == [t.labels for t in first.labelled]

    early = MonteCarloSupervision(k=4, early_stop=True).label(trajectories, memory)
    assert len(inner.calls) == 1  # early stop replays too: same labels, fewer completions
    assert [t.labels for t in early.labelled] == [t.labels for t in first.labelled]
    assert early.cost.completions < first.cost.completions
    # a correct prefix stops after its first round of 2 (the oracle sampler's rollouts all agree)
    broken_at_3 = next(t for t in early.labelled if t.labels == [1.0, 1.0, 1.0, 0.0, 0.0])
    assert broken_at_3.cost.completions == 2 + 2 + 2 + 4

    prefix = Prefix(trajectories[1], 2)
    assert memory.rollouts([prefix], 4) == [memory.rollouts_of[bench.RolloutMemory.key(prefix, 4)]]
    memory.rollouts([prefix], 3)  # another k is another sample
    assert inner.calls[-1] == (1, 3, False)


def test_planned_runs_cover_both_early_stop_settings_and_the_noise_sweep(bench):
    runs = bench.planned_runs(["outcome", "monte_carlo", "first_error"], [False, True], 0.0)
    assert [r.label for r in runs] == [
        "outcome",
        "monte_carlo",
        "monte_carlo +es",
        "first_error σ=0",
        "first_error σ=0 +es",
    ]
    sweep = bench.sweep_runs([0.0, 0.1, 0.1, 0.5], runs)
    assert [r.label for r in sweep] == ["first_error σ=0.1", "first_error σ=0.5"]


# --------------------------------------------------------------------------------------------- end to end


EXPECTED_RUNS = [
    "outcome",
    "monte_carlo",
    "monte_carlo +es",
    "monte_carlo_all",
    "monte_carlo_all +es",
    "binary_search",
    "binary_search +es",
    "first_error σ=0",
    "first_error σ=0 +es",
    "random_step",
    "random_step +es",
]


def test_main_runs_end_to_end_with_the_tiny_model(bench, tmp_path, sapo_cache_dir):
    tasks = ["arithmetic"] + (["gsm8k"] if (Path(bench.GSM8K_DATA) / "test.jsonl").is_file() else [])
    out = tmp_path / "results" / "labelling.md"
    argv = ["--quick", "--model", "tiny-random", "--dtype", "float32", "--cache-dir", sapo_cache_dir]
    reports = bench.main([*argv, "--out", str(out), "--no-progress", "--tasks", *tasks])

    assert [r.task for r in reports] == tasks
    text = out.read_text()
    figures = json.loads(out.with_suffix(".json").read_text())
    for report, saved in zip(reports, figures["tasks"], strict=True):
        assert [r.run for r in report.runs] == EXPECTED_RUNS
        assert [r.run for r in report.sweep] == ["first_error σ=0.3"]
        assert [r["run"] for r in saved["runs"]] == EXPECTED_RUNS
        assert report.trajectories > 0
        for row in report.runs + report.sweep:
            assert row.labelled + row.dropped == report.trajectories
            assert row.per_labelled["generated_tokens"] * row.labelled == pytest.approx(
                row.cost["generated_tokens"]
            )
            assert row.first_error_accuracy.total == row.labelled_wrong
        assert report.find("outcome").cost["completions"] == 0
        for name in ("monte_carlo", "binary_search"):  # shared rollouts: early stop changes cost, not labels
            plain, early = report.find(name), report.find(f"{name} +es")
            assert plain.first_error_accuracy == early.first_error_accuracy
            assert plain.steps_all == early.steps_all
            assert early.cost["completions"] <= plain.cost["completions"]
        assert f"## {report.task} (" in text
    for label in EXPECTED_RUNS:
        assert re.search(rf"^\| {re.escape(label)} \| \d+ \(\d+\) \|", text, re.MULTILINE), label
    assert "(target >= 3x)" in text and "Targets:" in text
    for suffix in ("_cost.png", "_noise.png"):
        png = out.with_name(out.stem + suffix)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fresh_rollouts_give_every_run_its_own_sampler(bench, tmp_path, sapo_cache_dir):
    out = tmp_path / "fresh.md"
    argv = ["--quick", "--model", "tiny-random", "--dtype", "float32", "--cache-dir", sapo_cache_dir]
    argv += ["--out", str(out), "--no-progress", "--tasks", "arithmetic", "--fresh-rollouts"]
    (report,) = bench.main([*argv, "--strategies", "monte_carlo", "first_error", "--early-stop", "off"])
    assert [r.run for r in report.runs] == ["monte_carlo", "first_error σ=0"]
    assert [r.run for r in report.sweep] == ["first_error σ=0.3"]
    assert "tokens per labelled wrong-answer trajectory, k=2" in out.read_text()


def test_the_short_sft_is_saved_once_and_reused(bench, sapo_cache_dir):
    args = bench.parse_args(
        ["--quick", "--base", "tiny-random", "--cache-dir", sapo_cache_dir, "--tasks", "arithmetic"]
        + ["--arith-sft-questions", "4", "--sft-batch-size", "2", "--sft-max-length", "160"]
    )
    folder, seconds = bench.sft_checkpoint("arithmetic", args)
    assert seconds is not None and (folder / "config.json").is_file()
    assert json.loads((folder / "labelling-sft.json").read_text())["questions"] == 4
    again, reused = bench.sft_checkpoint("arithmetic", args)
    assert again == folder and reused is None
    args.sft_lr = 3e-4  # other settings: another checkpoint
    assert bench.sft_checkpoint("arithmetic", args)[0] != folder
