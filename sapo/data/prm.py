"""Verifier data: labelled trajectories as padded batches of tokens, step-end positions and step labels.

A trajectory is shown to the verifier as ``prompt + join_steps(steps)``; step ``j``'s label sits on its
step-end token, found by :func:`~sapo.data.steps.encode_steps` (the project's one rule for it). A step cut off
by ``max_length`` (``truncated``) or swallowed by a token that also covers the next step (``unplaced``) has no
position, so it gets no label and no score of its own; nothing is ever labelled on a neighbour's token.

Batches (:meth:`PRMCollator.pad`) hold, for ``B`` trajectories of at most ``S`` steps and ``T`` tokens:

* ``input_ids`` ``[B, T]`` (right-padded with the pad token) and ``attention_mask`` ``[B, T]``;
* ``step_positions`` ``[B, S]``: column ``j`` is step ``j``'s token index, -1 where the step has no position
  or the row has fewer steps;
* ``step_labels`` ``[B, S]`` (float: hard 0/1 or soft in [0, 1]; 0 where there is none);
* ``step_mask`` ``[B, S]`` (bool): the step has a position (and, for labelled rows, a label).

The verifier owns the input format (prompt, separator, ``max_length``), so training batches and
:meth:`sapo.models.verifier.PRMVerifier.score` read trajectories the same way: :class:`PRMDataModule` takes
its collator from the attached LightningModule.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from sapo.data.batching import training_dataloader
from sapo.data.steps import DEFAULT_SEPARATOR, StepEncoding, encode_steps
from sapo.data.trajectory import Trajectory, TrajectoryFormatError, iter_jsonl

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "PRMCollator",
    "PRMDataModule",
    "PRMExample",
    "read_labelled_trajectories",
    "verifier_prompt",
]

logger = logging.getLogger(__name__)

#: the plain prompt (no chat template), the same as :attr:`sapo.data.tasks.base.Task.prompt_template`
DEFAULT_PROMPT_TEMPLATE = "Question: {question}\nAnswer:\n"


def verifier_prompt(
    question: str,
    tokenizer: Any,
    instruction: str = "",
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    use_chat_template: bool = True,
) -> str:
    """The text before the steps, built as :meth:`sapo.data.tasks.base.Task.prompt` builds it.

    With a chat template (when ``use_chat_template`` and the tokenizer has one): one user turn
    ``instruction + question`` and the generation prompt; otherwise ``prompt_template.format(question=...)``.
    Passing a task's ``instruction``, ``prompt_template`` and ``use_chat_template`` reproduces the prompt the
    reasoner was trained and sampled with.
    """
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{instruction}{question}"}],
            tokenize=False,
            add_generation_prompt=True,
        )
    return prompt_template.format(question=question)


def describe(trajectory: Trajectory, index: int | None = None, where: str | None = None) -> str:
    """How errors name a trajectory: ``"<where>: trajectory <index> (question_id '<id>')"``."""
    name = f"trajectory {index}" if index is not None else "trajectory"
    name = f"{name} (question_id {trajectory.question_id!r})"
    return f"{where}: {name}" if where else name


@dataclass
class PRMExample:
    """One tokenised trajectory: its ids, one position per step (``None``: no position) and its labels.

    Attributes:
        input_ids: token ids of ``prompt + steps``, cut to ``max_length``.
        positions: step ``j``'s step-end token index, or ``None`` (truncated or unplaced).
        labels: one label per step, or ``None`` for scoring.
        where: how errors and warnings name the trajectory (file, line, index, question id).
    """

    input_ids: list[int]
    positions: list[int | None]
    labels: list[float] | None
    where: str

    @property
    def num_placed(self) -> int:
        return sum(p is not None for p in self.positions)

    def __len__(self) -> int:
        return len(self.input_ids)


class PRMCollator:
    """Tokenises trajectories for the verifier and pads them into batches (see the module docstring).

    Args:
        tokenizer: a fast tokenizer (step positions need character offsets) with a pad token.
        separator: the step separator the trajectories were written with (``"\\n"``; ``"\\n\\n"`` for
            paragraph data such as ProcessBench).
        max_length: tokens per trajectory; steps beyond it are truncated and get no label.
        instruction, prompt_template, use_chat_template: the prompt (:func:`verifier_prompt`), when no
            ``prompt`` is given.
        prompt: a trajectory's prompt, as its task builds it (``task.prompt(question, tokenizer)``, with the
            task's few-shot examples and its own user message): the text the reasoner was sampled with. The
            loop always gives it; without it the prompt is rebuilt from the question text alone.
    """

    def __init__(
        self,
        tokenizer: Any,
        separator: str = DEFAULT_SEPARATOR,
        max_length: int = 1024,
        instruction: str = "",
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        use_chat_template: bool = True,
        prompt: Callable[[Trajectory], str] | None = None,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one (for example the EOS token) first")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if "{question}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{question}}', got {prompt_template!r}")
        self.tokenizer = tokenizer
        self.separator = separator
        self.max_length = max_length
        self.instruction = instruction
        self.prompt_template = prompt_template
        self.use_chat_template = use_chat_template
        self.prompt_source = prompt

    def prompt(self, trajectory: Trajectory) -> str:
        if self.prompt_source is not None:
            return self.prompt_source(trajectory)
        return verifier_prompt(
            trajectory.question,
            self.tokenizer,
            self.instruction,
            self.prompt_template,
            self.use_chat_template,
        )

    def encode(self, trajectory: Trajectory) -> StepEncoding:
        """Tokens and step-end positions of ``prompt + steps`` (:func:`~sapo.data.steps.encode_steps`)."""
        return encode_steps(
            self.tokenizer,
            self.prompt(trajectory),
            trajectory.steps,
            self.separator,
            max_length=self.max_length,
        )

    def example(
        self, trajectory: Trajectory, where: str | None = None, require_labels: bool = True
    ) -> PRMExample:
        """One :class:`PRMExample`; raises :class:`TrajectoryFormatError` naming ``where`` when labels are
        required and missing."""
        where = where or describe(trajectory)
        if require_labels and trajectory.labels is None:
            raise TrajectoryFormatError(
                f"{where} has no step labels; the verifier trains on labelled trajectories only "
                "(label them with a supervision strategy first)"
            )
        encoding = self.encode(trajectory)
        labels = None if trajectory.labels is None else list(trajectory.labels)
        return PRMExample(encoding.input_ids, encoding.positions, labels, where)

    def pad(self, examples: Sequence[PRMExample]) -> dict[str, torch.Tensor]:
        """Right-pad ``examples`` into one batch (keys and shapes in the module docstring)."""
        if not examples:
            raise ValueError("cannot collate an empty batch")
        width = max(len(e) for e in examples)
        steps = max(1, max(len(e.positions) for e in examples))
        rows = len(examples)
        input_ids = torch.full((rows, width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, width), dtype=torch.long)
        step_positions = torch.full((rows, steps), -1, dtype=torch.long)
        step_labels = torch.zeros((rows, steps), dtype=torch.float32)
        step_mask = torch.zeros((rows, steps), dtype=torch.bool)
        for row, example in enumerate(examples):
            input_ids[row, : len(example)] = torch.tensor(example.input_ids, dtype=torch.long)
            attention_mask[row, : len(example)] = 1
            for j, position in enumerate(example.positions):
                if position is None:
                    continue
                step_positions[row, j] = position
                step_mask[row, j] = True
                if example.labels is not None:
                    step_labels[row, j] = example.labels[j]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "step_positions": step_positions,
            "step_labels": step_labels,
            "step_mask": step_mask,
        }

    def __call__(self, items: Sequence[Trajectory | PRMExample]) -> dict[str, torch.Tensor]:
        """Collate labelled trajectories (or examples encoded beforehand) into a training batch."""
        examples = [
            item if isinstance(item, PRMExample) else self.example(item, describe(item, index))
            for index, item in enumerate(items)
        ]
        return self.pad(examples)


def read_labelled_trajectories(path: str | os.PathLike[str]) -> list[tuple[Trajectory, str]]:
    """Every trajectory of a JSONL file with how to name it (``"<file>, line <n>: trajectory <i> ..."``).

    Raises :class:`TrajectoryFormatError` naming the file, line, index and question id of the first
    trajectory without labels.
    """
    records = []
    for index, (lineno, data) in enumerate(iter_jsonl(path)):
        trajectory = Trajectory.from_dict(data, where=f"{path}, line {lineno}")
        where = describe(trajectory, index, f"{path}, line {lineno}")
        if trajectory.labels is None:
            raise TrajectoryFormatError(
                f"{where} has no step labels; the verifier trains on labelled trajectories only"
            )
        records.append((trajectory, where))
    return records


def encode_labelled(records: Sequence[tuple[Trajectory, str]], collator: PRMCollator) -> list[PRMExample]:
    """Encode labelled trajectories once; rows left with no labelled step are dropped, and every lost label
    (truncated by ``max_length`` or unplaced) is counted in one warning."""
    examples, lost_labels, dropped = [], 0, 0
    for trajectory, where in records:
        example = collator.example(trajectory, where)
        lost_labels += len(example.positions) - example.num_placed
        if example.num_placed == 0:
            dropped += 1
            continue
        examples.append(example)
    if lost_labels:
        logger.warning(
            "%d step labels have no token position (cut by max_length=%d, or swallowed by a token that "
            "spans two steps) and are not trained on; %d trajectories with no labelled step were dropped",
            lost_labels,
            collator.max_length,
            dropped,
        )
    return examples


class PRMDataModule(L.LightningDataModule):
    """Labelled trajectories from JSONL files, for training a verifier on its own.

    ``sapo fit --model sapo.models.PRMVerifier --model.backbone.name_or_path ... --data sapo.data.PRMDataModule
    --data.train_file labelled.jsonl``. Every trajectory must have labels (an error names the file, line,
    index and question id of one that has none). Trajectories are tokenised once in :meth:`setup` with the
    attached verifier's collator (its tokenizer, prompt, separator and ``max_length``), so training reads
    trajectories exactly as :meth:`~sapo.models.verifier.PRMVerifier.score` does. A file that gives no
    example (empty, or no labelled step within ``max_length``) is refused with an error naming it.

    Args:
        train_file: JSONL of labelled trajectories (:func:`sapo.data.write_jsonl`).
        val_file: JSONL of labelled trajectories for validation (none: no validation).
        batch_size: trajectories per batch.
        group_by_length: batch trajectories of similar length together
            (:func:`~sapo.data.batching.training_dataloader`);
            False shuffles uniformly.
        num_workers: DataLoader worker processes.
        seed: seed of the batch order.
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        batch_size: int = 8,
        group_by_length: bool = True,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for name, path in (("train_file", train_file), ("val_file", val_file)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{name}: no such file {path}")
        self.train_file = train_file
        self.val_file = val_file
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        self.num_workers = num_workers
        self.seed = seed
        #: set before :meth:`setup` to use a collator of your own; otherwise the attached model's
        self.collator: PRMCollator | None = None
        self.train_examples: list[PRMExample] = []
        self.val_examples: list[PRMExample] = []

    def _model_collator(self) -> PRMCollator:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None:
            raise RuntimeError("PRMDataModule needs a trainer with a LightningModule, or a collator set")
        collator = getattr(module, "collator", None)
        return collator if isinstance(collator, PRMCollator) else PRMCollator(module.tokenizer)

    def setup(self, stage: str) -> None:
        if self.collator is None:
            self.collator = self._model_collator()
        if stage == "fit" and not self.train_examples:
            if self.train_file is None:
                raise ValueError("PRMDataModule: fitting needs train_file")
            self.train_examples = self._examples("train_file", self.train_file)
        if stage in ("fit", "validate") and self.val_file is not None and not self.val_examples:
            self.val_examples = self._examples("val_file", self.val_file)

    def _examples(self, argument: str, path: str) -> list[PRMExample]:
        """The encoded trajectories of ``path``; none at all raises a ValueError naming ``argument`` and the
        file (an empty file, or every trajectory without a labelled step within ``max_length``)."""
        records = read_labelled_trajectories(path)
        if not records:
            raise ValueError(f"{argument} {path}: holds no trajectory (it is empty, or has only blank lines)")
        examples = encode_labelled(records, self.collator)
        if not examples:
            raise ValueError(
                f"{argument} {path}: no trajectory with a labelled step: all {len(records)} "
                f"lose every label (cut by max_length={self.collator.max_length}, or unplaced)"
            )
        return examples

    def train_dataloader(self) -> DataLoader:
        return training_dataloader(
            self.train_examples,
            [len(e) for e in self.train_examples],
            self.batch_size,
            self.collator,
            self.num_workers,
            self.group_by_length,
            distributed=self.trainer is not None and self.trainer.world_size > 1,
            seed=self.seed,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_examples:
            return []
        # Longest first: validation order does not matter, padding does.
        ordered = sorted(self.val_examples, key=len, reverse=True)
        return DataLoader(
            ordered, batch_size=self.batch_size, collate_fn=self.collator, num_workers=self.num_workers
        )
