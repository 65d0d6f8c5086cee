"""The training-speed benchmark (benchmarks/training_speed.py): its corrupted solutions against the task's
exact oracle, its timing arithmetic on hand-built records, and sapo's two trainers run through the driver
end to end on the tiny random model (the TRL side needs the benchmark's own environments, not CI's)."""

from __future__ import annotations

import json
import random
import sys

import pytest
from conftest import BENCHMARKS, benchmark_script

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.trajectory import Trajectory, prefix_labels
from sapo.models import TINY_RANDOM, BackboneSpec


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # the driver imports its children's common module
    try:
        yield benchmark_script("training_speed")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_a_corrupted_solution_goes_wrong_exactly_at_the_changed_equation(bench):
    """The rejected sides and the PRM's wrong trajectories claim their first error is the changed step:
    the task's exact oracle must agree, for every equation of every question, and the answer must be wrong."""
    task = ArithmeticTask(split="train", num_questions=60, seed=0)
    rng = random.Random(0)
    checked = 0
    for question in task.load():
        gold = task.split_steps(question.solution)
        for error in range(len(gold) - 1):
            steps = bench.corrupted_steps(gold, error, rng)
            trajectory = Trajectory(question.id, question.question, steps, gold_answer=question.answer)
            assert task.oracle_labels(trajectory, question) == prefix_labels(len(steps), error), steps
            assert not task.is_correct(task.extract_answer(task.completion_text(steps)), question)
            checked += 1
    assert checked >= 120


def test_the_timing_starts_after_the_warm_up_steps(bench):
    records = {
        "first_step_start": 0.0,
        "global_step": 4,
        "steps": [
            {"end": 1.0, "tokens": 10, "positions": 20},
            {"end": 2.0, "tokens": 20, "positions": 20},
            {"end": 4.0, "tokens": 30, "positions": 40},
            {"end": 7.0, "tokens": 40, "positions": 40},
        ],
    }
    summary = bench.summarise(records, warmup=1)
    # steps 2-4, from the end of step 1 (t = 1) to the end of step 4 (t = 7)
    assert summary["timed_steps"] == 3
    assert summary["timed_seconds"] == pytest.approx(6.0)
    assert summary["tokens"] == 90
    assert summary["tokens_per_second"] == pytest.approx(15.0)
    assert summary["padding_share"] == pytest.approx(0.1)
    assert summary["step_seconds"] == [1.0, 1.0, 2.0, 3.0]
    no_warmup = bench.summarise(records, warmup=0)
    assert no_warmup["timed_seconds"] == pytest.approx(7.0) and no_warmup["tokens"] == 100


def _tiny_folder(path, cache: str):
    model, tokenizer = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=cache).load()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def driven(bench, tmp_path_factory, sapo_cache_dir):
    """The driver's record of sapo's ORPO and PRM trainers (``--smoke``, batches of 4, no accumulation) and
    of a TRL trainer whose environment is missing; the folder of the tiny model they trained."""
    folder = _tiny_folder(tmp_path_factory.mktemp("speed") / "tiny", sapo_cache_dir)
    out = folder.parent / "speed.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(
            bench.TRAINERS, "trl-orpo", ("orpo", "trl", folder.parent / "no-env" / "bin" / "python")
        )
        patch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")  # recorded: such settings move the figures
        bench.main(["--smoke", "--model", str(folder), "--batch-size", "4", "--threads", "1"]
                   + ["--out", str(out), "--only", "sapo-orpo,sapo-prm,trl-orpo"])  # fmt: skip
    return json.loads(out.read_text()), folder


def test_sapo_trainers_run_through_the_driver(driven):
    """The driver prepares the data, runs sapo's ORPO and PRM children in their own processes and records
    every step's tokens, each part of a step's memory and the kernel-cache settings they ran under; an
    absent TRL environment is an error entry that names the script to run, not a crash."""
    record, _ = driven
    steps = 3  # --smoke: 3 steps on 24 rows
    assert record["data"]["rows"] == 24 and record["data"]["prm_with_error"] == 12
    assert record["environment"]["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    for name in ("sapo-orpo", "sapo-prm"):
        result = record["results"][name]
        assert "error" not in result, result
        assert result["global_step"] == steps and len(result["steps"]) == steps
        assert result["timed_steps"] == steps - 2  # --warmup 2
        assert all(0 < step["tokens"] <= step["positions"] for step in result["steps"])
        assert result["tokens_per_second"] > 0
        assert set(result["memory"]) == {"after_load", "forward", "backward", "optimizer_step"}
        assert all(gib > 0 for gib in result["memory"].values())
        assert result["peak_rss_gib"] == max(result["memory"].values())
    assert "trl_envs.sh" in record["results"]["trl-orpo"]["error"]
    assert "| sapo-orpo |" in record["table"] and "| trl-orpo |" in record["table"]


def test_accumulated_micro_batches_make_one_step_record_each(bench, driven, tmp_path):
    """With --accumulate 2 each optimizer step is recorded once, with the tokens of both of its micro-batches:
    the same rows per step, in the same order, as one batch of the whole size (the driver's run above)."""
    record, folder = driven
    out = tmp_path / "speed_2.json"
    bench.main(["--smoke", "--model", str(folder), "--batch-size", "4", "--threads", "1"]
               + ["--accumulate", "2", "--only", "sapo-orpo", "--out", str(out)])  # fmt: skip
    whole, halves = record["results"]["sapo-orpo"], json.loads(out.read_text())["results"]["sapo-orpo"]
    assert halves["global_step"] == whole["global_step"] == 3
    assert [s["step"] for s in halves["steps"]] == [1, 2, 3]
    assert [s["tokens"] for s in halves["steps"]] == [s["tokens"] for s in whole["steps"]]
    with pytest.raises(SystemExit):  # 4 rows do not split into 3 micro-batches
        bench.parse_args(["--batch-size", "4", "--accumulate", "3"])


def test_a_loop_rounds_rows_train_in_the_loops_batches_with_and_without_shared_prefixes(
    bench, tmp_path, sapo_cache_dir
):
    """--sapo-pairs: sapo's ORPO trains on a round's own rows (pairs beside rows without a rejected side) in
    the loop's length-grouped batches; --no-shared-prefix gives each side its own pass. Both count the same
    tokens (each side whole), step by step; --prm-lora trains the PRM's adapter; TRL cannot join either."""
    from sapo.data.preference import PreferencePair
    from sapo.data.trajectory import write_jsonl

    folder = _tiny_folder(tmp_path / "tiny", sapo_cache_dir)
    rows = [
        PreferencePair(f"q{i}", f"Q{i}: {i}+1?\n", [f"{i} + 1 = {i + 1}", f"The answer is {i + 1}"])
        for i in range(12)
    ]
    for pair in rows[::3]:  # a third of the rows with a rejected side, as in the demo's round 1
        pair.rejected = ["1 + 1 = 3", "The answer is 3"]
    pairs = write_jsonl(rows, tmp_path / "pairs_1.jsonl")
    tokens = {}
    for shared, only in (("--shared-prefix", "sapo-orpo,sapo-prm"), ("--no-shared-prefix", "sapo-orpo")):
        out = tmp_path / f"{shared}.json"
        bench.main(["--smoke", "--model", str(folder), "--batch-size", "4", "--threads", "1", shared]
                   + ["--sapo-pairs", str(pairs), "--only", only, "--prm-lora"]
                   + ["--out", str(out)])  # fmt: skip
        record = json.loads(out.read_text())
        assert record["data"]["sapo_pairs"] == {"rows": 12, "with_rejected": 4}
        assert record["settings"]["shared_prefix"] is (shared == "--shared-prefix")
        if "sapo-prm" in only:
            assert "error" not in record["results"]["sapo-prm"]  # the PRM's adapter trains
        tokens[shared] = [step["tokens"] for step in record["results"]["sapo-orpo"]["steps"]]
    assert tokens["--shared-prefix"] == tokens["--no-shared-prefix"] and len(tokens["--shared-prefix"]) == 3
    with pytest.raises(SystemExit):
        bench.parse_args(["--sapo-pairs", str(pairs)])  # trl-orpo is among the default trainers
    with pytest.raises(SystemExit):
        bench.parse_args(["--sapo-pairs", str(tmp_path / "missing.jsonl"), "--only", "sapo-orpo"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--prm-lora", "--only", "sapo-prm,trl-prm"])
