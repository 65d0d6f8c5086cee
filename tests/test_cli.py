"""The `sapo` command: help, printing a recipe, running the smoke recipe, and refusing bad configs."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import SHARED_DATA
from transformers import AutoModelForCausalLM

from sapo import cli
from sapo.cli import SapoCLI
from sapo.models import precision as precision_module

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SAPO = Path(sys.executable).parent / "sapo"


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
        "verifier_gsm8k.yaml": [str(gsm8k / "train.jsonl"), str(gsm8k / "test.jsonl")],
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
    loop = "Evolution" in (CONFIGS / recipe).read_text() or len(args) > 2
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


@pytest.mark.parametrize(
    ("precision", "accelerator", "choice", "fast", "expected"),
    [
        ("bf16-mixed", "cpu", "float32", False, "32-true"),
        ("bf16-true", "auto", "float32", False, "32-true"),  # auto on a machine without a GPU: the CPU
        ("bf16", "cpu", "float32", False, "32-true"),
        ("bf16-mixed", "cpu", "keep", False, "bf16-mixed"),
        ("bf16-mixed", "cpu", "float32", True, "bf16-mixed"),  # avx512_bf16 or AMX: bfloat16 is fast
        ("bf16-mixed", "gpu", "float32", False, "bf16-mixed"),
        ("32-true", "cpu", "float32", False, "32-true"),
        ("16-mixed", "cpu", "float32", False, "16-mixed"),
    ],
)
def test_bfloat16_runs_as_float32_only_on_a_cpu_that_emulates_it(
    precision, accelerator, choice, fast, expected, monkeypatch
):
    monkeypatch.setattr(precision_module, "computes_bfloat16_fast", lambda device: fast)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    resolved, note = precision_module.precision_on_this_machine(precision, accelerator, choice)
    assert resolved == expected
    assert (note is not None) == (resolved != precision)
    if note is not None:
        assert f"trainer.precision {precision} runs as 32-true" in note and "emulated_bfloat16: keep" in note
    with pytest.raises(ValueError, match="emulated_bfloat16 must be one of"):
        precision_module.precision_on_this_machine(precision, accelerator, "bfloat16")


@pytest.mark.parametrize(("choice", "expected"), [(None, "32-true"), ("keep", "bf16-mixed")])
def test_the_command_builds_its_trainer_in_float32_where_bfloat16_is_emulated(
    choice, expected, tmp_path, monkeypatch, capsys, sapo_cache_dir
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(precision_module, "computes_bfloat16_fast", lambda device: False)
    args = ["--config", str(CONFIGS / "smoke.yaml"), "--trainer.precision", "bf16-mixed"]
    args += ["--model.init_args.reasoner.cache_dir", sapo_cache_dir]
    if choice is not None:
        args += ["--emulated_bfloat16", choice]
    built = SapoCLI(args=args, run=False)
    assert built.trainer.precision == expected
    said = capsys.readouterr().err
    assert ("sapo: trainer.precision bf16-mixed runs as 32-true" in said) == (expected == "32-true")


# --- the console command: one-line errors, --print_config with comments, help, quiet output -----------------

NOISE = ("GPU available", "TPU available", "litlogger", "FutureWarning")

#: the bad values of test_a_bad_value_is_one_line_naming_the_key: id -> (override, the whole message)
BAD_VALUES = {
    "k": (
        ["--model.init_args.labelling.strategy.init_args.k", "-2"],
        # the strategy's own message names no key: the command finds the one component it came from
        "sapo: error: model.init_args.labelling.strategy.init_args.k must be at least 1, got -2\n",
    ),
    "margin": (
        ["--model.init_args.pairs.margin", "1.5"],
        "sapo: error: model.init_args.pairs.margin must be in [0, 1] (a difference of mean step scores), "
        "got 1.5\n",
    ),
    "unknown-key": (
        ["--model.init_args.pairs.marginn", "0.3"],
        "sapo: error: unknown key model.init_args.pairs.marginn\n",
    ),
    "type": (
        ["--data.init_args.batch_size", "many"],
        "sapo: error: data.init_args.batch_size: Expected a <class 'int'>. Got value: many\n",
    ),
}


def _smoke(workdir: Path, *override: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(CONFIGS / "smoke.yaml"),
        "--model.init_args.run_dir",
        str(workdir / "run"),
        *override,
    ]


@pytest.fixture(scope="module")
def console(tmp_path_factory) -> dict:
    """What the command printed and returned for each console call of the tests below, by name (each with its
    own empty working directory ``<root>/<name>``, and ``root`` itself). The calls run one after the other in
    one interpreter (tests/console_calls.py): a process each would spend about 10 s each on imports."""
    root = tmp_path_factory.mktemp("console")
    (root / "broken.yaml").write_text("model:\n  init_args:\n    pairs: {margin: 0.3\n    run_dir: x\n")
    banner = _smoke(
        root / "banner", "--ckpt_path", str(root / "last.ckpt")
    )  # refused once the trainer is built
    calls = {  # name -> (args, SAPO_DEBUG); the calls with SAPO_DEBUG first (see console_calls.py)
        "debug": (_smoke(root / "debug", *BAD_VALUES["k"][0]), True),
        "banner-loud": (banner, True),
        "banner": (banner, False),
        **{
            f"bad-{name}": (_smoke(root / f"bad-{name}", *override), False)
            for name, (override, _) in BAD_VALUES.items()
        },
        "missing": (["fit", "--config", str(root / "nosuch.yaml")], False),
        "yaml": (
            ["fit", "--config", str(CONFIGS / "smoke.yaml"), "--config", str(root / "broken.yaml")],
            False,
        ),
        "print-config": (["fit", "--print_config"], False),
        "print-config-plain": (["fit", "--print_config="], False),  # jsonargparse's flags still work
        "fit-help": (["fit", "--help"], False),
    }
    listed = []
    for name, (args, debug) in calls.items():
        workdir = root / ("banner" if name.startswith("banner") else name)
        workdir.mkdir(exist_ok=True)
        listed.append({"name": name, "args": args, "cwd": str(workdir), "debug": debug})
    (root / "calls.json").write_text(json.dumps(listed))
    env = {key: value for key, value in os.environ.items() if key != "SAPO_DEBUG"}
    script = Path(__file__).with_name("console_calls.py")
    subprocess.run(
        [sys.executable, str(script), str(root / "calls.json"), str(root / "results.json")],
        env=env, cwd=root, check=True, timeout=600,
    )  # fmt: skip
    results = json.loads((root / "results.json").read_text())
    return {"root": root, **{name: SimpleNamespace(**result) for name, result in results.items()}}


def _nothing_started(workdir: Path) -> bool:
    """No run directory, log or saved config appeared in the command's working directory."""
    return not any(workdir.iterdir())


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_a_bad_value_is_one_line_naming_the_key(name, console):
    result, message = console[f"bad-{name}"], BAD_VALUES[name][1]
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr
    assert len(result.stderr.splitlines()) <= 2  # the message, after Lightning's "Seed set to 0"
    assert _nothing_started(console["root"] / f"bad-{name}")


def test_a_missing_config_file_is_named(console):
    result, missing = console["missing"], console["root"] / "nosuch.yaml"
    assert result.returncode == 2
    assert result.stderr == f"sapo: error: --config {missing}: no such file\n"
    assert _nothing_started(console["root"] / "missing")


def test_a_yaml_syntax_error_names_the_file_line_and_column(console):
    result, recipe = console["yaml"], console["root"] / "broken.yaml"
    assert result.returncode == 2
    assert result.stderr.startswith(f"sapo: error: {recipe}, line 4, column 12: ")
    assert "<unicode string>" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert _nothing_started(console["root"] / "yaml")


def test_sapo_debug_gives_the_traceback(console):
    result = console["debug"]
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "k must be at least 1, got -2" in result.stderr and "sapo: error:" not in result.stderr
    assert _nothing_started(console["root"] / "debug")


def test_print_config_prints_the_help_as_comments(console):
    commented, plain = console["print-config"], console["print-config-plain"]
    assert commented.returncode == 0 and plain.returncode == 0, commented.stderr + plain.stderr
    # without --config the recipe is sapo's defaults, and says so first
    assert commented.stdout.splitlines()[0] == cli.DEFAULTS_LABEL == plain.stdout.splitlines()[0]
    comments = " ".join(
        " ".join(line.split()) for line in commented.stdout.splitlines() if line.lstrip().startswith("#")
    )
    # a settings dataclass's field docstring (sapo/evolution/settings.py) ...
    assert "# K, trajectories sampled per question and iteration. The paper does not say" in comments
    # ... and a class's Args: docstring (SelfEvolution's run_dir)
    assert "# where every phase's artifacts, the manifest and the report go" in comments
    assert not [
        line for line in plain.stdout.splitlines()[2:] if line.lstrip().startswith("#")
    ]  # no comments
    assert yaml.safe_load(commented.stdout) == yaml.safe_load(plain.stdout)
    assert yaml.safe_load(plain.stdout)["model"]["init_args"]["sampling"]["samples_per_question"] == 8


def test_fit_help_says_how_to_see_the_loops_arguments(console):
    result = console["fit-help"]
    assert result.returncode == 0
    head = " ".join(result.stdout.split("options:")[0].split())  # the description, above the options
    assert "`sapo fit --model.help sapo.evolution.SelfEvolution`" in head


def test_lightnings_banner_lines_are_left_out_unless_debugging(console):
    """A `sapo fit` that builds its trainer, then stops before any work (--ckpt_path is refused)."""
    quiet, loud = console["banner"], console["banner-loud"]
    assert quiet.returncode == 2
    assert "sapo: error: --ckpt_path does not apply to the self-evolution loop" in quiet.stderr
    assert not [line for line in (quiet.stdout + quiet.stderr).splitlines() if any(n in line for n in NOISE)]
    assert "GPU available" in loud.stderr + loud.stdout and "Traceback" in loud.stderr
    assert _nothing_started(console["root"] / "banner")


def test_quiet_leaves_out_only_the_known_noise():
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    cuda = logging.getLogger("lightning.pytorch.accelerators.cuda")
    level = cuda.level
    message = "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing`"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli._quiet()
            warnings.warn_explicit(
                message, FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils"
            )
            assert not caught
            warnings.warn_explicit(
                message, FutureWarning, "mine.py", 1, module="mypackage.mine"
            )  # not that one
            warnings.warn_explicit(
                "something else", FutureWarning, "modeling_utils.py", 2, module="transformers.modeling_utils"
            )
            assert len(caught) == 2

        def shown(text: str) -> bool:
            return rank_zero.filter(logging.LogRecord(rank_zero.name, logging.INFO, "", 0, text, None, None))

        assert not shown("GPU available: False, used: False")
        assert not shown("TPU available: False, using: 0 TPU cores")
        assert not shown(
            "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]"
        )
        assert not shown(
            "`Trainer(limit_train_batches=1.0)` was configured so 100% of the batches per epoch will be used.."
        )
        assert shown("`Trainer.fit` stopped: `max_epochs=1` reached.")
        assert shown("`Trainer(limit_train_batches=4)` was configured so 4 batches per epoch will be used.")
    finally:
        rank_zero.removeFilter(cli._NOISE_FILTER)
        logging.getLogger("lightning.fabric.utilities.rank_zero").removeFilter(cli._NOISE_FILTER)
        cuda.setLevel(level)


def test_a_constructors_message_gets_a_key_only_when_one_component_matches():
    """The key is found by the failing component's class and arguments; when two are the same, none is named."""

    def message(*override: str) -> str:
        args = ["--config", str(CONFIGS / "smoke.yaml"), *override]
        with pytest.raises(ValueError) as error:
            SapoCLI(args=args, run=False)
        return cli.error_message(error.value)

    first_error = "sapo.supervision.FirstErrorSupervision"
    initial = ["--model.init_args.labelling.initial_strategy", first_error]
    # the same class as the strategy, other arguments: one match
    assert message(*initial, "--model.init_args.labelling.initial_strategy.init_args.k", "-2") == (
        "model.init_args.labelling.initial_strategy.init_args.k must be at least 1, got -2"
    )
    both = [*initial, "--model.init_args.labelling.initial_strategy.init_args.k", "-2"]
    both += ["--model.init_args.labelling.strategy.init_args.k", "-2"]
    assert message(*both) == "k must be at least 1, got -2"  # two identical components: no key is sure


def _leaves(tree, where: str = ""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{where}.{key}" if where else key)
    else:
        yield where, tree


def test_the_library_defaults_are_what_sapo_fit_records_for_an_unset_setting(capsys):
    # a run recorded before a setting existed resumes when the setting is at the value these defaults give
    from sapo.evolution import SAPSDataModule, SelfEvolution
    from sapo.evolution.run_directory import library_defaults

    code, out, err = _sapo(capsys, "fit", "--print_config")
    assert code == 0, err
    printed = dict(_leaves({key: yaml.safe_load(out)[key] for key in ("model", "data")}))
    defaults = dict(_leaves(library_defaults(model=SelfEvolution, data=SAPSDataModule)))
    assert len(defaults) > 60 and "model.init_args.pairs.rejected_from_first_error" in defaults
    assert defaults == {key: printed.get(key, "not printed") for key in defaults}
