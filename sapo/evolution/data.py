"""SAPSDataModule: the loop's data, and the DataModules of its training phases.

As a LightningDataModule it serves the SFT phase (the task's gold solutions, D_org). It also gives the loop
what the other phases start from: the questions an iteration samples, the held-out questions, the gold
trajectories, each question's prompt, and the DataModules of the verifier and ORPO phases, built from the
labelled trajectories and the pairs the loop produced (:meth:`SAPSDataModule.verifier_data`,
:meth:`SAPSDataModule.pair_data`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sapo.data.datamodule import ItemsDataModule, SFTDataModule, gold_pairs, pair_lengths
from sapo.data.preference import PairCollator, PreferencePair
from sapo.data.prm import PRMCollator, PRMExample
from sapo.data.tasks.base import Question, Task
from sapo.data.trajectory import Cost, Trajectory
from sapo.eval.labels import label_agreement
from sapo.rollout import derive_seed

__all__ = ["LabelledData", "SAPSDataModule", "TaskPrompts"]


@dataclass
class LabelledData:
    """What one or more labelling phases produced (all chunks together)."""

    labelled: list[Trajectory] = field(default_factory=list)
    expanded: list[Trajectory] = field(default_factory=list)
    dropped: list[Trajectory] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)

    @property
    def trajectories(self) -> list[Trajectory]:
        """What trains the verifier: the labelled inputs, then the expansions."""
        return self.labelled + self.expanded

    def __add__(self, other: LabelledData) -> LabelledData:
        """``L_{t-1} ∪ L_t``, each part in order."""
        return LabelledData(
            self.labelled + other.labelled,
            self.expanded + other.expanded,
            self.dropped + other.dropped,
            self.cost + other.cost,
        )

    def against_oracle(
        self, task: Task, questions: Sequence[Question], gold: Sequence[Trajectory] = ()
    ) -> dict[str, Any]:
        """The labels of the sampled trajectories and of the expansions, apart, against ``task``'s oracle
        (:func:`~sapo.eval.labels.label_agreement`); the ``gold`` solutions, right by construction, left out."""
        skip = {(g.question_id, tuple(g.steps)) for g in gold}
        by_id = {q.id: q for q in questions}
        parts = {
            "sampled": [t for t in self.labelled if (t.question_id, tuple(t.steps)) not in skip],
            "expanded": self.expanded,
        }
        agreement = {name: label_agreement(task, part, by_id) for name, part in parts.items()}
        return {name: a.to_dict() for name, a in agreement.items() if a is not None}

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


class TaskPrompts:
    """A trajectory's prompt, as its task builds it (``task.prompt(question, tokenizer)``): what the reasoner
    was sampled with, so the verifier and the pairs read the same text.

    Args:
        tokenizer: the reasoner's tokenizer (its chat template).
        tasks: the tasks whose questions trajectories may answer, each with its questions.
    """

    def __init__(self, tokenizer: Any, tasks: Sequence[tuple[Task, Sequence[Question]]]) -> None:
        self.tokenizer = tokenizer
        self._by_id: dict[str, tuple[Task, Question]] = {}
        for task, questions in tasks:
            for question in questions:
                self._by_id.setdefault(question.id, (task, question))
        self._cache: dict[str, str] = {}

    def __call__(self, trajectory: Trajectory) -> str:
        key = trajectory.question_id
        if key not in self._cache:
            if key not in self._by_id:
                raise KeyError(f"no question with id {key!r} in the loop's tasks, so no prompt for it")
            task, question = self._by_id[key]
            self._cache[key] = task.prompt(question, self.tokenizer)
        return self._cache[key]


class SAPSDataModule(SFTDataModule):
    """The data of the self-evolution loop: its tasks, and how every training phase batches.

    Args:
        task: the training questions, their gold solutions and their checker.
        heldout_task: held-out questions for the evaluation at the end of each iteration (null: none).
        batch_size: rows per training batch (pairs, or trajectories for the verifier).
        max_length: tokens per training sequence.
        chunk_size: questions (when sampling) or trajectories (when labelling) per chunk written to disk.
        num_workers: DataLoader worker processes.
        gold_solutions: how many training questions (the first ones) keep their gold solution. Those are
            D_org: the SFT phase trains on them and they join D_0. The loop samples only the other questions
            and knows them by their final answers alone, so what it adds to SFT comes from self-generated
            solutions. null (the paper's setting): every question has its gold solution, and the loop
            samples the same questions SFT trained on.
    """

    def __init__(
        self,
        task: Task,
        heldout_task: Task | None = None,
        batch_size: int = 8,
        max_length: int = 512,
        chunk_size: int = 64,
        num_workers: int = 0,
        gold_solutions: int | None = None,
    ) -> None:
        for key, value in {
            "batch_size": batch_size,
            "max_length": max_length,
            "chunk_size": chunk_size,
            "gold_solutions": 1 if gold_solutions is None else gold_solutions,
        }.items():
            if value < 1:
                raise ValueError(f"data.init_args.{key} must be at least 1, got {value}")
        super().__init__(task, batch_size=batch_size, max_length=max_length, num_workers=num_workers)
        self.heldout_task = heldout_task
        self.chunk_size = chunk_size
        self.gold_solutions = gold_solutions
        self._questions: list[Question] | None = None

    def sft_questions(self) -> list[Question]:
        """The SFT phase trains on the gold solutions of :attr:`gold_questions`."""
        return self.gold_questions

    # --- questions ------------------------------------------------------------------------------------------
    @property
    def questions(self) -> list[Question]:
        """The training questions (loaded once)."""
        if self._questions is None:
            self._questions = self.task.load()
            if self.gold_solutions is not None and self.gold_solutions >= len(self._questions):
                raise ValueError(
                    f"data.init_args.gold_solutions is {self.gold_solutions}, but the task has only "
                    f"{len(self._questions)} questions: none would be left for the loop to sample; raise the "
                    "task's number of questions or lower gold_solutions"
                )
        return self._questions

    @property
    def gold_questions(self) -> list[Question]:
        """The questions whose gold solutions are used (D_org): all, or the first ``gold_solutions``."""
        return self.questions if self.gold_solutions is None else self.questions[: self.gold_solutions]

    @property
    def sampled_questions(self) -> list[Question]:
        """The questions the loop samples: all, or those after the first ``gold_solutions``."""
        return self.questions if self.gold_solutions is None else self.questions[self.gold_solutions :]

    def iteration_questions(self, iteration: int, count: int | None, seed: int) -> list[Question]:
        """The questions sampled in ``iteration``: all of :attr:`sampled_questions`, or a seeded draw of
        ``count`` of them."""
        pool = self.sampled_questions
        if count is None or count >= len(pool):
            return list(pool)
        rng = random.Random(derive_seed(seed, "questions", iteration))
        chosen = sorted(rng.sample(range(len(pool)), count))
        return [pool[i] for i in chosen]

    def heldout(self, count: int) -> list[Question]:
        """The first ``count`` held-out questions (none without a held-out task)."""
        if self.heldout_task is None:
            return []
        return self.heldout_task.load()[:count]

    def gold_trajectories(self, questions: Sequence[Question] | None = None) -> list[Trajectory]:
        """D_org as checked trajectories: the gold solutions of :attr:`gold_questions` (of those among
        ``questions``, when given)."""
        gold = self.gold_questions
        if questions is not None:
            ids = {q.id for q in gold}
            gold = [q for q in questions if q.id in ids]
        return [self.task.gold_trajectory(q) for q in gold]

    def chunks(self, items: Sequence[Any]) -> list[Sequence[Any]]:
        """``items`` cut into the chunks written to disk one by one."""
        return [items[i : i + self.chunk_size] for i in range(0, len(items), self.chunk_size)]

    def prompts(self, tokenizer: Any, heldout_count: int = 0) -> TaskPrompts:
        """Every training (and the first ``heldout_count`` held-out) question's prompt for ``tokenizer``."""
        tasks: list[tuple[Task, Sequence[Question]]] = [(self.task, self.questions)]
        if heldout_count and self.heldout_task is not None:
            tasks.append((self.heldout_task, self.heldout(heldout_count)))
        return TaskPrompts(tokenizer, tasks)

    # --- the training phases' data --------------------------------------------------------------------------
    def verifier_data(self, trajectories: Sequence[Trajectory], collator: PRMCollator) -> ItemsDataModule:
        """The verifier phase's data: the labelled ``trajectories`` with at least one placed step label."""
        examples: list[PRMExample] = [collator.example(t) for t in trajectories]
        examples = [e for e in examples if e.num_placed > 0]
        return ItemsDataModule(
            examples, collator, [len(e) for e in examples], self.batch_size, self.num_workers
        )

    def replayed_gold(self, pairs: Sequence[PreferencePair], tokenizer: Any) -> list[PreferencePair]:
        """The SFT rows of D_org (:attr:`gold_questions`' gold solutions) that ``pairs`` do not already hold
        as chosen-only rows: what ``orpo.replay_gold`` adds to a round."""
        present = {(p.question_id, tuple(p.chosen)) for p in pairs if p.rejected is None}
        gold = gold_pairs(self.task, tokenizer, self.gold_questions)
        return [p for p in gold if (p.question_id, tuple(p.chosen)) not in present]

    def pair_data(self, pairs: Sequence[PreferencePair], tokenizer: Any) -> ItemsDataModule:
        """An ORPO phase's data: ``pairs`` (rows without a rejected side train as SFT)."""
        collator = PairCollator(tokenizer, self.task.separator, self.max_length)
        return ItemsDataModule(
            pairs, collator, pair_lengths(pairs, collator), self.batch_size, self.num_workers
        )
