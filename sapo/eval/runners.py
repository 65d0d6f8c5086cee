"""Evaluations run by configuration: ``sapo test --config configs/eval/<name>.yaml``.

An :class:`Evaluation` is a plain object, not a data module: it is never fit and has no dataloaders. It
takes the recipe's model (the ``model:`` section), runs one of the functions of :mod:`sapo.eval` on it,
writes every number and every sample behind it into ``out_dir``, and returns a summary. A recipe's
``data:`` section accepts it beside Lightning's data modules: :class:`~sapo.cli.SapoCLI` calls
:meth:`Evaluation.evaluate` for ``sapo test`` and ``sapo validate`` when the ``data:`` section is an
Evaluation, logs :meth:`Evaluation.metrics` to the trainer's loggers, prints them, and saves the completed
config as ``out_dir/config.yaml``.

- :class:`ReasonerEvaluation`: accuracy and pass@k of a reasoner on a task (GSM8K, MBPP, HumanEval, the
  synthetic arithmetic task), and one accuracy per answer form the task reports (a math task's strict and
  flexible answers; :meth:`~sapo.data.tasks.base.Task.answer_forms`)
  (:func:`~sapo.eval.reasoner.evaluate_reasoner`).
- :class:`ProcessBenchEvaluation`: a verifier's ProcessBench F1 on one or more files
  (:func:`~sapo.eval.processbench.evaluate_processbench`).
- :class:`BestOfNEvaluation`: the reasoner samples ``max(ns)`` solutions per question, a saved verifier
  scores them, and best-of-N, weighted and majority vote and pass@N are reported for each ``N``
  (:func:`~sapo.eval.best_of_n.best_of_n_table`).

Every generation and scoring runs inside the trainer's precision context
(``trainer.precision_plugin.forward_context()``), so ``trainer.precision: bf16-mixed`` samples in bfloat16
autocast as training does. The model stays on the device its backbone names (``backbone.device``); a saved
verifier loaded beside it goes where the model's weights are, in their dtype.
"""

from __future__ import annotations

import json
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from sapo.data.tasks.base import Question, Task
from sapo.data.trajectory import Trajectory
from sapo.eval.best_of_n import AGGREGATES, best_of_n_table
from sapo.eval.processbench import evaluate_processbench
from sapo.eval.reasoner import evaluate_reasoner, item_record, sample_and_check, write_result
from sapo.models.verifier import VERIFIER_CONFIG_NAME, PRMVerifier

__all__ = [
    "BestOfNEvaluation",
    "Evaluation",
    "ProcessBenchEvaluation",
    "ReasonerEvaluation",
    "metrics_table",
    "numeric_leaves",
]

logger = logging.getLogger(__name__)

#: where an evaluation writes its files unless told otherwise
DEFAULT_OUT_DIR = "runs/eval"


class Evaluation(ABC):
    """The base of the evaluations that ``sapo test`` / ``sapo validate`` run (never ``sapo fit``).

    A plain class: it evaluates a model given to it and has no data to train on. Subclasses implement
    :meth:`evaluate` (run, write files into :attr:`out_dir`, return a JSON-ready summary) and may narrow
    :meth:`metrics` (the numbers logged and printed).

    Args:
        out_dir: the folder every file of the evaluation is written to (created when needed).
    """

    def __init__(self, out_dir: str = DEFAULT_OUT_DIR) -> None:
        if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir).strip():
            raise ValueError(f"out_dir must be a folder path, got {out_dir!r}")
        self.out_dir = Path(out_dir)

    @abstractmethod
    def evaluate(self, module: L.LightningModule, trainer: L.Trainer) -> dict[str, Any]:
        """Evaluate ``module`` (the recipe's model); write files into :attr:`out_dir`; return a JSON-ready
        summary. ``trainer`` gives the precision context, the device and the loggers; nothing is fit."""

    def metrics(self, summary: dict[str, Any]) -> dict[str, float]:
        """The numbers of a summary to log: every numeric leaf, keyed by its path (``"a/b"``)."""
        return numeric_leaves(summary)


# --- reasoners ---------------------------------------------------------------------------------------------


class ReasonerEvaluation(Evaluation):
    """Accuracy and pass@k of the recipe's reasoner on a task (:func:`~sapo.eval.reasoner.evaluate_reasoner`).

    The model must have ``model`` (a transformers causal LM) and ``tokenizer`` attributes, as
    :class:`~sapo.models.reasoner.ORPOReasoner` has; point its ``backbone.name_or_path`` at the model to
    evaluate (a known name, a hub id, or a checkpoint folder such as ``runs/<run>/sft/reasoner``). Writes
    ``<task>_items.jsonl`` (every sample, answer and verdict) and ``<task>_summary.json`` into ``out_dir``.

    Args:
        task: the questions and their checker (``num_fewshot`` on a math task gives few-shot CoT prompts).
        questions: evaluate the first ``questions`` of the task's questions (None: all of them).
        num_samples: ``n`` samples per question (greedy repeats one sample: use a temperature for ``n > 1``).
        temperature: 0 for greedy decoding.
        top_p: nucleus sampling threshold (1.0: off).
        ks: the ``k`` of each pass@k reported (each ``<= num_samples``).
        max_new_tokens: the token budget of a completion.
        batch_size: rows per model call.
        seed: the sampling seed.
        out_dir: where the files go.
    """

    def __init__(
        self,
        task: Task,
        questions: int | None = None,
        num_samples: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        ks: tuple[int, ...] = (1,),
        max_new_tokens: int = 256,
        batch_size: int = 32,
        seed: int = 0,
        out_dir: str = DEFAULT_OUT_DIR,
    ) -> None:
        super().__init__(out_dir)
        _check_task(task)
        _check_questions(questions)
        _check_at_least("num_samples", num_samples, 1)
        _check_sampling(temperature, top_p)
        ks = tuple(ks)
        if not ks or any(not isinstance(k, int) or not 1 <= k <= num_samples for k in ks):
            raise ValueError(
                f"ks must be one or more integers in [1, num_samples={num_samples}], got {list(ks)}"
            )
        _check_at_least("max_new_tokens", max_new_tokens, 1)
        _check_at_least("batch_size", batch_size, 1)
        self.task = task
        self.questions = questions
        self.num_samples = num_samples
        self.temperature = temperature
        self.top_p = top_p
        self.ks = ks
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.seed = seed

    def evaluate(self, module: L.LightningModule, trainer: L.Trainer) -> dict[str, Any]:
        """Run :func:`~sapo.eval.reasoner.evaluate_reasoner` and write its two files; returns the summary
        (the summary file's contents, with the model's name and the question count in ``settings``)."""
        model, tokenizer = _reasoner_parts(module)
        questions = _first_questions(self.task, self.questions)
        with trainer.precision_plugin.forward_context():
            result = evaluate_reasoner(
                model,
                tokenizer,
                self.task,
                questions,
                num_samples=self.num_samples,
                temperature=self.temperature,
                top_p=self.top_p,
                ks=self.ks,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                seed=self.seed,
            )
        result.settings["model"] = model_name(module)
        result.settings["num_fewshot"] = getattr(self.task, "num_fewshot", 0)
        write_result(result, self.out_dir)
        return result.summary()

    def metrics(self, summary: dict[str, Any]) -> dict[str, float]:
        """``<task>/accuracy``, ``<task>/pass@k``, ``<task>/<form>_accuracy`` for each answer form of the
        task (a math task's ``strict_accuracy`` and ``flexible_accuracy``), ``<task>/num_questions``."""
        task = summary["task"]
        values = {"accuracy": summary["accuracy"], "num_questions": summary["num_questions"]}
        values.update({f"pass@{k}": v for k, v in summary["pass_at_k"].items()})
        for form in summary.get("answer_forms", []):
            values[f"{form}_accuracy"] = summary[f"{form}_accuracy"]
        return {f"{task}/{key}": float(value) for key, value in values.items()}


# --- verifiers on ProcessBench -----------------------------------------------------------------------------


class ProcessBenchEvaluation(Evaluation):
    """A verifier's ProcessBench scores on one or more files
    (:func:`~sapo.eval.processbench.evaluate_processbench`).

    The verifier is ``verifier`` (a folder written by :meth:`PRMVerifier.save_pretrained
    <sapo.models.verifier.PRMVerifier.save_pretrained>`, such as the loop's ``runs/<run>/verifier_<t>``)
    when given, else the recipe's model as it is (any module with a ``score(trajectories)`` method, for
    instance a PRMVerifier restored with ``--ckpt_path``). A PRMVerifier built from a ``backbone`` gets a new
    scalar head, so name a saved verifier here rather than as the backbone. A saved verifier is loaded
    once, on the device and in the dtype of the recipe's model's weights (the trainer's device and its
    precision's dtype when the model has no weights); the recipe's model is never copied or reloaded.

    For each row the prediction is the first step scored below τ, or -1; per file, the accuracy on rows with
    an error, on rows without, and their harmonic mean F1. τ is ``threshold``, or chosen for the best F1 on
    ``threshold_file`` (a separate file) and applied unchanged, or 0.5 when neither is given. Writes
    ``processbench.json``: τ with how it was chosen, and per file the scores with every row's label and
    prediction.

    Args:
        files: ProcessBench files (JSON array or JSON Lines of rows ``{"id", "problem", "steps", "label",
            "final_answer_correct"}``), one set each.
        threshold: τ, when it is known.
        threshold_file: else a separate file to choose τ on.
        verifier: a saved verifier folder (None: the recipe's model).
        out_dir: where the file goes.
    """

    def __init__(
        self,
        files: list[str],
        threshold: float | None = None,
        threshold_file: str | None = None,
        verifier: str | None = None,
        out_dir: str = DEFAULT_OUT_DIR,
    ) -> None:
        super().__init__(out_dir)
        if isinstance(files, (str, os.PathLike)) or not files:
            raise ValueError(f"files must be a list of one or more ProcessBench files, got {files!r}")
        for i, path in enumerate(files):
            if not Path(path).is_file():
                raise ValueError(f"files[{i}]: no such file: {path}")
        if len({os.fspath(p) for p in files}) != len(files):
            raise ValueError(f"files lists a file twice: {list(files)}")
        if threshold is not None and threshold_file is not None:
            raise ValueError("give threshold or threshold_file (a set to choose it on), not both")
        if threshold is not None and not (math.isfinite(threshold) and 0 <= threshold <= 1):
            raise ValueError(f"threshold must be in [0, 1] (scores are probabilities), got {threshold}")
        if threshold_file is not None:
            if not Path(threshold_file).is_file():
                raise ValueError(f"threshold_file: no such file: {threshold_file}")
            if os.fspath(threshold_file) in {os.fspath(p) for p in files}:
                raise ValueError(
                    f"threshold_file {threshold_file} is also among the files: τ must be chosen apart"
                )
        _check_verifier_folder(verifier)
        self.files = [os.fspath(p) for p in files]
        self.threshold = threshold
        self.threshold_file = None if threshold_file is None else os.fspath(threshold_file)
        self.verifier = verifier

    def evaluate(self, module: L.LightningModule, trainer: L.Trainer) -> dict[str, Any]:
        """Score every file at one τ; write ``processbench.json``; return its contents plus ``mean_f1`` (the
        mean over files, ProcessBench's average) and the verifier's name."""
        scorer = _load_verifier(self.verifier, module, trainer) if self.verifier else _module_scorer(module)
        with trainer.precision_plugin.forward_context():
            evaluation = evaluate_processbench(
                scorer, self.files, threshold=self.threshold, threshold_file=self.threshold_file
            )
        summary = {
            "verifier": self.verifier or model_name(module),
            **evaluation.to_dict(),
            "mean_f1": sum(s.f1 for s in evaluation.sets.values()) / len(evaluation.sets),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "processbench.json"
        path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        summary["path"] = str(path)
        return summary

    def metrics(self, summary: dict[str, Any]) -> dict[str, float]:
        """``processbench/threshold``, ``processbench/mean_f1`` and, per file (by its name without
        suffixes, or its path when two files share a name), ``f1``, ``error_accuracy`` and
        ``correct_accuracy``."""
        values = {"processbench/threshold": summary["threshold"], "processbench/mean_f1": summary["mean_f1"]}
        stems = {name: Path(name).name.split(".")[0] for name in summary["sets"]}
        if len(set(stems.values())) < len(stems):  # two files of one name in different folders
            stems = {name: name for name in stems}
        for name, scores in summary["sets"].items():
            for key in ("f1", "error_accuracy", "correct_accuracy"):
                values[f"processbench/{stems[name]}/{key}"] = scores[key]
        return {key: float(value) for key, value in values.items()}


# --- best-of-N ---------------------------------------------------------------------------------------------


class BestOfNEvaluation(Evaluation):
    """Best-of-N with a saved verifier: the recipe's reasoner samples, the verifier chooses.

    Each question gets ``max(ns)`` samples (:func:`~sapo.eval.reasoner.sample_and_check`); the verifier
    (:meth:`PRMVerifier.from_pretrained <sapo.models.verifier.PRMVerifier.from_pretrained>` on
    ``verifier``) scores every step of every sample; :func:`~sapo.eval.best_of_n.best_of_n_table` gives, for
    each ``N`` (the first ``N`` samples), pass@N, majority vote, and best-of-N and weighted vote under each
    aggregate of the step scores. A sample without steps scores nothing and counts as 0. Writes
    ``<task>_best_of_n.md`` (the table), ``<task>_best_of_n.json`` (the table and settings) and
    ``<task>_best_of_n_samples.jsonl`` (per question: samples, answers, verdicts, step scores and aggregates).

    Args:
        task: the questions and their checker.
        verifier: a folder written by ``PRMVerifier.save_pretrained`` (such as ``runs/<run>/verifier_<t>``).
        questions: the first ``questions`` of the task's questions (None: all).
        ns: the numbers of samples to choose among.
        aggregates: how step scores become a solution's score: names from
            :data:`~sapo.eval.best_of_n.AGGREGATES` (``min``, ``mean``, ``last``, ``product``).
        temperature: sampling temperature (> 0 when some ``N > 1``: greedy samples are all equal).
        top_p: nucleus sampling threshold.
        max_new_tokens, batch_size, seed: the token budget, rows per model call, the sampling seed.
        out_dir: where the files go.
    """

    def __init__(
        self,
        task: Task,
        verifier: str,
        questions: int | None = None,
        ns: tuple[int, ...] = (1, 4, 16),
        aggregates: tuple[str, ...] = ("min", "mean", "last", "product"),
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        batch_size: int = 32,
        seed: int = 0,
        out_dir: str = DEFAULT_OUT_DIR,
    ) -> None:
        super().__init__(out_dir)
        _check_task(task)
        if not verifier:
            raise ValueError("verifier must name a folder written by PRMVerifier.save_pretrained")
        _check_verifier_folder(verifier)
        _check_questions(questions)
        ns = tuple(ns)
        if not ns or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in ns):
            raise ValueError(f"ns must be one or more integers >= 1, got {list(ns)}")
        if len(set(ns)) != len(ns):
            raise ValueError(f"ns lists an N twice: {list(ns)}")
        aggregates = tuple(aggregates)
        unknown = [a for a in aggregates if a not in AGGREGATES]
        if not aggregates or unknown:
            raise ValueError(f"aggregates must be names from {sorted(AGGREGATES)}, got {list(aggregates)}")
        _check_sampling(temperature, top_p)
        if temperature == 0 and max(ns) > 1:
            raise ValueError(
                "temperature must be > 0 for best-of-N with N > 1 (greedy samples are all equal)"
            )
        _check_at_least("max_new_tokens", max_new_tokens, 1)
        _check_at_least("batch_size", batch_size, 1)
        self.task = task
        self.verifier = verifier
        self.questions = questions
        self.ns = tuple(sorted(ns))
        self.aggregates = aggregates
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.seed = seed

    def evaluate(self, module: L.LightningModule, trainer: L.Trainer) -> dict[str, Any]:
        """Sample, score, tabulate; write the three files; return the summary (table, settings, paths)."""
        model, tokenizer = _reasoner_parts(module)
        questions = _first_questions(self.task, self.questions)
        num_samples = max(self.ns)
        with trainer.precision_plugin.forward_context():
            samples = sample_and_check(
                model,
                tokenizer,
                self.task,
                questions,
                num_samples=num_samples,
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                seed=self.seed,
                description=f"best-of-{num_samples} samples, {self.task.name}",
            )
            verifier = _load_verifier(self.verifier, module, trainer)
            scores = score_samples(verifier, samples)
        del verifier
        table = best_of_n_table(samples, scores, ns=self.ns, aggregates=self.aggregates)
        flags = [bool(t.outcome) for question_samples in samples for t in question_samples]
        summary: dict[str, Any] = {
            "task": self.task.name,
            "model": model_name(module),
            "verifier": self.verifier,
            "num_questions": len(questions),
            "num_samples": num_samples,
            "sample_accuracy": sum(flags) / len(flags),
            "settings": {
                "temperature": self.temperature,
                "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens,
                "batch_size": self.batch_size,
                "seed": self.seed,
            },
            "table": table.to_dict(),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = self.out_dir / f"{self.task.name}_best_of_n"
        files = {
            "table_markdown": stem.with_suffix(".md"),
            "table_json": stem.with_suffix(".json"),
            "samples": stem.with_name(stem.name + "_samples.jsonl"),
        }
        summary["files"] = {key: path.name for key, path in files.items()}
        with files["samples"].open("w", encoding="utf-8") as fh:
            for question, question_samples, question_scores in zip(questions, samples, scores, strict=True):
                record = item_record(self.task, question, question_samples)
                record["scores"] = question_scores
                record["aggregates"] = {
                    name: [AGGREGATES[name](s) if s else 0.0 for s in question_scores]
                    for name in self.aggregates
                }
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        heading = (
            f"Best-of-N on {self.task.name}: {len(questions)} questions, reasoner `{summary['model']}`, "
            f"verifier `{self.verifier}`, T={self.temperature}, top_p={self.top_p}, seed {self.seed}; "
            f"accuracies in %.\n\n"
        )
        files["table_markdown"].write_text(heading + table.to_markdown(), encoding="utf-8")
        files["table_json"].write_text(
            json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        return summary

    def metrics(self, summary: dict[str, Any]) -> dict[str, float]:
        """``<task>/sample_accuracy`` and, for each ``N`` and method, ``<task>/N=<N>/<method>`` (``pass@N``,
        ``majority_vote``, ``best_of_n/<aggregate>``, ``weighted_vote/<aggregate>``)."""
        task = summary["task"]
        values = {f"{task}/sample_accuracy": summary["sample_accuracy"]}
        for n, methods in summary["table"]["metrics"].items():
            values.update({f"{task}/N={n}/{name}": value for name, value in methods.items()})
        return {key: float(value) for key, value in values.items()}


def score_samples(scorer: Any, samples: Sequence[Sequence[Trajectory]]) -> list[list[list[float]]]:
    """The scorer's step scores of every sample, in one ``score`` call, shaped like ``samples``; a sample
    without steps gets no scores (its aggregate is 0, see :mod:`sapo.eval.best_of_n`)."""
    flat = [t for question_samples in samples for t in question_samples]
    with_steps = [t for t in flat if t.num_steps > 0]
    scored = iter(scorer.score(with_steps) if with_steps else [])
    flat_scores = [list(next(scored)) if t.num_steps > 0 else [] for t in flat]
    shaped, cursor = [], 0
    for question_samples in samples:
        shaped.append(flat_scores[cursor : cursor + len(question_samples)])
        cursor += len(question_samples)
    return shaped


# --- helpers -----------------------------------------------------------------------------------------------


def model_name(module: L.LightningModule) -> str:
    """The model's ``backbone.name_or_path`` when it has one, else its class name."""
    spec = getattr(module, "backbone_spec", None)
    return str(spec.name_or_path) if spec is not None else type(module).__name__


def numeric_leaves(data: Any, prefix: str = "") -> dict[str, float]:
    """Every number (not a bool) in nested dicts, keyed by the path of keys joined with ``/``."""
    values: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            values.update(numeric_leaves(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and prefix:
        values[prefix] = float(data)
    return values


def metrics_table(metrics: dict[str, float]) -> str:
    """A two-column markdown table of the metrics (4 decimals; whole numbers as they are)."""
    lines = ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        whole = float(value).is_integer() and not 0 <= value <= 1  # counts; shares and τ keep decimals
        text = str(int(value)) if whole else f"{value:.4f}"
        lines.append(f"| {key} | {text} |")
    return "\n".join(lines)


def _reasoner_parts(module: L.LightningModule) -> tuple[Any, Any]:
    model, tokenizer = getattr(module, "model", None), getattr(module, "tokenizer", None)
    if model is None or tokenizer is None:
        raise TypeError(
            f"{type(module).__name__} has no `model` and `tokenizer` to generate with; evaluate a reasoner "
            "such as sapo.models.reasoner.ORPOReasoner"
        )
    return model, tokenizer


def _module_scorer(module: L.LightningModule) -> Any:
    if not callable(getattr(module, "score", None)):
        raise TypeError(
            f"{type(module).__name__} has no score(trajectories) method; evaluate a verifier such as "
            "sapo.models.verifier.PRMVerifier, or name a saved one with `verifier`"
        )
    spec = getattr(module, "backbone_spec", None)
    if spec is not None and (Path(spec.name_or_path) / VERIFIER_CONFIG_NAME).is_file():
        logger.warning(
            "the model's backbone %s is a saved verifier, but a PRMVerifier built on it has a new head; "
            "set `verifier: %s` in the evaluation to load the saved head (ignore this after --ckpt_path)",
            spec.name_or_path,
            spec.name_or_path,
        )
    return module


#: the dtype of the weights under each "true" precision of the trainer (mixed precisions keep float32)
_PRECISION_DTYPES = {"bf16-true": "bfloat16", "16-true": "float16"}


def _placement(module: L.LightningModule, trainer: L.Trainer) -> tuple[str, str]:
    """Where a model loaded beside ``module`` goes: the device and dtype of ``module``'s weights (of its
    ``model``, the backbone, when it has one, rather than a float32 head), read from the weights themselves;
    for a module without floating-point weights, the trainer's root device and its precision's dtype."""
    weights = getattr(module, "model", None)
    weights = weights if isinstance(weights, torch.nn.Module) else module
    parameter = next((p for p in weights.parameters() if p.is_floating_point()), None)
    if parameter is not None:
        return str(parameter.device), str(parameter.dtype).removeprefix("torch.")
    precision = str(getattr(trainer, "precision", "32-true"))
    return str(trainer.strategy.root_device), _PRECISION_DTYPES.get(precision, "float32")


def _load_verifier(folder: str, module: L.LightningModule, trainer: L.Trainer) -> PRMVerifier:
    """The saved verifier at ``folder``, loaded once, in eval mode, where :func:`_placement` says."""
    device, dtype = _placement(module, trainer)
    options: dict[str, Any] = {"device": device, "dtype": dtype}
    spec = getattr(module, "backbone_spec", None)
    if spec is not None:
        options["cache_dir"] = spec.cache_dir
    verifier = PRMVerifier.from_pretrained(folder, backbone_options=options)
    verifier.eval()
    return verifier


def _first_questions(task: Task, count: int | None) -> list[Question]:
    questions = task.load()
    if count is not None:
        questions = questions[:count]
    if not questions:
        raise ValueError(f"task {task.name!r} gives no questions to evaluate")
    return questions


def _check_task(task: Any) -> None:
    if not isinstance(task, Task):
        raise ValueError(f"task must be a sapo.data.tasks.Task, got {type(task).__name__}")


def _check_questions(questions: int | None) -> None:
    if questions is not None and (
        isinstance(questions, bool) or not isinstance(questions, int) or questions < 1
    ):
        raise ValueError(f"questions must be None (all) or an integer >= 1, got {questions!r}")


def _check_at_least(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def _check_sampling(temperature: float, top_p: float) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _check_verifier_folder(verifier: str | None) -> None:
    if verifier is None:
        return
    if not (Path(verifier) / VERIFIER_CONFIG_NAME).is_file():
        raise ValueError(
            f"verifier: {verifier} is not a folder written by PRMVerifier.save_pretrained "
            f"(it has no {VERIFIER_CONFIG_NAME})"
        )
