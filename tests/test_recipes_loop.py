"""The GSM8K and MBPP loop recipes, end to end on the packaged SmolLM2-135M-Instruct at smoke size.

The recipes are written for Qwen2.5-0.5B on a GPU with hub data; here only the sizes, the model and the
data files change (the local copies of the benchmarks), so every phase of the recipe as written runs: SFT,
sampling, binary-search and first-error labels, the verifier, pairs, ORPO and the held-out evaluation, with
MBPP's programs checked in the sandbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from sapo.data.tasks.gsm8k import GSM8KTask
from sapo.data.trajectory import first_error_of

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SAPO = Path(sys.executable).with_name("sapo")

RECIPES = {
    "gsm8k_qwen2.5-0.5b.yaml": (SHARED_DATA / "gsm8k" / "train.jsonl", SHARED_DATA / "gsm8k" / "test.jsonl"),
    "mbpp_qwen2.5-0.5b.yaml": (SHARED_DATA / "mbpp" / "mbpp.jsonl", SHARED_DATA / "mbpp" / "mbpp.jsonl"),
}

SMOKE_SIZE = {
    "trainer.accelerator": "cpu",
    "trainer.precision": "32-true",
    "trainer.limit_train_batches": "2",  # every training phase trains, on at most 2 batches (4 s each here)
    "model.init_args.reasoner.name_or_path": "smollm2-135m-instruct",
    "model.init_args.reasoner.gradient_checkpointing": "false",
    "model.init_args.iterations": "1",
    "model.init_args.sft.epochs": "1",
    "model.init_args.sampling.samples_per_question": "2",
    "model.init_args.sampling.max_new_tokens": "32",
    "model.init_args.sampling.batch_size": "8",
    "model.init_args.labelling.initial_strategy.init_args.k": "2",
    "model.init_args.labelling.strategy.init_args.k": "2",
    "model.init_args.labelling.per_iteration": "2",
    "model.init_args.verifier.epochs": "1",
    "model.init_args.pairs.margin": "0.0",
    "model.init_args.pairs.max_per_question": "1",
    "model.init_args.orpo.epochs": "1",
    "model.init_args.evaluation.questions": "1",
    "model.init_args.evaluation.max_new_tokens": "32",
    "model.init_args.evaluation.batch_size": "8",
    "data.init_args.batch_size": "2",
    "data.init_args.max_length": "256",
    "data.init_args.task.init_args.stop": "2",
    "data.init_args.heldout_task.init_args.stop": "1",
}


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _fit(recipe: str, size: dict[str, str], run_dir: Path, cache: str, train: Path, test: Path) -> None:
    """``sapo fit`` on ``recipe`` at ``size``, the run in ``run_dir``, data from the local files."""
    overrides = {
        **size,
        "model.init_args.run_dir": str(run_dir),
        "model.init_args.reasoner.cache_dir": cache,
        "trainer.default_root_dir": str(run_dir),
        "data.init_args.task.init_args.source": str(train),
        "data.init_args.heldout_task.init_args.source": str(test),
    }
    command = [str(SAPO), "fit", "--config", str(CONFIGS / recipe)]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    result = subprocess.run(command, cwd=run_dir.parent, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.spread
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_the_recipe_runs_end_to_end_on_the_packaged_model(recipe, tmp_path, sapo_cache_dir):
    train, test = RECIPES[recipe]
    if not train.is_file():
        pytest.fail(f"the shared benchmark files are missing: {train}")
    run_dir = tmp_path / "run"
    _fit(recipe, SMOKE_SIZE, run_dir, sapo_cache_dir, train, test)

    phases = json.loads((run_dir / "manifest.json").read_text())["phases"]
    expected = ["sft", "samples_0", "labels_0", "verifier_0", "eval_0"]
    expected += ["samples_1", "labels_1", "verifier_1", "pairs_1", "orpo_1", "eval_1"]
    assert list(phases) == expected
    assert phases["sft"]["pairs"] == 2  # the task's 2 gold solutions
    assert phases["samples_1"]["trajectories"] >= 1
    assert phases["labels_0"]["strategy"] == "BinarySearchSupervision"
    assert phases["labels_1"]["strategy"] == "FirstErrorSupervision"
    heldout = [json.loads(line) for line in (run_dir / "heldout_1.jsonl").read_text().splitlines()]
    assert len(heldout) == 1 and heldout[0]["outcome"] in (True, False)
    assert phases["eval_1"]["heldout_accuracy"] == float(heldout[0]["outcome"])
    assert all(phases[p]["memory"]["peak_rss_gib"] > 0 for p in expected)
    assert (run_dir / "iteration_1" / "reasoner" / "config.json").is_file()
    assert "| 1 | " in (run_dir / "report.md").read_text()


VERIFIER_SMOKE_SIZE = {
    key: value
    for key, value in SMOKE_SIZE.items()
    if key != "model.init_args.iterations" and ".labelling.strategy." not in key
}


@pytest.mark.slow
@pytest.mark.spread
def test_the_gsm8k_verifier_recipe_and_its_processbench_rows(tmp_path, sapo_cache_dir):
    """configs/verifier_gsm8k.yaml runs iteration 0 alone on the packaged model, and
    benchmarks/gsm8k_verifier.py turns its held-out answers and the test references into oracle-labelled
    ProcessBench rows scored by the run's verifier."""
    train, test = SHARED_DATA / "gsm8k" / "train.jsonl", SHARED_DATA / "gsm8k" / "test.jsonl"
    if not train.is_file():
        pytest.fail(f"the shared benchmark files are missing: {train}")
    run_dir = tmp_path / "run"
    size = {
        **VERIFIER_SMOKE_SIZE,
        "model.init_args.evaluation.questions": "4",
        "data.init_args.heldout_task.init_args.stop": "4",
        "data.init_args.gold_solutions": "1",
    }
    _fit("verifier_gsm8k.yaml", size, run_dir, sapo_cache_dir, train, test)
    phases = json.loads((run_dir / "manifest.json").read_text())["phases"]
    assert list(phases) == ["sft", "samples_0", "labels_0", "verifier_0", "eval_0"]
    assert phases["labels_0"]["strategy"] == "BinarySearchSupervision"

    out = tmp_path / "bench"
    script = CONFIGS.parent / "benchmarks" / "gsm8k_verifier.py"
    command = [sys.executable, str(script), "--run", str(run_dir), "--test", str(test), "--dtype", "float32"]
    result = subprocess.run(
        [*command, "--out", str(out)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "gsm8k_verifier.json").read_text())
    rows = [json.loads(line) for line in (out / "processbench_rows.jsonl").read_text().splitlines()]
    answers = [r for r in rows if r["generator"] == "reasoner"]
    references = [r for r in rows if r["generator"] == "reference"]
    assert len(answers) == summary["answers"] and len(references) == summary["references"]
    assert summary["references"] + summary["references_rejected_by_oracle"] == summary["questions"] == 4
    assert all(r["label"] == -1 for r in references)  # kept only where the oracle calls every step right
    # every answer row's label is the oracle's first error of that greedy answer
    heldout = {
        t["question_id"]: t for t in map(json.loads, (run_dir / "heldout_0.jsonl").read_text().splitlines())
    }
    task = GSM8KTask(source=str(test), split="test", stop=4)
    by_id = {q.id: q for q in task.load()}
    for row in answers:
        question_id = row["id"].removesuffix("/reasoner")
        assert row["steps"] == heldout[question_id]["steps"]
        trajectory = task.trajectory(by_id[question_id], heldout[question_id]["meta"]["completion"])
        assert row["label"] == first_error_of(task.oracle_labels(trajectory, by_id[question_id]))
    chosen = summary["threshold_chosen"]
    first_half = set(chosen["chosen_on_questions"])
    assert len(first_half) == 2
    evaluated = [r for r in rows if r["id"].rsplit("/", 1)[0] not in first_half]
    scores = chosen["sets"]["answers + references"]
    assert scores["num_error"] + scores["num_correct"] == len(evaluated)
    assert scores["num_correct"] == len([r for r in evaluated if r["label"] == -1])
