"""Reasoner evaluation: sample answers to a task's questions, check them, and keep every sample on disk.

:func:`sample_and_check` is the one place where evaluation generates: the project's
:class:`~sapo.rollout.sampler.Sampler` with the task's stop rule, then the task's batched check (programs run
in the sandbox in parallel). Unlike :meth:`~sapo.rollout.sampler.TaskRolloutSampler.sample_trajectories` it
neither deduplicates nor drops completions without steps: every sample counts, and an empty one is wrong.
The :class:`~sapo.callbacks.HeldOutAccuracy` callback measures through it too.

:func:`evaluate_reasoner` reports, over ``Q`` questions with ``n`` samples each and ``c_q`` correct:

    accuracy = (1 / (Q n)) Σ_q c_q            (greedy, n = 1: the share of questions solved)
    pass@k   = (1 / Q) Σ_q [1 − C(n − c_q, k) / C(n, k)]      for each requested k ≤ n

and one accuracy per answer form the task reports (:meth:`~sapo.data.tasks.base.Task.answer_forms`), each
form judged on its own: for math tasks the strict answer ("The answer is N", "#### N", ``\\boxed{N}``) and
the flexible one (the last number). It writes ``<task>_items.jsonl`` (one line per question: its samples,
answers and correct flags) and ``<task>_summary.json``, so every number can be recomputed from the samples.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sapo.data.tasks.base import Question, Task
from sapo.data.trajectory import Trajectory
from sapo.eval.pass_at_k import mean_pass_at_k
from sapo.rollout.sampler import GenerationBackend, Sampler, task_stop_rule

__all__ = ["EvalResult", "evaluate_reasoner", "paired_difference", "sample_and_check"]

logger = logging.getLogger(__name__)


def paired_difference(before: Sequence[bool], after: Sequence[bool]) -> tuple[float, float]:
    """The change in accuracy between two evaluations of the same questions, with its 95% half-width.

    With per-question outcomes ``a_i`` (before) and ``b_i`` (after), ``d_i = b_i − a_i``:

        Δ = (1/n) Σ d_i,    SE = sqrt(Σ (d_i − Δ)² / (n (n − 1))),    half-width = 1.96 · SE

    (normal approximation of the paired difference). Pairing matters: questions both models solve or both
    fail add no noise, so this is narrower than comparing two independent accuracies.
    """
    if len(before) != len(after):
        raise ValueError(f"paired_difference: {len(before)} outcomes before, {len(after)} after")
    n = len(before)
    if n == 0:
        raise ValueError("paired_difference: no outcomes")
    d = [float(b) - float(a) for a, b in zip(before, after, strict=True)]
    mean = sum(d) / n
    if n == 1:
        return mean, float("inf")
    se = (sum((x - mean) ** 2 for x in d) / (n * (n - 1))) ** 0.5
    return mean, 1.96 * se


def sample_and_check(
    model: Any,
    tokenizer: Any,
    task: Task,
    questions: Sequence[Question],
    *,
    num_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    description: str = "evaluating",
    backend: str | GenerationBackend = "auto",
) -> list[list[Trajectory]]:
    """``num_samples`` checked trajectories per question (one list per question, in sampling order).

    One batched :meth:`Sampler.generate <sapo.rollout.sampler.Sampler.generate>` call with the task's stop
    rule (greedy when ``temperature == 0``), then one ``task.check`` over all samples. ``backend`` is the
    :class:`~sapo.rollout.sampler.Sampler`'s (a ready backend, such as the loop's engine, makes ``model``
    unused). Each trajectory's
    ``meta`` holds the raw ``completion``, ``generated_tokens``, ``finish_reason`` and ``sample_index``.
    """
    sampler = Sampler(
        model,
        tokenizer,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        backend=backend,
    )
    prompts = [task.prompt(q, tokenizer) for q in questions]
    generations = sampler.generate(prompts, num_samples, stop=task_stop_rule(task), description=description)
    samples = [
        [
            task.new_trajectory(
                q, g.text, generated_tokens=g.num_tokens, finish_reason=g.finish_reason, sample_index=j
            )
            for j, g in enumerate(question_generations)
        ]
        for q, question_generations in zip(questions, generations, strict=True)
    ]
    for question_samples, question_generations in zip(samples, generations, strict=True):
        for trajectory, generation in zip(question_samples, question_generations, strict=True):
            trajectory.meta["completion"] = generation.text  # steps drop blank lines and text around code
    task.check([t for question_samples in samples for t in question_samples], {q.id: q for q in questions})
    return samples


@dataclass
class EvalResult:
    """What :func:`evaluate_reasoner` measured, with the settings that produced it.

    Attributes:
        task: the task's name.
        num_questions, num_samples: ``Q`` and ``n``.
        accuracy: the share of correct samples, ``Σ_q c_q / (Q n)``.
        pass_at_k: ``{k: mean_q pass@k}`` for each requested ``k``.
        form_accuracy: ``{form: share}`` for each answer form the task reports
            (:meth:`~sapo.data.tasks.base.Task.answer_forms`): the share of samples whose answer read that
            way is correct (a math task's ``strict`` and ``flexible``; none for code tasks). The summary
            writes each as ``<form>_accuracy``.
        settings: temperature, top_p, seed, max_new_tokens, batch_size.
        generated_tokens: tokens sampled in all.
        finish_reasons: how many samples ended at the stop rule, EOS, or the token budget.
        items: one record per question, as written to the items file.
        items_path, summary_path: the files written (``None`` without ``out_dir``).
    """

    task: str
    num_questions: int
    num_samples: int
    accuracy: float
    pass_at_k: dict[int, float]
    form_accuracy: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    generated_tokens: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list, repr=False)
    items_path: Path | None = None
    summary_path: Path | None = None

    @property
    def strict_accuracy(self) -> float | None:
        """The accuracy of the ``strict`` answer form (math tasks), else ``None``."""
        return self.form_accuracy.get("strict")

    @property
    def flexible_accuracy(self) -> float | None:
        """The accuracy of the ``flexible`` answer form (math tasks), else ``None``."""
        return self.form_accuracy.get("flexible")

    def summary(self) -> dict[str, Any]:
        """Everything but the items, JSON-ready (``pass@k`` keys are strings); after ``pass_at_k``, the
        names of the answer forms (``answer_forms``) and each form's ``<form>_accuracy``."""
        data: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "items":
                continue
            if key == "form_accuracy":
                data["answer_forms"] = list(value)
                data.update({f"{form}_accuracy": share for form, share in value.items()})
                continue
            data[key] = value
        data["pass_at_k"] = {str(k): v for k, v in self.pass_at_k.items()}
        data["items_path"] = None if self.items_path is None else self.items_path.name
        data["summary_path"] = None if self.summary_path is None else self.summary_path.name
        return data


def evaluate_reasoner(
    model: Any,
    tokenizer: Any,
    task: Task,
    questions: Sequence[Question] | None = None,
    num_samples: int = 1,
    temperature: float = 0.0,
    ks: Sequence[int] = (1,),
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    top_p: float = 1.0,
    progress: bool = True,
) -> EvalResult:
    """Accuracy and pass@k of a reasoner on a task (see the module docstring for the equations).

    Args:
        model: a transformers causal LM (or a checkpoint folder for the vLLM backend, when it is usable).
        tokenizer: its tokenizer (prompts are built with its chat template when the task uses one).
        task: builds prompts, stops completions after the answer, checks them (math: exact numeric equality;
            code: the program passes its tests in the sandbox).
        questions: the questions to answer (default: ``task.load()``).
        num_samples: ``n`` samples per question; greedy (``temperature=0``) repeats one sample, so sample
            with a temperature for ``n > 1``.
        temperature, top_p: sampling settings (greedy by default).
        ks: the ``k`` of each pass@k reported; every ``k`` must be ``<= num_samples``.
        max_new_tokens, batch_size, seed: generation budget, rows per model call, and the sampling seed.
        out_dir: where to write ``<task>_items.jsonl`` and ``<task>_summary.json`` (nothing written when None).
        progress: show a progress bar while sampling.
    """
    questions = list(task.load() if questions is None else questions)
    if not questions:
        raise ValueError(f"task {task.name!r}: no questions to evaluate")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    too_large = [k for k in ks if not 1 <= k <= num_samples]
    if too_large:
        raise ValueError(f"pass@k needs 1 <= k <= num_samples ({num_samples}); got k = {too_large}")
    if num_samples > 1 and temperature == 0:
        logger.warning("greedy decoding with num_samples=%d gives %d equal samples", num_samples, num_samples)
    samples = sample_and_check(
        model,
        tokenizer,
        task,
        questions,
        num_samples=num_samples,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        description=f"evaluating {task.name}",
    )
    records = [_item_record(task, q, s) for q, s in zip(questions, samples, strict=True)]
    items = [item for item, _ in records]
    forms = records[0][1]
    for question, (_, item_forms) in zip(questions, records, strict=True):
        if item_forms != forms:
            raise ValueError(
                f"task {task.name!r} reports the answer forms {item_forms} for question {question.id!r} and "
                f"{forms} for {questions[0].id!r}: answer_forms must give the same names for every completion"
            )
    result = EvalResult(
        task=task.name,
        num_questions=len(questions),
        num_samples=num_samples,
        accuracy=_share(items, "correct"),
        pass_at_k=mean_pass_at_k(num_samples, [item["num_correct"] for item in items], ks),
        form_accuracy={form: _share(items, f"{form}_correct") for form in forms},
        settings={
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
        },
        generated_tokens=sum(t.meta["generated_tokens"] for s in samples for t in s),
        finish_reasons=dict(Counter(t.meta["finish_reason"] for s in samples for t in s)),
        items=items,
    )
    if out_dir is not None:
        write_result(result, out_dir)
    return result


def item_record(task: Task, question: Question, samples: Sequence[Trajectory]) -> dict[str, Any]:
    """One question's line of the items file: its samples, answers, correct flags and, for each answer form
    the task reports (:meth:`~sapo.data.tasks.base.Task.answer_forms`; math: ``strict`` and ``flexible``),
    ``<form>_answers`` with their own flags ``<form>_correct``; for code tasks, the sandbox's verdicts."""
    return _item_record(task, question, samples)[0]


def _item_record(
    task: Task, question: Question, samples: Sequence[Trajectory]
) -> tuple[dict[str, Any], list[str]]:
    """:func:`item_record`, and the names of the answer forms it holds."""
    record: dict[str, Any] = {
        "question_id": question.id,
        "gold_answer": question.answer,
        "num_samples": len(samples),
        "num_correct": sum(bool(t.outcome) for t in samples),
        "samples": [t.meta["completion"] for t in samples],
        "answers": [t.final_answer for t in samples],
        "correct": [bool(t.outcome) for t in samples],
        "finish_reasons": [t.meta["finish_reason"] for t in samples],
        "generated_tokens": [t.meta["generated_tokens"] for t in samples],
    }
    readings = [task.answer_forms(task.completion_text(t.steps)) for t in samples]
    forms = list(readings[0]) if readings else []
    for i, reading in enumerate(readings):
        if list(reading) != forms:
            raise ValueError(
                f"task {task.name!r} reports the answer forms {list(reading)} for sample {i} of question "
                f"{question.id!r} and {forms} for sample 0: answer_forms must give the same names every time"
            )
    for form in forms:
        answers = [reading[form] for reading in readings]
        fields = {
            f"{form}_answers": answers,
            f"{form}_correct": [task.is_correct(answer, question) for answer in answers],
        }
        for key in fields:
            if key in record:
                raise ValueError(f"task {task.name!r}: the answer form {form!r} would overwrite {key!r}")
        record.update(fields)
    if any("check" in t.meta for t in samples):
        record["checks"] = [t.meta.get("check") for t in samples]
    return record, forms


def _share(items: Sequence[dict[str, Any]], flags: str) -> float:
    """The share of true flags over every sample of every item: ``Σ_q Σ_i flag_qi / Σ_q n_q``."""
    values = [flag for item in items for flag in item[flags]]
    return sum(values) / len(values)


def write_result(result: EvalResult, out_dir: str | os.PathLike[str]) -> None:
    """Write ``<task>_items.jsonl`` and ``<task>_summary.json`` into ``out_dir`` (created), and record their
    paths in ``result``."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    result.items_path = folder / f"{result.task}_items.jsonl"
    result.summary_path = folder / f"{result.task}_summary.json"
    with result.items_path.open("w", encoding="utf-8") as fh:
        for item in result.items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    result.summary_path.write_text(json.dumps(result.summary(), indent=2) + "\n", encoding="utf-8")
