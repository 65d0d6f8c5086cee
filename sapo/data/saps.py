"""SAPSDataModule: the data of every phase of the self-evolution loop.

The loop (:class:`sapo.evolution.SelfEvolution`) asks it, phase by phase, for: the SFT data (gold
solutions), samples of the current reasoner, step labels from a supervision strategy, the verifier's
training set, and the preference pairs the verifier ranks; then it serves the phase's batches to the
phase's trainer through :meth:`train_dataloader`. Sampling and labelling are written chunk by chunk to the
run directory, so that a run killed halfway keeps every finished chunk (see
:mod:`sapo.evolution.run_directory`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from sapo.data.batching import training_dataloader
from sapo.data.datamodule import gold_pairs
from sapo.data.pairs import build_pairs, rft_pairs
from sapo.data.preference import PreferencePair
from sapo.data.tasks.base import Question, Task
from sapo.data.trajectory import Cost, Trajectory
from sapo.rollout import Sampler, SamplingCost, TaskRolloutSampler, derive_seed
from sapo.supervision import BinarySearchSupervision, FirstErrorSupervision, SupervisionStrategy
from sapo.supervision.protocols import StepScorer

__all__ = ["LabelledData", "SAPSDataModule"]


@dataclass
class LabelledData:
    """What one labelling phase produced (all chunks together)."""

    labelled: list[Trajectory] = field(default_factory=list)
    expanded: list[Trajectory] = field(default_factory=list)
    dropped: list[Trajectory] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)

    @property
    def trajectories(self) -> list[Trajectory]:
        """What trains the verifier: the labelled inputs, then the expansions."""
        return self.labelled + self.expanded

    def stats(self) -> dict[str, Any]:
        wrong = [t for t in self.labelled + self.dropped if t.outcome is False]
        verdicts = [t.meta["verification"].get("verdict") for t in wrong if "verification" in t.meta]
        verified = [v for v in verdicts if v is not None]
        return {
            "labelled": len(self.labelled),
            "expanded": len(self.expanded),
            "dropped": len(self.dropped),
            "wrong_answers": len(wrong),
            # paper Table 2: the share of pre-assigned first errors that verification found wrong
            "self_verification_error": (
                sum(v != "confirmed" for v in verified) / len(verified) if verified else None
            ),
            "cost": self.cost.to_dict(),
        }


class SAPSDataModule(L.LightningDataModule):
    """The data of the self-evolution loop: gold solutions, samples, SAPS labels, verifier data, pairs.

    Args:
        task: the training questions, their gold solutions and their checker.
        heldout_task: held-out questions for the evaluation at the end of each iteration (None: none).
        heldout_questions: how many held-out questions to evaluate on (the first ones).
        samples_per_question: K, trajectories sampled per question and iteration. Decision (the paper does
            not say): 8, SIPF's 4 correct + 4 incorrect kept per question; sapo keeps every distinct one.
        temperature: sampling temperature (SIPF: 1.0 for math, 0.7 for code).
        top_p: nucleus sampling threshold (SIPF: 1.0).
        max_new_tokens: token budget of a sampled solution and of a rollout (SIPF: 512).
        sample_batch_size: rows per ``generate`` call when sampling and rolling out.
        questions_per_iteration: how many training questions are sampled each iteration (a seeded draw,
            different each iteration); None: all.
        initial_strategy: labels the first samples (the paper: binary search, OmegaPRM-style). None:
            ``BinarySearchSupervision()``.
        strategy: labels each iteration's new samples (the paper: first-error supervision). None:
            ``FirstErrorSupervision()``. Swap it for a baseline in one line of YAML.
        labels_per_iteration: how many of an iteration's new samples are labelled (a seeded draw: the
            paper's ``subset``); None: all.
        accumulate_samples: D_t = new samples ∪ D_{t-1} (the paper); False: only the new samples (and the
            gold solutions) make pairs.
        accumulate_labels: the verifier trains on L_t ∪ L_{t-1} (decision: labels accumulate); False: on
            L_t alone.
        include_gold: the gold solutions are part of D (``D_0 = Sample(M_0) ∪ D_org``) and can be chosen in
            pairs.
        margin: η, the least reward difference of a pair (0.3).
        max_pairs_per_question: at most this many pairs per question, largest margin first (4).
        require_correct_chosen: the chosen side of a pair must have a correct answer (sapo's default; off
            is the paper's score-only rule).
        pair_source: ``"verifier"`` (pairs ranked by the verifier, the method) or ``"rft"`` (no pairs: SFT on
            the correct self-samples, the RFT baseline).
        batch_size: rows per training batch (pairs, or trajectories for the verifier).
        max_length: tokens per training sequence.
        chunk_size: questions (when sampling) or trajectories (when labelling) per chunk written to disk.
        seed: the root of every sampling and labelling seed, and of the subset draws.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        task: Task,
        heldout_task: Task | None = None,
        heldout_questions: int = 100,
        samples_per_question: int = 8,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 512,
        sample_batch_size: int = 32,
        questions_per_iteration: int | None = None,
        initial_strategy: SupervisionStrategy | None = None,
        strategy: SupervisionStrategy | None = None,
        labels_per_iteration: int | None = None,
        accumulate_samples: bool = True,
        accumulate_labels: bool = True,
        include_gold: bool = True,
        margin: float = 0.3,
        max_pairs_per_question: int = 4,
        require_correct_chosen: bool = True,
        pair_source: str = "verifier",
        batch_size: int = 8,
        max_length: int = 512,
        chunk_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        positive = {
            "heldout_questions": heldout_questions,
            "samples_per_question": samples_per_question,
            "max_new_tokens": max_new_tokens,
            "sample_batch_size": sample_batch_size,
            "max_pairs_per_question": max_pairs_per_question,
            "batch_size": batch_size,
            "max_length": max_length,
            "chunk_size": chunk_size,
            "questions_per_iteration": questions_per_iteration or 1,
            "labels_per_iteration": labels_per_iteration or 1,
        }
        for key, value in positive.items():
            if value < 1:
                raise ValueError(f"data.{key} must be at least 1, got {value}")
        if temperature < 0:
            raise ValueError(f"data.temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"data.top_p must be in (0, 1], got {top_p}")
        if not 0 <= margin <= 1:
            raise ValueError(
                f"data.margin must be in [0, 1] (a difference of mean step scores), got {margin}"
            )
        if pair_source not in ("verifier", "rft"):
            raise ValueError(f"data.pair_source must be 'verifier' or 'rft', got {pair_source!r}")
        self.task = task
        self.heldout_task = heldout_task
        self.heldout_questions = heldout_questions
        self.samples_per_question = samples_per_question
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.sample_batch_size = sample_batch_size
        self.questions_per_iteration = questions_per_iteration
        self.initial_strategy = initial_strategy or BinarySearchSupervision()
        self.strategy = strategy or FirstErrorSupervision()
        self.labels_per_iteration = labels_per_iteration
        self.accumulate_samples = accumulate_samples
        self.accumulate_labels = accumulate_labels
        self.include_gold = include_gold
        self.margin = margin
        self.max_pairs_per_question = max_pairs_per_question
        self.require_correct_chosen = require_correct_chosen
        self.pair_source = pair_source
        self.batch_size = batch_size
        self.max_length = max_length
        self.chunk_size = chunk_size
        self.seed = seed
        self.num_workers = num_workers
        self._questions: list[Question] | None = None
        self._phase: tuple[list[Any], Callable[[Sequence[Any]], Any], list[int]] | None = None

    # --- questions ------------------------------------------------------------------------------------------
    @property
    def questions(self) -> list[Question]:
        """The training questions (loaded once)."""
        if self._questions is None:
            self._questions = self.task.load()
        return self._questions

    def iteration_questions(self, iteration: int) -> list[Question]:
        """The questions sampled in ``iteration``: all, or a seeded draw of ``questions_per_iteration``."""
        if self.questions_per_iteration is None or self.questions_per_iteration >= len(self.questions):
            return list(self.questions)
        rng = random.Random(derive_seed(self.seed, "questions", iteration))
        chosen = sorted(rng.sample(range(len(self.questions)), self.questions_per_iteration))
        return [self.questions[i] for i in chosen]

    def heldout(self) -> list[Question]:
        if self.heldout_task is None:
            return []
        return self.heldout_task.load()[: self.heldout_questions]

    # --- phase data -----------------------------------------------------------------------------------------
    def sft_pairs(self, tokenizer: Any) -> list[PreferencePair]:
        """SFT data: one pair per question with its gold solution and no rejected side."""
        return gold_pairs(self.task, tokenizer)

    def gold_trajectories(self, questions: Sequence[Question] | None = None) -> list[Trajectory]:
        """D_org: the gold solutions (of ``questions``, default all) as checked trajectories."""
        return [self.task.gold_trajectory(q) for q in (self.questions if questions is None else questions)]

    def sample(
        self,
        model: Any,
        tokenizer: Any,
        questions: Sequence[Question],
        seed: int,
        store: Any,
        cost: SamplingCost | None = None,
    ) -> list[Trajectory]:
        """K checked, deduplicated trajectories per question, chunk by chunk; finished chunks in ``store``
        (a :class:`~sapo.evolution.run_directory.ChunkedJsonl`) are read back instead of sampled again."""
        trajectories: list[Trajectory] = []
        chunks = [questions[i : i + self.chunk_size] for i in range(0, len(questions), self.chunk_size)]
        for index, chunk in enumerate(chunks):
            if store.has(index):
                trajectories += store.read(index)
                continue
            store.run.start(store.phase, chunk=index, of=len(chunks))
            sampler = self.sampler(model, tokenizer, derive_seed(seed, index))
            adapter = TaskRolloutSampler(sampler, self.task, chunk)
            sampled = adapter.sample_trajectories(chunk, self.samples_per_question)
            store.write(index, sampled)
            if cost is not None:
                cost.add(sampler.cost)
            trajectories += sampled
        return trajectories

    def sampler(self, model: Any, tokenizer: Any, seed: int) -> Sampler:
        return Sampler(
            model,
            tokenizer,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            batch_size=self.sample_batch_size,
            seed=seed,
            backend="transformers",
        )

    def label_subset(self, trajectories: Sequence[Trajectory], iteration: int) -> list[Trajectory]:
        """The paper's ``subset(new samples)``: all, or a seeded draw of ``labels_per_iteration``."""
        usable = [t for t in trajectories if t.num_steps > 0 and t.outcome is not None]
        if self.labels_per_iteration is None or self.labels_per_iteration >= len(usable):
            return usable
        rng = random.Random(derive_seed(self.seed, "label-subset", iteration))
        chosen = sorted(rng.sample(range(len(usable)), self.labels_per_iteration))
        return [usable[i] for i in chosen]

    def label(
        self,
        strategy: SupervisionStrategy,
        trajectories: Sequence[Trajectory],
        model: Any,
        tokenizer: Any,
        scorer: StepScorer | None,
        seed: int,
        store: Any,
    ) -> LabelledData:
        """Label ``trajectories`` with ``strategy`` chunk by chunk (rollouts from ``model``, scores from
        ``scorer``); finished chunks in ``store`` are read back instead of labelled again."""
        result = LabelledData()
        by_id = {q.id: q for q in self.questions}
        chunks = [trajectories[i : i + self.chunk_size] for i in range(0, len(trajectories), self.chunk_size)]
        for index, chunk in enumerate(chunks):
            if not store.has(index):
                store.run.start(store.phase, chunk=index, of=len(chunks))
                sampler = self.sampler(model, tokenizer, derive_seed(seed, index))
                rollouts = TaskRolloutSampler(sampler, self.task, [by_id[t.question_id] for t in chunk])
                out = strategy.label(chunk, rollouts, scorer)
                records = (
                    [{"role": "labelled", **t.to_dict()} for t in out.labelled]
                    + [{"role": "expanded", **t.to_dict()} for t in out.expanded]
                    + [{"role": "dropped", **t.to_dict()} for t in out.dropped]
                    + [{"role": "cost", **out.cost.to_dict()}]
                )
                store.write(index, records)
            for record in store.read_records(index):
                role = record.pop("role")
                if role == "cost":
                    result.cost = result.cost + Cost.from_dict(record)
                else:
                    getattr(result, role).append(Trajectory.from_dict(record))
        return result

    def pairs(
        self, trajectories: Sequence[Trajectory], scores: Sequence[Sequence[float]], tokenizer: Any
    ) -> list[PreferencePair]:
        """The ORPO pairs of ``trajectories`` ranked by their verifier ``scores`` (or RFT's SFT data)."""
        prompts = {q.id: self.task.prompt(q, tokenizer) for q in self.questions}
        if self.pair_source == "rft":
            return rft_pairs(trajectories, prompt=prompts, dedup_key=self.task.dedup_key)
        return build_pairs(
            trajectories,
            scores,
            margin=self.margin,
            max_pairs_per_question=self.max_pairs_per_question,
            require_correct_chosen=self.require_correct_chosen,
            prompt=prompts,
        )

    # --- what the phase's trainer reads ---------------------------------------------------------------------
    def use(
        self, items: Sequence[Any], collator: Callable[[Sequence[Any]], Any], lengths: Sequence[int]
    ) -> None:
        """Serve ``items`` (collated by ``collator``, batched by ``lengths``) to the next ``fit``."""
        if not items:
            raise ValueError("a training phase got no data (see the run directory's manifest for counts)")
        self._phase = (list(items), collator, list(lengths))

    def train_dataloader(self) -> DataLoader:
        if self._phase is None:
            raise RuntimeError(
                "SAPSDataModule serves the loop's phases: run it with a SelfEvolution model "
                "(`sapo fit --model sapo.evolution.SelfEvolution ...`), which sets each phase's data"
            )
        items, collator, lengths = self._phase
        distributed = self.trainer is not None and self.trainer.world_size > 1
        return training_dataloader(
            items, lengths, self.batch_size, collator, self.num_workers, distributed=distributed
        )
