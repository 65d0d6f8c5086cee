"""DataModules: what each training phase reads. The SFT phase reads gold solutions of a task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from sapo.data.batching import training_dataloader
from sapo.data.preference import PairCollator, PreferencePair
from sapo.data.tasks.base import Question, Task

__all__ = ["ItemsDataModule", "SFTDataModule", "gold_pairs", "pair_lengths"]


def gold_pairs(
    task: Task, tokenizer: Any, questions: Sequence[Question] | None = None
) -> list[PreferencePair]:
    """One SFT pair (no rejected side) per question of ``task`` (or of ``questions``, some of its questions)
    with its reference solution."""
    pairs = []
    for question in task.load() if questions is None else questions:
        gold = task.gold_trajectory(question)
        pairs.append(PreferencePair(question.id, task.prompt(question, tokenizer), gold.steps))
    return pairs


def _describe_task(task: Task) -> str:
    """How errors name a task: its class and, where it has them, its source, split and slice."""
    parts = [
        f"{key}={getattr(task, key)!r}"
        for key in ("source", "split", "start", "stop")
        if getattr(task, key, None) is not None
    ]
    return f"{type(task).__name__}({', '.join(parts)})" if parts else repr(task)


def pair_lengths(pairs: Sequence[PreferencePair], collator: PairCollator) -> list[int]:
    """Tokens each pair puts in a batch: ``len(chosen) + len(rejected)`` as the collator encodes them.

    Each side is padded to its own longest row, so a pair's padding cost follows the sum of its sides.
    """
    lengths = []
    for pair in pairs:
        length = len(collator.encode(pair.prompt, pair.chosen)[0])
        if pair.rejected is not None:
            length += len(collator.encode(pair.prompt, pair.rejected)[0])
        lengths.append(length)
    return lengths


class SFTDataModule(L.LightningDataModule):
    """Supervised fine-tuning on a task's reference solutions (the loop's first phase, and the SFT baseline).

    The tokenizer is the model's: it is read from the LightningModule in :meth:`setup`, so the prompt
    template and the tokens always match the model being trained. A task (or ``val_task``) that gives no
    question is refused in :meth:`setup` with an error naming it and its source.

    Args:
        task: where the training questions and their gold solutions come from.
        val_task: held-out questions for the validation loss (none: no validation).
        batch_size: pairs per batch; batches are padded to their longest sequence.
        max_length: tokens per sequence (prompt and solution); longer ones are cut.
        num_workers: DataLoader worker processes.
        group_by_length: draw training batches with :class:`~sapo.data.batching.LengthGroupedBatchSampler`
            (shuffled, then sorted by token length within mega-batches of 50 batches), so that a batch's
            rows have similar lengths and padding is small: on GSM8K's 7473 gold solutions with the SmolLM2
            chat prompt and batches of 8, padding falls from 30% of the batch tokens with uniformly random
            batches to 1.5% (so an epoch feeds the model about 28% fewer tokens). Its seed is drawn from torch's generator when the
            dataloader is built, so ``seed_everything`` fixes the order; each epoch reshuffles. False:
            uniformly random batches. Multi-process training always uses random batches (Lightning's
            distributed sampler replaces the training sampler).
    """

    def __init__(
        self,
        task: Task,
        val_task: Task | None = None,
        batch_size: int = 8,
        max_length: int = 512,
        num_workers: int = 0,
        group_by_length: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {max_length}")
        self.task = task
        self.val_task = val_task
        self.batch_size = batch_size
        self.max_length = max_length
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.train_pairs: list[PreferencePair] = []
        self.val_pairs: list[PreferencePair] = []

    def sft_questions(self) -> Sequence[Question] | None:
        """The questions whose gold solutions are trained on; ``None``: all of the task's."""
        return None

    def setup(self, stage: str) -> None:
        tokenizer = self.trainer.lightning_module.tokenizer
        self.collator = PairCollator(tokenizer, self.task.separator, self.max_length)
        if stage == "fit" and not self.train_pairs:
            self.train_pairs = gold_pairs(self.task, tokenizer, self.sft_questions())
            if not self.train_pairs:
                raise ValueError(
                    f"SFTDataModule: task {_describe_task(self.task)} gave no question to train on"
                )
        if self.val_task is not None and not self.val_pairs:
            self.val_pairs = gold_pairs(self.val_task, tokenizer)
            if not self.val_pairs:
                raise ValueError(
                    f"SFTDataModule: val_task {_describe_task(self.val_task)} gave no question to validate on"
                )

    def train_dataloader(self) -> DataLoader:
        return training_dataloader(
            self.train_pairs,
            pair_lengths(self.train_pairs, self.collator),
            self.batch_size,
            self.collator,
            self.num_workers,
            self.group_by_length,
            distributed=self.trainer is not None and self.trainer.world_size > 1,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_pairs:
            return []
        return DataLoader(
            self.val_pairs, batch_size=self.batch_size, collate_fn=self.collator, num_workers=self.num_workers
        )


class ItemsDataModule(L.LightningDataModule):
    """A training phase's data, built before the phase: items (preference pairs, verifier examples) with their
    collator and token lengths, served as length-grouped batches (:func:`~sapo.data.batching.training_dataloader`).

    The self-evolution loop builds one per training phase from what earlier phases produced, so each phase's
    trainer reads a DataModule made for it rather than a shared one refilled between fits.

    Args:
        items: what the collator batches.
        collator: turns a list of items into a batch of tensors.
        lengths: each item's token length (batches group similar lengths).
        batch_size: items per batch.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        items: Sequence[Any],
        collator: Any,
        lengths: Sequence[int],
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not items:
            raise ValueError("a training phase got no data (see the run directory's manifest for counts)")
        if len(lengths) != len(items):
            raise ValueError(f"{len(lengths)} lengths for {len(items)} items")
        self.items = list(items)
        self.collator = collator
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.num_workers = num_workers

    def train_dataloader(self) -> DataLoader:
        return training_dataloader(
            self.items,
            self.lengths,
            self.batch_size,
            self.collator,
            self.num_workers,
            distributed=self.trainer is not None and self.trainer.world_size > 1,
        )
