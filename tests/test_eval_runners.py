"""Evaluations run by configuration (sapo.eval.runners): `sapo test` on the eval recipes with the tiny model,
every number checked against the per-item files; ProcessBench with a saved tiny verifier; best-of-N with a
reasoner that writes planned answers; the recipes parse; bad arguments are refused by name; the evaluation
benchmark script runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from test_eval_reasoner import math_completion, written_reasoner

from sapo.cli import SapoCLI
from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.eval.best_of_n import AGGREGATES, pick_best
from sapo.eval.runners import (
    BestOfNEvaluation,
    Evaluation,
    ProcessBenchEvaluation,
    ReasonerEvaluation,
    metrics_table,
    numeric_leaves,
)
from sapo.models import TINY_RANDOM, BackboneSpec, PRMVerifier
from sapo.models.reasoner import ORPOReasoner
from sapo.models.verifier_metrics import choose_threshold, first_error_prediction, processbench_f1

ROOT = Path(__file__).resolve().parents[1]
EVAL_CONFIGS = ROOT / "configs" / "eval"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model is faster on one thread, above all on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tiny_backbone(cache_dir: str) -> list[str]:
    """Overrides that swap a recipe's backbone for the tiny random model (float32, the session cache)."""
    return [
        "--model.init_args.backbone.name_or_path",
        TINY_RANDOM,
        "--model.init_args.backbone.cache_dir",
        cache_dir,
        "--model.init_args.backbone.dtype",
        "float32",
    ]


@pytest.fixture
def saved_verifier(tmp_path, sapo_cache_dir) -> Path:
    """A tiny PRMVerifier (random weights, seeded head) saved with save_pretrained."""
    torch.manual_seed(3)
    verifier = PRMVerifier(BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir))
    return verifier.save_pretrained(tmp_path / "verifier")


def cpu_trainer() -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)


# --------------------------------------------------------------------------------------------- reasoners


def test_sapo_test_on_the_arithmetic_recipe_writes_items_summary_config_and_logs(
    tmp_path, monkeypatch, sapo_cache_dir, capsys
):
    monkeypatch.chdir(tmp_path)
    cli = SapoCLI(
        args=[
            "test",
            "--config",
            str(EVAL_CONFIGS / "arithmetic.yaml"),
            *tiny_backbone(sapo_cache_dir),
            "--data.init_args.task.init_args.num_questions",
            "4",
            "--data.init_args.questions",
            "3",  # the first 3 of the task's 4
            "--data.init_args.max_new_tokens",
            "12",
            "--data.init_args.batch_size",
            "2",
        ]
    )
    out = tmp_path / "runs" / "eval" / "arithmetic"
    items = read_jsonl(out / "arithmetic_items.jsonl")
    task = ArithmeticTask(split="test", num_questions=4, min_steps=2, max_steps=4)
    assert [item["question_id"] for item in items] == [q.id for q in task.load()[:3]]
    summary = json.loads((out / "arithmetic_summary.json").read_text())
    flags = [flag for item in items for flag in item["correct"]]
    assert summary["accuracy"] == sum(flags) / len(flags)
    assert summary["num_questions"] == 3 and summary["pass_at_k"]["1"] == summary["accuracy"]
    assert summary["settings"]["model"] == TINY_RANDOM and summary["settings"]["max_new_tokens"] == 12
    assert summary["generated_tokens"] == sum(n for item in items for n in item["generated_tokens"])
    assert all(0 < n <= 12 for item in items for n in item["generated_tokens"])
    assert cli.evaluation_summary == summary
    # the completed recipe, with the overrides, is saved beside the results
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["init_args"]["backbone"]["name_or_path"] == TINY_RANDOM
    assert config["data"]["init_args"]["questions"] == 3
    # the metrics went to the recipe's CSV logger and were printed
    rows = list(csv.DictReader((out / "logs" / "version_0" / "metrics.csv").open()))
    assert float(rows[0]["arithmetic/accuracy"]) == summary["accuracy"]
    assert float(rows[0]["arithmetic/num_questions"]) == 3
    printed = capsys.readouterr().out
    assert "| arithmetic/accuracy |" in printed and "| arithmetic/strict_accuracy |" in printed


def test_accuracy_is_the_share_of_correct_samples_with_a_reasoner_that_writes_known_answers(
    tmp_path, monkeypatch, sapo_cache_dir, tiny_model_and_tokenizer
):
    monkeypatch.chdir(tmp_path)
    args = [
        "--config",
        str(EVAL_CONFIGS / "arithmetic.yaml"),
        *tiny_backbone(sapo_cache_dir),
        "--data.init_args.task.init_args.num_questions",
        "4",
        "--data.init_args.num_samples",
        "2",
        "--data.init_args.temperature",
        "1.0",
        "--data.init_args.ks",
        "[1, 2]",
        "--data.init_args.out_dir",
        "written",
    ]
    cli = SapoCLI(args=args, run=False)
    questions = cli.datamodule.task.load()
    kinds = [["right", "wrong"], ["wrong", "wrong"], ["right", "right"], ["flexible_only", "strict_only"]]
    plans = {q.question: [math_completion(k, q) for k in ks] for q, ks in zip(questions, kinds, strict=True)}
    cli.model.model, cli.model.tokenizer = written_reasoner(tiny_model_and_tokenizer, plans)
    summary = cli.run_evaluation(cli.model, cli.datamodule)
    items = read_jsonl(tmp_path / "written" / "arithmetic_items.jsonl")
    assert [item["correct"] for item in items] == [[True, False], [False, False], [True, True], [True, True]]
    assert summary["accuracy"] == 5 / 8
    assert summary["pass_at_k"] == {"1": pytest.approx(5 / 8), "2": 0.75}
    assert summary["strict_accuracy"] == 4 / 8 and summary["flexible_accuracy"] == 4 / 8
    metrics = cli.datamodule.metrics(summary)
    assert metrics["arithmetic/pass@2"] == 0.75 and metrics["arithmetic/accuracy"] == 5 / 8
    assert set(metrics) == {
        "arithmetic/accuracy",
        "arithmetic/num_questions",
        "arithmetic/pass@1",
        "arithmetic/pass@2",
        "arithmetic/strict_accuracy",
        "arithmetic/flexible_accuracy",
    }


def test_other_data_modules_still_go_to_the_trainer(tmp_path, monkeypatch, sapo_cache_dir):
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "configs" / "sft_smoke.yaml"
    SapoCLI(
        args=["validate", "--config", str(recipe), "--model.init_args.backbone.cache_dir", sapo_cache_dir]
    )
    rows = list(
        csv.DictReader((tmp_path / "runs" / "sft_smoke" / "logs" / "version_0" / "metrics.csv").open())
    )
    assert any(row.get("val/loss") for row in rows)  # Trainer.validate ran the validation loop
    assert not (tmp_path / "runs" / "eval").exists()


# --------------------------------------------------------------------------------------------- ProcessBench


def processbench_rows(prefix: str) -> list[dict]:
    """Seven rows: errors at various steps and correct solutions, steps of different lengths."""
    specs = [(-1, 3), (0, 2), (1, 3), (2, 4), (-1, 2), (1, 2), (-1, 4)]
    return [
        {
            "id": f"{prefix}{i}",
            "problem": f"Ann has {i + 2} apples and buys {i + 3} more. How many apples does she have?",
            "steps": [f"Step {j}: {i + 2} + {j} = {i + 2 + j}." for j in range(steps)],
            "label": label,
            "final_answer_correct": label == -1,
        }
        for i, (label, steps) in enumerate(specs)
    ]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def reference_scores(folder: Path, path: Path) -> list[list[float]]:
    """The saved verifier's own step scores of a file's rows, loaded independently of the runner."""
    from sapo.eval.processbench import read_processbench

    verifier = PRMVerifier.from_pretrained(folder, backbone_options={"dtype": "float32"})
    return verifier.score(read_processbench(path))


def test_sapo_test_on_the_processbench_recipe_scores_the_saved_verifier(
    tmp_path, monkeypatch, sapo_cache_dir, saved_verifier
):
    monkeypatch.chdir(tmp_path)
    data = write_rows(tmp_path / "gsm8k.jsonl", processbench_rows("g"))
    scores = reference_scores(saved_verifier, data)
    values = sorted(s for row in scores for s in row)
    tau = (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2  # some steps below τ, some above
    cli = SapoCLI(
        args=[
            "test",
            "--config",
            str(EVAL_CONFIGS / "processbench.yaml"),
            "--model.init_args.path",
            str(saved_verifier),
            "--data.init_args.files",
            json.dumps([str(data)]),
            "--data.init_args.threshold",
            repr(tau),
        ]
    )
    written = json.loads((tmp_path / "runs" / "eval" / "processbench" / "processbench.json").read_text())
    assert written["threshold"] == tau and written["threshold_source"] == "given"
    result = written["sets"][str(data)]
    labels = [r["label"] for r in processbench_rows("g")]
    predictions = [first_error_prediction(s, tau) for s in scores]
    assert result["labels"] == labels
    assert result["predictions"] == predictions  # the saved head scored, not the module's new one
    assert len(set(predictions)) > 1
    expected = processbench_f1(predictions, labels)
    assert result["f1"] == pytest.approx(expected["f1"]) and result["num_error"] == 4
    assert written["mean_f1"] == pytest.approx(expected["f1"])
    metrics = cli.datamodule.metrics(cli.evaluation_summary)
    assert metrics["processbench/gsm8k/error_accuracy"] == pytest.approx(expected["error_accuracy"])
    assert metrics["processbench/threshold"] == tau


def test_without_a_saved_verifier_the_model_is_scored_with_its_checkpoint_weights(
    tmp_path, monkeypatch, sapo_cache_dir, saved_verifier
):
    monkeypatch.chdir(tmp_path)
    data = write_rows(tmp_path / "math.jsonl", processbench_rows("m"))
    trained = PRMVerifier.from_pretrained(saved_verifier, backbone_options={"dtype": "float32"})
    checkpoint = tmp_path / "verifier.ckpt"
    torch.save({"state_dict": trained.state_dict()}, checkpoint)  # what a Lightning checkpoint holds
    scores = reference_scores(saved_verifier, data)
    values = sorted(s for row in scores for s in row)
    tau = (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    SapoCLI(
        args=[
            "test",
            "--config",
            str(EVAL_CONFIGS / "processbench.yaml"),
            "--model",
            "sapo.models.verifier.PRMVerifier",
            "--model.init_args.backbone.name_or_path",
            str(saved_verifier),  # a new head: only the checkpoint makes it the trained verifier
            "--model.init_args.backbone.cache_dir",
            sapo_cache_dir,
            "--data.init_args.files",
            json.dumps([str(data)]),
            "--data.init_args.threshold",
            repr(tau),
            "--ckpt_path",
            str(checkpoint),
        ]
    )
    written = json.loads((tmp_path / "runs" / "eval" / "processbench" / "processbench.json").read_text())
    assert written["sets"][str(data)]["predictions"] == [first_error_prediction(s, tau) for s in scores]
    assert written["verifier"] == str(saved_verifier)  # the model's backbone names what was scored


def test_processbench_threshold_chosen_on_a_separate_file_with_the_module_as_verifier(
    tmp_path, saved_verifier
):
    test_file = write_rows(tmp_path / "test.jsonl", processbench_rows("t"))
    other = processbench_rows("v")
    other[0]["label"], other[4]["label"] = 1, 0  # a different set to choose τ on
    choose_file = tmp_path / "choose.json"
    choose_file.write_text(json.dumps(other), encoding="utf-8")  # a JSON array this time
    module = PRMVerifier.from_pretrained(saved_verifier, backbone_options={"dtype": "float32"})
    evaluation = ProcessBenchEvaluation(
        files=[str(test_file)], threshold_file=str(choose_file), out_dir=str(tmp_path / "out")
    )
    summary = evaluation.evaluate(module, cpu_trainer())
    tau, chosen = choose_threshold(reference_scores(saved_verifier, choose_file), [r["label"] for r in other])
    assert summary["threshold_source"] == "chosen" and summary["threshold"] == pytest.approx(tau)
    assert summary["threshold_set"] == str(choose_file)
    assert summary["threshold_metrics"]["f1"] == pytest.approx(chosen["f1"])
    predictions = [first_error_prediction(s, tau) for s in reference_scores(saved_verifier, test_file)]
    assert summary["sets"][str(test_file)]["predictions"] == predictions
    assert (
        json.loads((tmp_path / "out" / "processbench.json").read_text())["threshold"] == summary["threshold"]
    )


def test_processbench_scores_the_module_itself_without_loading_a_model(tmp_path, monkeypatch, saved_verifier):
    data = write_rows(tmp_path / "rows.jsonl", processbench_rows("p"))
    predictions = [first_error_prediction(s, 0.5) for s in reference_scores(saved_verifier, data)]
    module = PRMVerifier.from_pretrained(saved_verifier, backbone_options={"dtype": "float32"})

    def no_loading(*args, **kwargs):
        raise AssertionError("the evaluation loaded a model")

    monkeypatch.setattr(PRMVerifier, "from_pretrained", no_loading)
    monkeypatch.setattr(BackboneSpec, "load", no_loading)
    evaluation = ProcessBenchEvaluation(files=[str(data)], threshold=0.5, out_dir=str(tmp_path / "out"))
    summary = evaluation.evaluate(module, cpu_trainer())
    assert summary["sets"][str(data)]["predictions"] == predictions


def test_a_saved_verifier_is_loaded_once_where_the_weights_are(tmp_path, monkeypatch, saved_verifier):
    """Device and dtype come from the module's weights themselves (not from what its backbone spec says),
    or, for a module without weights, from the trainer; the saved verifier is the one model loaded."""
    data = write_rows(tmp_path / "rows.jsonl", processbench_rows("p"))
    predictions = [first_error_prediction(s, 0.5) for s in reference_scores(saved_verifier, data)]
    loads = []
    original = PRMVerifier.from_pretrained

    def counted(path, backbone_options=None, **overrides):
        loads.append(dict(backbone_options))
        return original(path, backbone_options=backbone_options, **overrides)

    monkeypatch.setattr(PRMVerifier, "from_pretrained", counted)
    evaluation = ProcessBenchEvaluation(
        files=[str(data)], threshold=0.5, verifier=str(saved_verifier), out_dir=str(tmp_path / "out")
    )
    summary = evaluation.evaluate(L.LightningModule(), cpu_trainer())  # no weights: the trainer decides
    assert loads == [{"device": "cpu", "dtype": "float32"}]
    assert summary["sets"][str(data)]["predictions"] == predictions  # the saved head, at full precision

    class Reasoner(L.LightningModule):  # its spec says float32, its weights are bfloat16
        def __init__(self):
            super().__init__()
            self.backbone_spec = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=str(tmp_path / "cache"))
            self.model = torch.nn.Linear(2, 2, dtype=torch.bfloat16)
            self.head = torch.nn.Linear(2, 1)  # float32, and not the backbone

    loads.clear()
    evaluation.evaluate(Reasoner(), cpu_trainer())
    assert loads == [{"device": "cpu", "dtype": "bfloat16", "cache_dir": str(tmp_path / "cache")}]


# --------------------------------------------------------------------------------------------- best-of-N


def test_best_of_n_table_is_recomputable_from_the_samples_file(
    tmp_path, monkeypatch, sapo_cache_dir, saved_verifier, tiny_model_and_tokenizer
):
    monkeypatch.chdir(tmp_path)
    args = [
        "--config",
        str(EVAL_CONFIGS / "best_of_n.yaml"),
        *tiny_backbone(sapo_cache_dir),
        "--data.init_args.verifier",
        str(saved_verifier),
        "--data.init_args.task.init_args.num_questions",
        "4",
        "--data.init_args.ns",
        "[1, 2]",
        "--data.init_args.max_new_tokens",
        "64",
    ]
    cli = SapoCLI(args=args, run=False)
    questions = cli.datamodule.task.load()
    kinds = [["wrong", "right"], ["right", "wrong"], ["wrong", "wrong"], ["right", "right"]]
    plans = {q.question: [math_completion(k, q) for k in ks] for q, ks in zip(questions, kinds, strict=True)}
    cli.model.model, cli.model.tokenizer = written_reasoner(tiny_model_and_tokenizer, plans)
    summary = cli.run_evaluation(cli.model, cli.datamodule)

    out = tmp_path / "runs" / "eval" / "best_of_n"
    records = read_jsonl(out / "arithmetic_best_of_n_samples.jsonl")
    table = json.loads((out / "arithmetic_best_of_n.json").read_text())["table"]
    assert [r["correct"] for r in records] == [[k == "right" for k in ks] for ks in kinds]
    assert table["metrics"]["1"]["pass@N"] == 0.5  # the first sample is right for 2 of 4 questions
    assert table["metrics"]["2"]["pass@N"] == 0.75
    for n in (1, 2):
        assert table["metrics"][str(n)]["pass@N"] == sum(any(r["correct"][:n]) for r in records) / 4
    task = cli.datamodule.task
    for record in records:
        for sample, scores in zip(record["samples"], record["scores"], strict=True):
            assert len(scores) == len(task.split_steps(sample)) > 0 and all(0 <= s <= 1 for s in scores)
    for name in ("min", "mean", "last", "product"):
        for record in records:
            assert record["aggregates"][name] == [AGGREGATES[name](s) for s in record["scores"]]
        picked = [r["correct"][pick_best(r["aggregates"][name][:2])] for r in records]
        assert table["metrics"]["2"][f"best_of_n/{name}"] == sum(picked) / 4
        assert table["metrics"]["1"][f"best_of_n/{name}"] == table["metrics"]["1"]["pass@N"]
    assert summary["sample_accuracy"] == 4 / 8
    markdown = (out / "arithmetic_best_of_n.md").read_text()
    assert "| pass@N | 50.00 | 75.00 |" in markdown and "| best_of_n/min |" in markdown
    metrics = cli.datamodule.metrics(summary)
    assert metrics["arithmetic/N=2/pass@N"] == 0.75 and metrics["arithmetic/sample_accuracy"] == 0.5


def test_a_sample_without_steps_scores_nothing():
    from sapo.data.trajectory import Trajectory
    from sapo.eval.runners import score_samples

    class LengthScorer:
        def score(self, trajectories):
            assert all(t.num_steps for t in trajectories)
            return [[t.num_steps / 4] * t.num_steps for t in trajectories]

    def sample(steps):
        return Trajectory("q", "question?", [f"step {i}" for i in range(steps)], outcome=False)

    shaped = score_samples(LengthScorer(), [[sample(2), sample(0)], [sample(1), sample(3)]])
    assert shaped == [[[0.5, 0.5], []], [[0.25], [0.75, 0.75, 0.75]]]


# --------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("recipe", sorted(p.name for p in EVAL_CONFIGS.glob("*.yaml")))
def test_every_eval_recipe_parses(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        SapoCLI(args=["test", "--config", str(EVAL_CONFIGS / recipe), "--print_config"])
    out, err = capsys.readouterr()
    assert (exit_info.value.code or 0) == 0, err
    config = yaml.safe_load(out)
    assert config["data"]["class_path"].startswith("sapo.eval.runners.")
    assert config["model"]["class_path"].startswith("sapo.models.")
    out_dir = config["data"]["init_args"]["out_dir"]
    assert out_dir.startswith("runs/eval/")
    assert config["trainer"]["logger"][0]["init_args"]["save_dir"] == out_dir  # logs beside the results


def test_the_eval_recipes_cover_every_evaluation():
    names = {
        yaml.safe_load(p.read_text())["data"]["class_path"].rsplit(".", 1)[1]
        for p in EVAL_CONFIGS.glob("*.yaml")
    }
    assert names == {"ReasonerEvaluation", "ProcessBenchEvaluation", "BestOfNEvaluation"}
    assert {p.stem for p in EVAL_CONFIGS.glob("*.yaml")} >= {"gsm8k", "humaneval", "mbpp", "arithmetic"}


# --------------------------------------------------------------------------------------------- bad arguments


def arithmetic_task() -> ArithmeticTask:
    return ArithmeticTask(num_questions=2)


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda d: ReasonerEvaluation(arithmetic_task(), questions=0), "questions"),
        (lambda d: ReasonerEvaluation(arithmetic_task(), num_samples=0), "num_samples"),
        (lambda d: ReasonerEvaluation(arithmetic_task(), ks=(1, 4), num_samples=2), "ks"),
        (lambda d: ReasonerEvaluation(arithmetic_task(), temperature=-0.5), "temperature"),
        (lambda d: ReasonerEvaluation(arithmetic_task(), top_p=0.0), "top_p"),
        (lambda d: ReasonerEvaluation(arithmetic_task(), max_new_tokens=0), "max_new_tokens"),
        (lambda d: ReasonerEvaluation(arithmetic_task(), batch_size=0), "batch_size"),
        (lambda d: ReasonerEvaluation(arithmetic_task(), out_dir=""), "out_dir"),
        (lambda d: ReasonerEvaluation("gsm8k"), "task"),
        (lambda d: ProcessBenchEvaluation(files=[]), "files"),
        (lambda d: ProcessBenchEvaluation(files=[str(d / "missing.jsonl")]), "files[0]"),
        (lambda d: ProcessBenchEvaluation(files=[str(d / "a.jsonl")], threshold=1.5), "threshold"),
        (
            lambda d: ProcessBenchEvaluation(
                files=[str(d / "a.jsonl")], threshold=0.5, threshold_file=str(d / "b.jsonl")
            ),
            "threshold",
        ),
        (
            lambda d: ProcessBenchEvaluation(files=[str(d / "a.jsonl")], threshold_file=str(d / "a.jsonl")),
            "threshold_file",
        ),
        (lambda d: ProcessBenchEvaluation(files=[str(d / "a.jsonl")], verifier=str(d)), "verifier"),
        (lambda d: BestOfNEvaluation(arithmetic_task(), verifier=""), "verifier"),
        (lambda d: BestOfNEvaluation(arithmetic_task(), verifier=str(d)), "verifier"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(make, argument, tmp_path):
    write_rows(tmp_path / "a.jsonl", processbench_rows("a"))
    write_rows(tmp_path / "b.jsonl", processbench_rows("b"))
    with pytest.raises(ValueError) as error:
        make(tmp_path)
    assert str(error.value).startswith(argument) or f" {argument} " in str(error.value)


@pytest.mark.parametrize(
    "options, argument",
    [
        ({"ns": (0, 2)}, "ns"),
        ({"ns": ()}, "ns"),
        ({"ns": (2, 2)}, "ns"),
        ({"aggregates": ("median",)}, "aggregates"),
        ({"temperature": 0.0}, "temperature"),  # greedy: the N samples would be equal
        ({"questions": -1}, "questions"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_best_of_n_arguments_are_refused_naming_the_argument(options, argument, saved_verifier):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        BestOfNEvaluation(arithmetic_task(), verifier=str(saved_verifier), **options)


def test_a_bad_value_in_a_recipe_stops_the_command_naming_it(capsys, sapo_cache_dir):
    args = ["test", "--config", str(EVAL_CONFIGS / "arithmetic.yaml"), *tiny_backbone(sapo_cache_dir)]
    with pytest.raises((SystemExit, ValueError)) as error:
        SapoCLI(args=[*args, "--data.init_args.ks", "[0]"])
    message = str(error.value) if isinstance(error.value, ValueError) else capsys.readouterr().err
    assert "ks" in message


def test_an_evaluation_is_no_data_module_cannot_be_fit_and_its_metrics_are_its_numbers(
    tmp_path, sapo_cache_dir
):
    evaluation = ReasonerEvaluation(arithmetic_task(), out_dir=str(tmp_path))
    assert isinstance(evaluation, Evaluation) and not isinstance(evaluation, L.LightningDataModule)
    recipe = ["--config", str(EVAL_CONFIGS / "arithmetic.yaml"), *tiny_backbone(sapo_cache_dir)]
    with pytest.raises(
        ValueError, match="run `sapo test` or `sapo validate` with this config, not `sapo fit`"
    ):
        SapoCLI(args=["fit", *recipe, "--data.init_args.out_dir", str(tmp_path / "fit")])
    assert not (tmp_path / "fit").exists()
    summary = {"a": {"b": 0.25, "flag": True, "name": "x"}, "n": 3, "rows": [1, 2]}
    assert numeric_leaves(summary) == {"a/b": 0.25, "n": 3.0}
    assert metrics_table({"a/b": 0.25, "n": 3.0}).splitlines()[2:] == ["| a/b | 0.2500 |", "| n | 3 |"]


def test_a_module_without_a_model_is_refused(tmp_path):
    class NoModel(L.LightningModule):
        pass

    evaluation = ReasonerEvaluation(arithmetic_task(), out_dir=str(tmp_path))
    with pytest.raises(TypeError, match="no `model` and `tokenizer`"):
        evaluation.evaluate(NoModel(), cpu_trainer())


# --------------------------------------------------------------------------------------------- the benchmark


def test_the_evaluation_benchmark_runs_quickly_with_the_tiny_model(tmp_path, sapo_cache_dir):
    shared = Path(os.environ.get("SAPO_SHARED_DATA", ROOT.parent / "shared" / "data"))
    files = [shared / "gsm8k" / "test.jsonl", shared / "gsm8k" / "train.jsonl"]
    files.append(shared / "humaneval" / "HumanEval.jsonl.gz")
    if not all(f.is_file() for f in files):
        pytest.skip(f"the shared data files are not in {shared}")
    sft = tmp_path / "sft"
    ORPOReasoner(BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir)).save_pretrained(
        str(sft)
    )
    out = tmp_path / "results" / "evaluation.md"
    command = [sys.executable, str(ROOT / "benchmarks" / "evaluation.py"), "--quick", "--model", TINY_RANDOM]
    command += ["--sft", str(sft), "--cache-dir", sapo_cache_dir, "--out", str(out), "--no-progress"]
    command += ["--gsm8k", str(files[0]), "--gsm8k-train", str(files[1]), "--humaneval", str(files[2])]
    command += ["--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        ["nice", "-n", "19", *command], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    header = "| model | GSM8K prompt | GSM8K strict | GSM8K flexible | HumanEval pass@1 | minutes |"
    assert header in result.stdout
    assert f"| base: `{TINY_RANDOM}` | 1-shot CoT | " in result.stdout
    assert f"| sft: `{sft}` | 0-shot | " in result.stdout
    assert "python benchmarks/evaluation.py --quick" in result.stdout
    assert out.read_text().startswith(header)
    figures = json.loads(out.with_suffix(".json").read_text())
    assert [r["row"] for r in figures["rows"]] == ["base", "sft"]
    for row in ("base", "sft"):
        gsm8k = read_jsonl(out.parent / row / "gsm8k_items.jsonl")
        humaneval = read_jsonl(out.parent / row / "humaneval_items.jsonl")
        assert len(gsm8k) == 2 and len(humaneval) == 2
        scores = next(r for r in figures["rows"] if r["row"] == row)["scores"]
        assert scores["gsm8k"]["strict"] == sum(item["strict_correct"][0] for item in gsm8k)
        assert scores["humaneval"]["correct"] == sum(item["correct"][0] for item in humaneval)
        assert scores["gsm8k"]["questions"] == 2
