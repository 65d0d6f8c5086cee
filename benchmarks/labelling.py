"""Labelling benchmark: every supervision strategy on the same sampled trajectories, scored against the oracle.

For each task (the synthetic arithmetic task with its exact step oracle, GSM8K with its approximate one):

1. the reasoner: ``--model`` (a fine-tuned checkpoint folder such as the demo's ``runs/demo/reasoner``, or a
   known name, used as it is), else a short SFT of ``--base`` on the task's gold solutions (ORPOReasoner +
   SFTDataModule + a Lightning Trainer), saved under the cache folder so that a rerun reuses it;
2. questions x K trajectories sampled from it (``TaskRolloutSampler.sample_trajectories``), checked and
   deduplicated;
3. the same trajectories labelled by every strategy: outcome, Monte Carlo, Monte Carlo on every answer
   (``estimate_correct_answers=True``), binary search, first error (scorer: ``OracleScorer`` at
   ``--scorer-noise``, 0 by default) and random step, every hard-rule strategy with ``early_stop`` off and
   on; then first error with an ``OracleScorer`` of each ``--noise`` (verifier quality);
4. all runs of a task share one :class:`RolloutMemory`: k rollouts of a prefix are sampled the first time a
   run asks for it and given again to every later run that asks for it (early-stop runs get the rounds an
   early-stopping sampler would have returned). Every strategy is so compared on the same completions, and
   the whole benchmark samples about what Monte Carlo alone needs. ``--fresh-rollouts`` gives every run its
   own sampler instead (wall-clock seconds, several times the sampling);
5. per run: cost per labelled trajectory (completions, generated tokens, seconds; wrong-answer trajectories
   separately), first-error accuracy and step-label F1 against the oracle, label yield, the accuracy of the
   expansions; and the targets: first error spends >= 3x fewer tokens per labelled wrong-answer trajectory
   than Monte Carlo with the same k, with a first-error accuracy at most 5 points below Monte Carlo's.

Definitions (details in ``docs/labelling.md``): a trajectory's *first error* is its first step labelled
below 0.5, or -1 when there is none; the oracle's labels are 1 before its first error and 0 from it on.

- *first-error accuracy*: the share of wrong-answer trajectories (labelled, not dropped) whose labelled first
  error equals the oracle's;
- *step-label F1*: F1 of the "step is wrong" class (label < 0.5) over all steps of the labelled trajectories,
  labels against the oracle's prefix labels; also on wrong-answer and on correct-answer trajectories alone;
- *cost per labelled trajectory*: what the run spent (on labelled and dropped trajectories alike) divided by
  the trajectories it labelled; *per labelled wrong-answer trajectory*: what it spent on wrong-answer
  trajectories divided by the wrong-answer trajectories it labelled;
- *expansion accuracy*: the share of expanded trajectories whose labels equal the oracle's.

Outputs: a markdown report (``--out``), a JSON file of every figure next to it, and two PNGs: cost (tokens
per labelled wrong-answer trajectory) against first-error accuracy, one point per run, and first-error
accuracy against the scorer's noise.

    python benchmarks/labelling.py --quick --out runs/labelling-quick/labelling.md   # checks it works
    python benchmarks/labelling.py --out runs/labelling/labelling.md               # the full run
    python benchmarks/labelling.py --model runs/demo/reasoner --tasks arithmetic
    python benchmarks/labelling.py --quick --model tiny-random --dtype float32     # seconds (the test's)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.tasks.base import Question
from sapo.data.tasks.gsm8k import GSM8KTask
from sapo.data.tasks.math import MathTask
from sapo.data.trajectory import NO_ERROR, Cost, Trajectory, first_error_of
from sapo.models import PACKAGED_SMOLLM2, TINY_RANDOM, BackboneSpec, default_cache_dir, load_backbone
from sapo.rollout import Sampler, TaskRolloutSampler, derive_seed
from sapo.supervision import (
    BinarySearchSupervision,
    FirstErrorSupervision,
    LabelResult,
    MonteCarloSupervision,
    OracleScorer,
    OutcomeSupervision,
    Prefix,
    RandomStepSupervision,
    Rollout,
    SupervisionStrategy,
)
from sapo.supervision.base import share_seconds

TASKS = ("arithmetic", "gsm8k")
STRATEGIES = ("outcome", "monte_carlo", "monte_carlo_all", "binary_search", "first_error", "random_step")
#: strategies whose estimates use the hard rule, so ``early_stop`` applies (outcome spends no rollouts)
HARD_RULE = ("monte_carlo", "monte_carlo_all", "binary_search", "first_error", "random_step")
GSM8K_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k")  # beside the checkout
#: a label below this is "wrong" (ProcessBench's rule, :func:`sapo.data.trajectory.first_error_of`)
THRESHOLD = 0.5
#: the targets the report checks (printed next to the measured figures, met or not)
TOKEN_RATIO_TARGET = 3.0
ACCURACY_GAP_TARGET = 0.05

#: sizes of ``--quick``: a run that only checks the script works (explicit flags still win)
QUICK = {
    "arith_questions": 2,
    "gsm8k_questions": 2,
    "samples": 2,
    "k": 2,
    "min_steps": 2,
    "max_steps": 3,
    "arith_max_new_tokens": 40,
    "gsm8k_max_new_tokens": 48,
    "arith_sft_questions": 16,
    "gsm8k_sft_questions": 8,
    "sft_batch_size": 4,
    "noise": [0.0, 0.3],
    "batch_size": 16,
}


# --------------------------------------------------------------------------------------------- metrics


@dataclass
class Rate:
    """``hits`` out of ``total``; ``value`` is None when there is nothing to count."""

    hits: int = 0
    total: int = 0

    @property
    def value(self) -> float | None:
        return self.hits / self.total if self.total else None

    def __str__(self) -> str:
        return "n/a" if self.value is None else f"{self.value:.3f} ({self.hits}/{self.total})"


@dataclass
class StepCounts:
    """Step counts of the "step is wrong" class (label < 0.5): true and false positives, false negatives."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def f1(self) -> float | None:
        """2 tp / (2 tp + fp + fn); None when neither the labels nor the oracle call any step wrong."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else None


LabelPair = tuple[Sequence[float], Sequence[float]]


def first_error_accuracy(pairs: Iterable[LabelPair]) -> Rate:
    """The share of ``(labels, oracle labels)`` pairs whose first errors (first value < 0.5, or -1) agree."""
    rate = Rate()
    for labels, oracle in pairs:
        rate.total += 1
        rate.hits += first_error_of(labels) == first_error_of(oracle)
    return rate


def wrong_step_counts(pairs: Iterable[LabelPair]) -> StepCounts:
    """Count every step of every ``(labels, oracle labels)`` pair: positive = wrong (value < 0.5)."""
    counts = StepCounts()
    for labels, oracle in pairs:
        if len(labels) != len(oracle):
            raise ValueError(f"{len(labels)} labels against {len(oracle)} oracle labels")
        for label, truth in zip(labels, oracle, strict=True):
            predicted, actual = label < THRESHOLD, truth < THRESHOLD
            if predicted and actual:
                counts.tp += 1
            elif predicted:
                counts.fp += 1
            elif actual:
                counts.fn += 1
            else:
                counts.tn += 1
    return counts


#: the labelling fields of a run's cost, written zeros included so that every run's JSON has the same keys
LABEL_COST_FIELDS = ("rollout_estimates", "completions", "generated_tokens", "verifier_passes", "seconds")


def label_cost(cost: Cost) -> dict[str, float]:
    """The labelling fields of ``cost`` (``Cost.to_dict`` leaves out the zero ones)."""
    return {name: getattr(cost, name) for name in LABEL_COST_FIELDS}


def per_trajectory(cost: Cost, count: int) -> dict[str, float] | None:
    """Completions, generated tokens and seconds of ``cost`` divided by ``count`` (None when it is 0)."""
    if count == 0:
        return None
    return {
        "completions": cost.completions / count,
        "generated_tokens": cost.generated_tokens / count,
        "seconds": cost.seconds / count,
    }


class OracleTruth:
    """The task's oracle prefix labels of a trajectory (1 before the oracle's first error, 0 from it on)."""

    def __init__(self, task: MathTask, questions: Sequence[Question]) -> None:
        self.task = task
        self.questions = {q.id: q for q in questions}
        self._memory: dict[tuple[str, tuple[str, ...]], list[float]] = {}

    def __call__(self, trajectory: Trajectory) -> list[float]:
        key = (trajectory.question_id, tuple(trajectory.steps))
        if key not in self._memory:
            question = self.questions[trajectory.question_id]
            self._memory[key] = self.task.oracle_labels(trajectory, question)
        return self._memory[key]


# --------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One labelling run: a strategy, its ``early_stop`` setting and, for first error, the scorer's noise."""

    strategy: str
    early_stop: bool = False
    noise: float | None = None

    @property
    def label(self) -> str:
        name = self.strategy + (f" σ={self.noise:g}" if self.noise is not None else "")
        return name + (" +es" if self.early_stop else "")


def build_strategy(run: Run, k: int, seed: int) -> SupervisionStrategy:
    """The strategy of ``run`` with ``k`` completions per estimate (library defaults otherwise)."""
    es = run.early_stop
    if run.strategy == "outcome":
        return OutcomeSupervision()
    if run.strategy == "monte_carlo":
        return MonteCarloSupervision(k=k, early_stop=es)
    if run.strategy == "monte_carlo_all":
        return MonteCarloSupervision(k=k, early_stop=es, estimate_correct_answers=True)
    if run.strategy == "binary_search":
        return BinarySearchSupervision(k=k, early_stop=es)
    if run.strategy == "first_error":
        return FirstErrorSupervision(k=k, early_stop=es)
    if run.strategy == "random_step":
        return RandomStepSupervision(k=k, early_stop=es, seed=seed)
    raise ValueError(f"unknown strategy {run.strategy!r}; choose from {STRATEGIES}")


def planned_runs(strategies: Sequence[str], early_stop: Sequence[bool], noise: float) -> list[Run]:
    """The main table's runs: each strategy once per ``early_stop`` setting (outcome once); first error with
    the scorer at ``noise``."""
    runs = []
    for name in strategies:
        for es in early_stop if name in HARD_RULE else [False]:
            runs.append(Run(name, es, noise if name == "first_error" else None))
    return runs


def sweep_runs(noises: Sequence[float], done: Sequence[Run]) -> list[Run]:
    """The verifier-quality sweep: first error (``early_stop`` off) at each noise the main runs lack."""
    return [
        Run("first_error", False, n)
        for n in dict.fromkeys(noises)
        if Run("first_error", False, n) not in done
    ]


def early_stop_cut(outcomes: Sequence[bool], chunk: int) -> int:
    """How many of a prefix's rollouts an early-stopping :class:`TaskRolloutSampler` returns: it samples rounds
    of ``chunk`` and stops after the first round with a correct rollout (all of them when none is)."""
    for end in range(chunk, len(outcomes) + chunk, chunk):
        if any(outcomes[:end]):
            return min(end, len(outcomes))
    return len(outcomes)


PrefixKey = tuple[str, tuple[str, ...], int, int]
TrajectoryKey = tuple[str, tuple[str, ...]]


def trajectory_key(trajectory: Trajectory) -> TrajectoryKey:
    return (trajectory.question_id, tuple(trajectory.steps))


class RolloutMemory:
    """A :class:`~sapo.supervision.RolloutSampler` shared by every run of a task: the first run that asks for a
    prefix (with some ``k``) has ``k`` rollouts of it sampled (through ``sampler``, all new prefixes of a call in
    one batched call); every later run that asks for it gets the same rollouts again.

    With ``early_stop`` a run gets the rollouts an early-stopping sampler would have returned: the remembered
    ones, in the order they were sampled, up to and including the first round of ``chunk`` that holds a
    correct one (:func:`early_stop_cut`). The rollouts are i.i.d. samples, so each run still sees a fair sample,
    and every strategy is compared on the same completions (paired): their label differences come from the
    strategies alone, early stop changes cost and never labels, exactly as the library says.

    Seconds: each rollout is charged its share of its sampling call's wall time (in proportion to generated
    tokens); a run is charged the seconds of every rollout it receives, by trajectory (:meth:`take_charges`).
    """

    def __init__(self, sampler: TaskRolloutSampler, chunk: int) -> None:
        self.sampler = sampler
        self.chunk = chunk
        self.rollouts_of: dict[PrefixKey, list[Rollout]] = {}
        self.seconds_of: dict[PrefixKey, list[float]] = {}
        self.charges: dict[TrajectoryKey, float] = {}

    @staticmethod
    def key(prefix: Prefix, k: int) -> PrefixKey:
        return (*trajectory_key(prefix.trajectory), prefix.num_steps, k)

    def rollouts(self, prefixes: Sequence[Prefix], k: int, early_stop: bool = False) -> list[list[Rollout]]:
        self.sample_missing(prefixes, k)
        out = []
        for prefix in prefixes:
            key = self.key(prefix, k)
            rollouts = self.rollouts_of[key]
            cut = early_stop_cut([r.outcome for r in rollouts], self.chunk) if early_stop else len(rollouts)
            charged = trajectory_key(prefix.trajectory)
            self.charges[charged] = self.charges.get(charged, 0.0) + sum(self.seconds_of[key][:cut])
            out.append(list(rollouts[:cut]))
        return out

    def sample_missing(self, prefixes: Sequence[Prefix], k: int) -> None:
        """Sample ``k`` rollouts of every prefix not remembered yet, in one call."""
        missing = list(
            {self.key(p, k): p for p in prefixes if self.key(p, k) not in self.rollouts_of}.values()
        )
        if not missing:
            return
        started = time.perf_counter()
        batches = self.sampler.rollouts(missing, k)
        seconds = time.perf_counter() - started
        rows = [r for rollouts in batches for r in rollouts]
        weights = [r.num_tokens for r in rows] if any(r.num_tokens for r in rows) else [1.0] * len(rows)
        shares = iter(share_seconds(seconds, weights))
        for prefix, rollouts in zip(missing, batches, strict=True):
            self.rollouts_of[self.key(prefix, k)] = rollouts
            self.seconds_of[self.key(prefix, k)] = [next(shares) for _ in rollouts]

    def take_charges(self) -> dict[TrajectoryKey, float]:
        """The seconds charged to each trajectory since the last call, and a fresh count."""
        charges, self.charges = self.charges, {}
        return charges


# --------------------------------------------------------------------------------------------- reports


@dataclass
class RunReport:
    """Every figure of one run. Costs per trajectory are dicts of completions, generated tokens, seconds."""

    run: str
    strategy: str
    early_stop: bool
    noise: float | None
    trajectories: int
    wrong_answers: int
    labelled: int
    labelled_wrong: int
    expanded: int
    dropped: int
    seconds: float
    cost: dict[str, float]
    per_labelled: dict[str, float] | None
    per_labelled_wrong: dict[str, float] | None
    first_error_accuracy: Rate
    steps_all: StepCounts
    steps_wrong: StepCounts
    steps_correct: StepCounts
    expansion_accuracy: Rate
    detection_accuracy: Rate | None = None
    verdicts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["first_error_accuracy"]["value"] = self.first_error_accuracy.value
        data["expansion_accuracy"]["value"] = self.expansion_accuracy.value
        if self.detection_accuracy is not None:
            data["detection_accuracy"]["value"] = self.detection_accuracy.value
        for name in ("steps_all", "steps_wrong", "steps_correct"):
            data[name]["f1"] = getattr(self, name).f1
        return data


def detection_accuracy(
    trajectories: Sequence[Trajectory], truth: Callable[[Trajectory], list[float]]
) -> Rate | None:
    """For first-error runs: the share of wrong-answer trajectories whose *pre-assigned* first error (the
    scorer's largest drop, before verification) is the oracle's; None for other strategies."""
    detected = [t for t in trajectories if "verification" in t.meta]
    if not detected:
        return None
    rate = Rate()
    for t in detected:
        rate.total += 1
        rate.hits += t.meta["verification"]["detected"] == first_error_of(truth(t))
    return rate


def spent(trajectories: Sequence[Trajectory], seconds: Callable[[Trajectory], float] | None = None) -> Cost:
    """The summed cost of ``trajectories``; ``seconds`` replaces each one's seconds when given."""
    total = sum((t.cost for t in trajectories), Cost())
    if seconds is not None:
        total.seconds = sum(seconds(t) for t in trajectories)
    return total


def evaluate(
    run: Run,
    result: LabelResult,
    truth: Callable[[Trajectory], list[float]],
    seconds: Callable[[Trajectory], float] | None = None,
) -> RunReport:
    """Score one run's labels against the oracle and divide its cost by what it labelled.

    Cost is what the run spent on every input (labelled or dropped; expansions cost nothing of their own),
    per labelled trajectory; and what it spent on the wrong-answer inputs, per labelled wrong-answer
    trajectory. ``seconds`` gives a trajectory's seconds when the library's (the wall time of the sampler
    calls, shared out) do not apply (runs on a :class:`RolloutMemory`).
    """
    inputs = result.labelled + result.dropped
    wrong_inputs = [t for t in inputs if not t.outcome]
    labelled_wrong = [t for t in result.labelled if not t.outcome]
    labelled_correct = [t for t in result.labelled if t.outcome]

    def pairs(trajectories: Sequence[Trajectory]) -> list[LabelPair]:
        return [(t.labels or [], truth(t)) for t in trajectories]

    total = spent(inputs, seconds)
    verdicts = {
        k: v for k, v in result.stats.items() if k in ("confirmed", "later", "earlier", "inconsistent")
    }
    return RunReport(
        run=run.label,
        strategy=run.strategy,
        early_stop=run.early_stop,
        noise=run.noise,
        trajectories=len(inputs),
        wrong_answers=len(wrong_inputs),
        labelled=len(result.labelled),
        labelled_wrong=len(labelled_wrong),
        expanded=len(result.expanded),
        dropped=len(result.dropped),
        seconds=total.seconds,
        cost=label_cost(total),
        per_labelled=per_trajectory(total, len(result.labelled)),
        per_labelled_wrong=per_trajectory(spent(wrong_inputs, seconds), len(labelled_wrong)),
        first_error_accuracy=first_error_accuracy(pairs(labelled_wrong)),
        steps_all=wrong_step_counts(pairs(result.labelled)),
        steps_wrong=wrong_step_counts(pairs(labelled_wrong)),
        steps_correct=wrong_step_counts(pairs(labelled_correct)),
        expansion_accuracy=first_error_accuracy(pairs(result.expanded)),
        detection_accuracy=detection_accuracy(wrong_inputs, truth),
        verdicts=verdicts,
    )


@dataclass
class TaskReport:
    """One task's trajectories, reasoner and runs."""

    task: str
    oracle: str
    model: str
    questions: int
    sampled: int
    trajectories: int
    wrong_answers: int
    mean_steps: float
    oracle_errors_in_correct_answers: int
    oracle_clean_wrong_answers: int
    sampling: dict[str, float]
    sft_seconds: float | None
    runs: list[RunReport] = field(default_factory=list)
    sweep: list[RunReport] = field(default_factory=list)
    seconds: float = 0.0

    def find(self, label: str) -> RunReport | None:
        return next((r for r in self.runs + self.sweep if r.run == label), None)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("runs", "sweep")}
        data["runs"] = [r.to_dict() for r in self.runs]
        data["sweep"] = [r.to_dict() for r in self.sweep]
        return data


# --------------------------------------------------------------------------------------------- tasks


def benchmark_task(name: str, args: argparse.Namespace) -> tuple[MathTask, list[Question]]:
    """The task (test questions) whose trajectories are labelled: ``--arith-questions`` seeded synthetic
    problems of ``--min-steps`` to ``--max-steps`` equations, or a seeded sample of GSM8K's test file."""
    if name == "arithmetic":
        task = ArithmeticTask(
            split="test",
            num_questions=args.arith_questions,
            seed=args.seed,
            min_steps=args.min_steps,
            max_steps=args.max_steps,
            num_fewshot=args.fewshot,
        )
        return task, task.load()
    task = GSM8KTask(source=str(Path(args.gsm8k_data) / "test.jsonl"), num_fewshot=args.fewshot)
    questions = task.load()
    rng = random.Random(f"labelling-benchmark/{args.seed}")
    chosen = sorted(rng.sample(range(len(questions)), min(args.gsm8k_questions, len(questions))))
    return task, [questions[i] for i in chosen]


def sft_task(name: str, args: argparse.Namespace) -> tuple[MathTask, dict[str, Any]]:
    """The training questions of the short SFT, and the settings that name its cached checkpoint."""
    if name == "arithmetic":
        task = ArithmeticTask(
            split="train",
            num_questions=args.arith_sft_questions,
            seed=args.seed,
            min_steps=args.min_steps,
            max_steps=args.max_steps,
        )
        source = {"split": "train", "min_steps": args.min_steps, "max_steps": args.max_steps}
        count = args.arith_sft_questions
    else:
        path = str(Path(args.gsm8k_data) / "train.jsonl")
        task = GSM8KTask(source=path, stop=args.gsm8k_sft_questions)
        source = {"file": path}
        count = args.gsm8k_sft_questions
    settings = {
        "base": args.base,
        "task": name,
        **source,
        "questions": count,
        "seed": args.seed,
        "epochs": 1,
        "batch_size": args.sft_batch_size,
        "learning_rate": args.sft_lr,
        "max_length": args.sft_max_length,
        "precision": args.sft_precision,
    }
    return task, settings


def sft_checkpoint(name: str, args: argparse.Namespace) -> tuple[Path, float | None]:
    """A short SFT of ``--base`` on the task's gold solutions, saved in transformers' format under
    ``<cache>/labelling-sft/<task>-<hash of the settings>``; a later run with the same settings reuses it.

    Returns the folder and the training seconds (None when it was reused).
    """
    import lightning as L

    from sapo.callbacks import ExportPretrained
    from sapo.data.datamodule import SFTDataModule
    from sapo.models.reasoner import ORPOReasoner

    task, settings = sft_task(name, args)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_root(args) / "labelling-sft" / f"{name}-{key}"
    manifest = folder / "labelling-sft.json"
    if manifest.is_file():
        print(f"[{name}] reusing the SFT checkpoint {folder}")
        return folder, None
    print(f"[{name}] short SFT of {args.base} on {settings['questions']} gold solutions -> {folder}")
    started = time.perf_counter()
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    L.seed_everything(args.seed, workers=True)
    module = ORPOReasoner(
        BackboneSpec(args.base, dtype="float32", cache_dir=args.cache_dir), learning_rate=args.sft_lr
    )
    data = SFTDataModule(task, batch_size=args.sft_batch_size, max_length=args.sft_max_length)
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=1,
        precision=args.sft_precision,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(staging),
        callbacks=[ExportPretrained(str(staging))],
    )
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - started
    (staging / "labelling-sft.json").write_text(json.dumps({**settings, "seconds": seconds}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    print(f"[{name}] SFT done in {seconds:.0f} s")
    return folder, seconds


def reasoner(name: str, args: argparse.Namespace) -> tuple[str, float | None]:
    """The reasoner for task ``name``: ``--gsm8k-model`` (GSM8K), ``--model``, else the cached short SFT."""
    given = args.gsm8k_model if name == "gsm8k" and args.gsm8k_model else args.model
    if given:
        return given, None
    folder, seconds = sft_checkpoint(name, args)
    return str(folder), seconds


def cache_root(args: argparse.Namespace) -> Path:
    return Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()


def new_sampler(
    model: Any,
    tokenizer: Any,
    task: MathTask,
    questions: Sequence[Question],
    max_new_tokens: int,
    args: argparse.Namespace,
    *stream: str,
) -> TaskRolloutSampler:
    """A fresh task sampler with its own seed, derived from ``--seed`` and ``stream`` (so each run's samples
    do not depend on which runs came before it)."""
    sampler = Sampler(
        model,
        tokenizer,
        max_new_tokens=max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        seed=derive_seed(args.seed, task.name, *stream),
        backend="transformers",
        progress=not args.no_progress,
    )
    return TaskRolloutSampler(sampler, task, questions, early_stop_chunk=early_stop_chunk(args))


def summarise_sampling(costs: Sequence[Cost]) -> dict[str, float]:
    total = sum(costs, Cost())
    return {
        "completions": total.completions,
        "generated_tokens": total.generated_tokens,
        "seconds": total.seconds,
        "tokens_per_second": total.tokens_per_second,
    }


def run_task(name: str, args: argparse.Namespace) -> TaskReport:
    """Sample the task's trajectories once, label them with every run, and score every run."""
    started = time.perf_counter()
    task, questions = benchmark_task(name, args)
    model_name, sft_seconds = reasoner(name, args)
    model, tokenizer = load_backbone(model_name, dtype=args.dtype, cache_dir=args.cache_dir)
    max_new_tokens = args.gsm8k_max_new_tokens if name == "gsm8k" else args.arith_max_new_tokens
    costs: list[Cost] = []

    def sampler_for(*stream: str) -> TaskRolloutSampler:
        made = new_sampler(model, tokenizer, task, questions, max_new_tokens, args, *stream)
        costs.append(made.sampler.cost)
        return made

    sampler = sampler_for("trajectories")
    trajectories = sampler.sample_trajectories(questions, args.samples)
    truth = OracleTruth(task, questions)
    report = task_summary(name, task, model_name, questions, trajectories, truth, sampler, sft_seconds)
    print(
        f"[{name}] {report.trajectories} trajectories ({report.sampled} sampled, {report.wrong_answers} wrong "
        f"answers, {report.mean_steps:.1f} steps on average) in {sampler.last_cost.seconds:.0f} s"
    )
    memory = None if args.fresh_rollouts else RolloutMemory(sampler_for("rollouts"), early_stop_chunk(args))
    runs = planned_runs(args.strategies, args.early_stop, args.scorer_noise)
    sweep = sweep_runs(args.noise, runs) if name in args.sweep_tasks else []
    for run in [*runs, *sweep] if trajectories else []:
        rollouts = memory or sampler_for("run", run.label)
        scorer = (
            OracleScorer(task, questions, noise=run.noise, seed=args.seed) if run.noise is not None else None
        )
        result = build_strategy(run, args.k, args.seed).label(trajectories, rollouts, scorer)
        charges = memory.take_charges() if memory else None
        seconds = (lambda t, c=charges: c.get(trajectory_key(t), 0.0)) if charges is not None else None
        row = evaluate(run, result, truth, seconds)
        (report.sweep if run in sweep else report.runs).append(row)
        print(f"[{name}] {run_line(row)}")
    report.sampling = summarise_sampling(costs)
    report.seconds = time.perf_counter() - started
    return report


def early_stop_chunk(args: argparse.Namespace) -> int:
    """Rollouts per prefix per round under early stop (TaskRolloutSampler's default: a quarter of k)."""
    return args.early_stop_chunk or math.ceil(args.k / 4)


def task_summary(
    name: str,
    task: MathTask,
    model_name: str,
    questions: Sequence[Question],
    trajectories: Sequence[Trajectory],
    truth: OracleTruth,
    sampler: TaskRolloutSampler,
    sft_seconds: float | None,
) -> TaskReport:
    """What was sampled: counts, steps, and where outcome and oracle disagree."""
    wrong = [t for t in trajectories if not t.outcome]
    correct = [t for t in trajectories if t.outcome]
    return TaskReport(
        task=name,
        oracle="approximate" if getattr(task, "approximate_oracle", False) else "exact",
        model=model_name,
        questions=len(questions),
        sampled=sampler.last_cost.completions,
        trajectories=len(trajectories),
        wrong_answers=len(wrong),
        mean_steps=sum(t.num_steps for t in trajectories) / max(1, len(trajectories)),
        oracle_errors_in_correct_answers=sum(first_error_of(truth(t)) != NO_ERROR for t in correct),
        oracle_clean_wrong_answers=sum(first_error_of(truth(t)) == NO_ERROR for t in wrong),
        sampling={},
        sft_seconds=sft_seconds,
    )


# --------------------------------------------------------------------------------------------- output


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def cost_cells(per: dict[str, float] | None) -> list[str]:
    if per is None:
        return ["–", "–", "–"]
    return [fmt(per["completions"], 1), fmt(per["generated_tokens"], 0), fmt(per["seconds"], 2)]


def run_line(row: RunReport) -> str:
    """One progress line per run."""
    tokens = row.per_labelled_wrong["generated_tokens"] if row.per_labelled_wrong else None
    return (
        f"{row.run}: {row.labelled} labelled (+{row.expanded} expanded, {row.dropped} dropped), "
        f"{row.cost['completions']} completions, {row.cost['generated_tokens']} tokens, {row.seconds:.1f} s; "
        f"{fmt(tokens, 0)} tokens per labelled wrong answer; first-error accuracy {row.first_error_accuracy}"
    )


RUN_HEADER = [
    "run",
    "labelled (wrong ans.)",
    "+expanded",
    "dropped",
    "compl./traj.",
    "tokens/traj.",
    "s/traj.",
    "compl./wrong",
    "tokens/wrong",
    "s/wrong",
    "first-error acc.",
    "step F1",
    "step F1 wrong ans.",
    "step F1 correct ans.",
    "expansion acc.",
]


def run_cells(row: RunReport) -> list[str]:
    return [
        row.run,
        f"{row.labelled} ({row.labelled_wrong})",
        str(row.expanded),
        str(row.dropped),
        *cost_cells(row.per_labelled),
        *cost_cells(row.per_labelled_wrong),
        str(row.first_error_accuracy),
        fmt(row.steps_all.f1, 3),
        fmt(row.steps_wrong.f1, 3),
        fmt(row.steps_correct.f1, 3),
        str(row.expansion_accuracy) if row.expanded else "–",
    ]


SWEEP_HEADER = [
    "run",
    "t̂ = oracle (scorer alone)",
    "first-error acc.",
    "confirmed",
    "later",
    "earlier",
    "inconsistent",
    "dropped",
    "+expanded",
    "tokens/wrong",
]


def sweep_table_rows(report: TaskReport) -> list[RunReport]:
    """The verifier-quality table: Monte Carlo, first error at every noise (``early_stop`` off), random step."""
    first_error_rows = [
        r for r in report.runs + report.sweep if r.strategy == "first_error" and not r.early_stop
    ]
    return [
        *(r for r in [report.find("monte_carlo")] if r),
        *sorted(first_error_rows, key=lambda r: r.noise or 0.0),
        *(r for r in [report.find("random_step")] if r),
    ]


def sweep_cells(row: RunReport) -> list[str]:
    tokens = row.per_labelled_wrong["generated_tokens"] if row.per_labelled_wrong else None
    return [
        row.run,
        str(row.detection_accuracy) if row.detection_accuracy else "–",
        str(row.first_error_accuracy),
        *(
            str(row.verdicts[v]) if v in row.verdicts else "–"
            for v in ("confirmed", "later", "earlier", "inconsistent")
        ),
        str(row.dropped),
        str(row.expanded),
        fmt(tokens, 0),
    ]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def token_target(mc: RunReport | None, fe: RunReport | None, k: int) -> str | None:
    """First error spends at least 3x fewer generated tokens per labelled wrong-answer trajectory than Monte
    Carlo with the same k (and the same ``early_stop``)."""
    if not (mc and fe and mc.per_labelled_wrong and fe.per_labelled_wrong):
        return None
    mc_tokens = mc.per_labelled_wrong["generated_tokens"]
    fe_tokens = fe.per_labelled_wrong["generated_tokens"]
    ratio = mc_tokens / fe_tokens if fe_tokens else float("inf")
    return (
        f"tokens per labelled wrong-answer trajectory, k={k}: {mc.run} {mc_tokens:.0f} / {fe.run} "
        f"{fe_tokens:.0f} = {ratio:.2f}x (target >= {TOKEN_RATIO_TARGET:g}x): {met(ratio >= TOKEN_RATIO_TARGET)}"
    )


def accuracy_target(mc: RunReport | None, fe: RunReport | None) -> str | None:
    """First error's first-error accuracy is at most 5 points below Monte Carlo's."""
    if not (mc and fe) or mc.first_error_accuracy.value is None or fe.first_error_accuracy.value is None:
        return None
    gap = fe.first_error_accuracy.value - mc.first_error_accuracy.value
    return (
        f"first-error accuracy: {fe.run} {fe.first_error_accuracy} vs {mc.run} {mc.first_error_accuracy}: "
        f"{100 * gap:+.1f} points (target: at most {100 * ACCURACY_GAP_TARGET:g} points below): "
        f"{met(gap >= -ACCURACY_GAP_TARGET)}"
    )


def target_lines(report: TaskReport, k: int, noise: float, small_noise: float) -> list[str]:
    """The targets, measured: the token ratio with early stop off and on, and the accuracy gap with the scorer
    at ``noise`` and at ``small_noise``."""
    lines = [
        token_target(report.find("monte_carlo"), report.find(f"first_error σ={noise:g}"), k),
        token_target(report.find("monte_carlo +es"), report.find(f"first_error σ={noise:g} +es"), k),
    ]
    for sigma in dict.fromkeys([noise, small_noise]):
        lines.append(accuracy_target(report.find("monte_carlo"), report.find(f"first_error σ={sigma:g}")))
    return [line for line in lines if line] or ["(the targets need the monte_carlo and first_error runs)"]


def task_markdown(report: TaskReport, args: argparse.Namespace) -> str:
    sampling = report.sampling
    sft = "reused from the cache" if report.sft_seconds is None else f"trained in {report.sft_seconds:.0f} s"
    lines = [
        f"## {report.task} ({report.oracle} oracle)",
        "",
        f"- reasoner: `{report.model}`"
        + ("" if report.model in (args.model, args.gsm8k_model) else f" (short SFT, {sft})"),
        f"- {report.questions} questions x K={args.samples}: {report.sampled} sampled, {report.trajectories} "
        f"after deduplication, {report.wrong_answers} with a wrong answer; {report.mean_steps:.1f} steps on "
        "average",
        f"- oracle against outcome: {report.oracle_errors_in_correct_answers} correct-answer trajectories have "
        f"an oracle error (right answer, wrong step), {report.oracle_clean_wrong_answers} wrong-answer "
        "trajectories have none",
        f"- sampling: {sampling.get('completions', 0)} completions, {sampling.get('generated_tokens', 0)} "
        f"tokens in {sampling.get('seconds', 0):.0f} s ({sampling.get('tokens_per_second', 0):.0f} tokens/s); "
        f"task total {report.seconds:.0f} s",
        "",
        markdown_table(RUN_HEADER, [run_cells(r) for r in report.runs]),
        "",
        "Targets:",
        "",
        *(f"- {line}" for line in target_lines(report, args.k, args.scorer_noise, args.small_noise)),
    ]
    if report.sweep:
        lines += [
            "",
            "Verifier quality: first-error supervision with an OracleScorer of noise σ; Monte Carlo and random "
            "step (no scorer at all) for reference:",
            "",
            markdown_table(SWEEP_HEADER, [sweep_cells(r) for r in sweep_table_rows(report)]),
        ]
    return "\n".join(lines)


def settings_line(args: argparse.Namespace) -> str:
    return (
        f"k={args.k}, K={args.samples}, arithmetic {args.arith_questions} questions of {args.min_steps}-"
        f"{args.max_steps} equations, max_new_tokens {args.arith_max_new_tokens}; GSM8K {args.gsm8k_questions} "
        f"questions, max_new_tokens {args.gsm8k_max_new_tokens}; T={args.temperature}, top_p={args.top_p}, "
        f"batch {args.batch_size}, dtype {args.dtype}, seed {args.seed}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )


DEFINITIONS = """\
Columns: *compl./traj.*, *tokens/traj.*, *s/traj.*: completions, generated tokens and sampling seconds the
run spent, divided by the trajectories it labelled (correct-answer trajectories cost nothing, except to
`monte_carlo_all`: `estimate_correct_answers=True`); *…/wrong*: what it spent on wrong-answer trajectories
(dropped ones included), divided by the wrong-answer trajectories it labelled. *first-error acc.*: share of
labelled wrong-answer trajectories whose first error (first label < 0.5, or -1) is the oracle's. *step F1*:
F1 of the "step is wrong" class over all steps of the labelled trajectories, against the oracle's prefix
labels (1 before its first error, 0 from it on); then on wrong-answer and correct-answer trajectories alone
(– when neither side calls any step wrong). *expansion acc.*: share of expanded trajectories whose labels
equal the oracle's. *+es*: `early_stop=True`. *σ*: the OracleScorer's noise. *t̂ = oracle*: share of
wrong-answer trajectories whose pre-assigned first error (the scorer's largest drop, before verification) is
the oracle's. Unless `--fresh-rollouts` was given, all runs of a task share their rollouts (the same k
completions of a prefix, sampled once; seconds are the sampling time of the completions a run used). See
docs/labelling.md."""


def write_report(
    reports: Sequence[TaskReport], args: argparse.Namespace, seconds: float, argv: Sequence[str]
) -> str:
    """The markdown report, the JSON figures and the two plots, next to ``--out``; returns the markdown."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cost_png = out.with_name(out.stem + "_cost.png")
    noise_png = out.with_name(out.stem + "_noise.png")
    plot_cost(reports, cost_png)
    plot_noise(reports, noise_png)
    command = "python benchmarks/labelling.py " + " ".join(shlex.quote(a) for a in argv)
    text = "\n\n".join(
        [
            "# Labelling benchmark",
            f"`{command}`\n\n{settings_line(args)}; total {seconds / 60:.1f} min.",
            *(task_markdown(r, args) for r in reports),
            f"![cost against first-error accuracy]({cost_png.name})\n\n![first-error accuracy against scorer noise]({noise_png.name})",
            DEFINITIONS,
        ]
    )
    out.write_text(text + "\n", encoding="utf-8")
    figures = {"command": command, "settings": vars(args), "seconds": seconds}
    figures["tasks"] = [r.to_dict() for r in reports]
    out.with_suffix(".json").write_text(json.dumps(figures, indent=2, ensure_ascii=False, default=str) + "\n")
    return text


def plot_cost(reports: Sequence[TaskReport], path: Path) -> None:
    """Tokens per labelled wrong-answer trajectory against first-error accuracy, one point per run (colour:
    strategy; filled circle: ``early_stop`` off, open triangle: on)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, max(1, len(reports)), figsize=(6.5 * max(1, len(reports)), 4.8), squeeze=False
    )
    for ax, report in zip(axes[0], reports, strict=False):
        for row in report.runs:
            if row.per_labelled_wrong is None or row.first_error_accuracy.value is None:
                continue
            x, y = row.per_labelled_wrong["generated_tokens"], row.first_error_accuracy.value
            color = f"C{STRATEGIES.index(row.strategy)}"
            style = {"facecolors": "none", "edgecolors": color} if row.early_stop else {"color": color}
            ax.scatter(x, y, marker="^" if row.early_stop else "o", s=60, label=row.run, **style)
        ax.legend(fontsize=7, loc="best")
        ax.set_title(f"{report.task} ({report.oracle} oracle, {report.wrong_answers} wrong answers)")
        ax.set_xlabel("generated tokens per labelled wrong-answer trajectory")
        ax.set_ylabel("first-error accuracy")
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_noise(reports: Sequence[TaskReport], path: Path) -> None:
    """First-error accuracy of first-error supervision against the scorer's noise (after verification, and
    the scorer's own pre-assigned first error), with Monte Carlo and random step on the same rollouts as
    horizontal references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in reports if r.sweep] or list(reports)
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(6.5 * max(1, len(shown)), 4.8), squeeze=False)
    for ax, report in zip(axes[0], shown, strict=False):
        rows = [r for r in sweep_table_rows(report) if r.strategy == "first_error"]
        verified = [
            (r.noise or 0.0, r.first_error_accuracy.value)
            for r in rows
            if r.first_error_accuracy.value is not None
        ]
        detected = [(r.noise or 0.0, r.detection_accuracy.value) for r in rows if r.detection_accuracy]
        if verified:
            ax.plot(*zip(*verified, strict=True), "o-", label="first_error (verified)")
        if detected:
            ax.plot(*zip(*detected, strict=True), "s--", label="scorer alone (t̂ before verification)")
        for row, style in (
            (report.find("monte_carlo"), ":"),
            (report.find("random_step"), "-."),
        ):
            if row and row.first_error_accuracy.value is not None:
                ax.axhline(
                    row.first_error_accuracy.value,
                    linestyle=style,
                    color="k" if style == ":" else "r",
                    label=row.run,
                )
        ax.set_title(f"{report.task} ({report.oracle} oracle, {report.wrong_answers} wrong answers)")
        ax.set_xlabel("OracleScorer noise σ")
        ax.set_ylabel("first-error accuracy")
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--quick", action="store_true", help=f"tiny sizes that check the script works: {QUICK}")
    add("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    add(
        "--out",
        default="runs/labelling/labelling.md",
        help="the markdown report; JSON and PNGs go next to it",
    )
    add(
        "--model",
        default=None,
        help="use this reasoner as it is (a checkpoint folder, or a known name such as "
        f"{TINY_RANDOM}); default: a short SFT of --base per task, cached",
    )
    add("--gsm8k-model", default=None, help="the GSM8K reasoner, if not --model")
    add("--base", default=PACKAGED_SMOLLM2, help="what the short SFT starts from")
    add(
        "--cache-dir",
        default=None,
        help="model cache and SFT checkpoints (default: $SAPO_CACHE or ~/.cache/sapo)",
    )
    add("--dtype", default="bfloat16", help="the reasoner's dtype for sampling")
    add("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    add(
        "--early-stop",
        nargs="+",
        choices=["off", "on"],
        default=["off", "on"],
        help="early_stop settings of the hard-rule strategies",
    )
    add("--k", type=int, default=8, help="completions per rollout estimate (every strategy)")
    add("--samples", type=int, default=4, help="K trajectories sampled per question")
    add("--arith-questions", type=int, default=12, help="arithmetic test questions")
    add("--min-steps", type=int, default=4, help="fewest equations of an arithmetic problem")
    add("--max-steps", type=int, default=7, help="most equations of an arithmetic problem")
    add("--arith-max-new-tokens", type=int, default=112, help="token budget of an arithmetic completion")
    add("--gsm8k-questions", type=int, default=4, help="GSM8K test questions (a seeded sample)")
    add("--gsm8k-max-new-tokens", type=int, default=160, help="token budget of a GSM8K completion")
    add("--gsm8k-data", default=GSM8K_DATA, help="folder with test.jsonl (questions) and train.jsonl (SFT)")
    add("--fewshot", type=int, default=0, help="gold examples in each prompt")
    add("--temperature", type=float, default=1.0)
    add("--top-p", type=float, default=1.0)
    add("--batch-size", type=int, default=32, help="rows per generate call")
    add("--scorer-noise", type=float, default=0.0, help="the OracleScorer noise of the main first_error runs")
    add("--small-noise", type=float, default=0.1, help="the 'small noise' the accuracy target also checks")
    add(
        "--noise",
        type=float,
        nargs="*",
        default=[0.0, 0.1, 0.2, 0.3, 0.5],
        help="the noise sweep (first error on the Monte Carlo run's rollouts); none: no sweep",
    )
    add("--sweep-tasks", nargs="*", choices=TASKS, default=list(TASKS), help="tasks the sweep runs on")
    add("--arith-sft-questions", type=int, default=320, help="gold solutions of the arithmetic SFT")
    add("--gsm8k-sft-questions", type=int, default=96, help="gold solutions of the GSM8K SFT")
    add("--sft-batch-size", type=int, default=8, help="SFT: one epoch of this batch size")
    add("--sft-lr", type=float, default=1e-4)
    add("--sft-max-length", type=int, default=384)
    add("--sft-precision", default="bf16-mixed")
    add(
        "--fresh-rollouts",
        action="store_true",
        help="every run samples its own rollouts (wall-clock seconds per run, but no pairing and several times "
        "the sampling); default: one shared RolloutMemory per task",
    )
    add(
        "--early-stop-chunk", type=int, default=None, help="rollouts per round under early stop (default k/4)"
    )
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments; with ``--quick`` the :data:`QUICK` sizes replace the defaults (explicit flags win)."""
    p = parser()
    if p.parse_args(argv).quick:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    args.early_stop = [v == "on" for v in dict.fromkeys(args.early_stop)]
    if "gsm8k" in args.tasks and not (Path(args.gsm8k_data) / "test.jsonl").is_file():
        p.error(f"no GSM8K test file in {args.gsm8k_data} (use --gsm8k-data, or --tasks arithmetic)")
    return args


def main(argv: Sequence[str] | None = None) -> list[TaskReport]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its thread pool fights torch's on few cores
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    reports = [run_task(name, args) for name in args.tasks]
    seconds = time.perf_counter() - started
    print("\n" + write_report(reports, args, seconds, argv))
    print(f"\nwrote {args.out} (and .json, _cost.png, _noise.png) in {seconds / 60:.1f} min")
    return reports


if __name__ == "__main__":
    main()
