"""The `sapo` command: help, printing a recipe, running the smoke recipe, and refusing bad configs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SHARED_DATA
from transformers import AutoModelForCausalLM

from sapo.cli import SapoCLI

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _sapo(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (parsing only costs milliseconds here); return exit code and output."""
    with pytest.raises(SystemExit) as exit_info:
        SapoCLI(args=list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def test_console_script_help_lists_the_subcommands():
    sapo = Path(sys.executable).parent / "sapo"
    result = subprocess.run([str(sapo), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict"):
        assert command in result.stdout
    assert "sapo" in result.stdout


def test_print_config_gives_a_complete_recipe(capsys):
    code, out, err = _sapo(capsys, "fit", "--print_config")
    assert code == 0, err
    config = yaml.safe_load(out)
    assert config["model"]["class_path"] == "sapo.evolution.SelfEvolution"
    assert config["model"]["init_args"]["reasoner"]["name_or_path"] == "smollm2-135m-instruct"
    assert config["data"]["init_args"]["task"]["class_path"].endswith("ArithmeticTask")
    assert config["model"]["init_args"]["pairs"]["margin"] == 0.3  # every default is printed
    assert config["model"]["init_args"]["sampling"]["backend"] == "transformers"


def _recipe_args(recipe: str) -> list[str]:
    """A recipe, or an overlay (no model class of its own) applied on top of the demo recipe."""
    config = yaml.safe_load((CONFIGS / recipe).read_text())
    if "class_path" not in config.get("model", {}):
        return ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONFIGS / recipe)]
    return ["--config", str(CONFIGS / recipe)]


RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_parses(recipe, capsys):
    code, out, err = _sapo(capsys, "fit", *_recipe_args(recipe), "--print_config")
    assert code == 0, err
    assert yaml.safe_load(out)["model"]["class_path"].startswith("sapo.")


def test_smoke_recipe_trains_and_measures(tmp_path, monkeypatch, sapo_cache_dir):
    monkeypatch.chdir(tmp_path)
    SapoCLI(
        args=[
            "fit",
            "--config",
            str(CONFIGS / "sft_smoke.yaml"),
            "--model.init_args.backbone.cache_dir",
            sapo_cache_dir,
        ]
    )
    logs = tmp_path / "runs" / "sft_smoke" / "logs" / "version_0"
    rows = list(csv.DictReader((logs / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    accuracies = [r["val/accuracy"] for r in rows if r.get("val/accuracy")]
    assert len(accuracies) == 3  # before training and at both validations
    start = [json.loads(line) for line in (logs / "heldout_start.jsonl").open()]
    assert len(start) == 8 and all(r["outcome"] in (True, False) for r in start)
    assert (logs / "heldout_step3.jsonl").exists() and (logs / "heldout_step6.jsonl").exists()
    exported = tmp_path / "runs" / "sft_smoke" / "reasoner"
    model = AutoModelForCausalLM.from_pretrained(exported)
    assert model.num_parameters() > 0 and (exported / "tokenizer.json").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        (["--trainer.max_stepz", "3"], "max_stepz"),
        (["--data.init_args.batch_size", "many"], "batch_size"),
        (["--model.class_path", "sapo.models.NoSuchReasoner"], "NoSuchReasoner"),
        (["--data.init_args.task.init_args.max_steps", "-2"], "max_steps"),
    ],
)
def test_bad_config_fails_naming_the_key(override, message, capsys):
    args = ["fit", "--config", str(CONFIGS / "sft_smoke.yaml"), *override, "--trainer.fast_dev_run", "true"]
    try:
        code, _, err = _sapo(capsys, *args)
    except ValueError as error:  # a constructor's own check, raised while instantiating, before any work
        code, err = 1, str(error)
    assert code != 0
    assert message in err


def _local_data_overrides(recipe: str) -> list[str]:
    """Point a recipe's hub sources at the shared files (the hub is out of reach in tests)."""
    gsm8k, mbpp = SHARED_DATA / "gsm8k", SHARED_DATA / "mbpp" / "mbpp.jsonl"
    loop = {
        "gsm8k_qwen2.5-0.5b.yaml": [str(gsm8k / "train.jsonl"), str(gsm8k / "test.jsonl")],
        "mbpp_qwen2.5-0.5b.yaml": [str(mbpp), str(mbpp)],
    }
    if recipe in loop:
        train, heldout = loop[recipe]
        return [
            "--data.init_args.task.init_args.source",
            train,
            "--data.init_args.heldout_task.init_args.source",
            heldout,
            "--trainer.accelerator",
            "cpu",
        ]
    return {
        "sft_gsm8k.yaml": [
            "--data.init_args.task.init_args.source",
            str(gsm8k / "train.jsonl"),
            "--data.init_args.val_task.init_args.source",
            str(gsm8k / "test.jsonl"),
        ],
        "sft_mbpp.yaml": [
            "--data.init_args.task.init_args.source",
            str(mbpp),
            "--data.init_args.val_task.init_args.source",
            str(mbpp),
        ],
    }.get(recipe, [])


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_builds_and_its_task_gives_gold_solutions(recipe, tmp_path, monkeypatch, sapo_cache_dir):
    monkeypatch.chdir(tmp_path)
    args = _recipe_args(recipe)
    loop = "SelfEvolution" in (CONFIGS / recipe).read_text() or len(args) > 2
    backbone = "reasoner" if loop else "backbone"
    args += [  # run=False: no subcommand, the classes are only instantiated
        *_local_data_overrides(recipe),
        f"--model.init_args.{backbone}.name_or_path",
        "tiny-random",
        f"--model.init_args.{backbone}.cache_dir",
        sapo_cache_dir,
    ]
    cli = SapoCLI(args=args, run=False)
    task = cli.datamodule.task
    questions = task.load()
    assert questions
    gold = task.gold_trajectory(questions[0])
    assert gold.steps and gold.labels == [1.0] * len(gold.steps)
    # The gold solution, written out as a completion, passes the task's own check.
    assert task.trajectory(questions[0], task.completion_text(gold.steps)).outcome is True
