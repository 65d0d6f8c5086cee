"""Length-grouped batches: rows of similar length share a batch, so the collators pad little.

The collators pad every batch to its longest row. With rows drawn uniformly at random, a batch's width is
set by its one long row and the short rows are mostly padding. :class:`LengthGroupedBatchSampler` shuffles
the rows, cuts the shuffled order into mega-batches of ``batches_per_group`` batches, sorts each mega-batch
by length and cuts it into batches: the data order stays random at the scale of a mega-batch while each
batch holds rows of similar length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Sampler

__all__ = ["LengthGroupedBatchSampler", "padded_tokens", "training_dataloader"]


def padded_tokens(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> int:
    """Padding the collators add: ``sum_b (|b| * max_{i in b} len_i - sum_{i in b} len_i)``."""
    return sum(
        len(batch) * max(lengths[i] for i in batch) - sum(lengths[i] for i in batch) for batch in batches
    )


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of row indices grouped by length, reshuffled every epoch, deterministic per (seed, epoch).

    For epoch ``e``: permute all indices with a generator seeded by ``(seed, e)``; cut the permutation into
    mega-batches of ``batches_per_group * batch_size`` indices; sort each mega-batch by length (longest
    first; equal lengths keep their shuffled order) and cut it into batches of ``batch_size``; shuffle the
    order of the batches, and with ``longest_first`` move the batch holding the longest row to the front,
    so that a batch too large for memory fails at the first step rather than hours in. Every index is in
    exactly one batch per epoch; only the last mega-batch can leave an incomplete batch, which
    ``drop_last`` drops.

    Lightning calls ``set_epoch`` at the start of every epoch on ``dataloader.batch_sampler.sampler``
    (not on the batch sampler itself); :attr:`sampler` is this object, so the call reaches it.

    Args:
        lengths: the length of every row of the dataset (tokens; any size that padding follows will do).
        batch_size: rows per batch.
        seed: seed of the shuffles, combined with the epoch.
        batches_per_group: batches per mega-batch: larger pads less, smaller keeps the order more random.
        drop_last: drop the incomplete batch, if any.
        longest_first: put the batch with the longest row first in every epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        batches_per_group: int = 50,
        drop_last: bool = False,
        longest_first: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batches_per_group < 1:
            raise ValueError(f"batches_per_group must be >= 1, got {batches_per_group}")
        if any(length < 0 for length in lengths):
            raise ValueError("lengths must be >= 0")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_group = batches_per_group
        self.drop_last = drop_last
        self.longest_first = longest_first
        self.epoch = 0

    @property
    def sampler(self) -> LengthGroupedBatchSampler:
        """This object: Lightning looks for ``set_epoch`` on ``batch_sampler.sampler``."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from now on (Lightning calls this before every training epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def batches(self) -> list[list[int]]:
        """The batches of the current epoch, in order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        group = self.batches_per_group * self.batch_size
        batches = []
        for start in range(0, len(order), group):
            members = order[start : start + group]
            # stable sort on the negated length: longest first, ties in shuffled order
            members = members[np.argsort(-self.lengths[members], kind="stable")]
            batches.extend(
                members[i : i + self.batch_size].tolist() for i in range(0, len(members), self.batch_size)
            )
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.longest_first and batches:
            longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b]].max())
            batches.insert(0, batches.pop(longest))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())


def training_dataloader(
    items: Sequence[Any],
    lengths: Sequence[int],
    batch_size: int,
    collate_fn: Callable[[Sequence[Any]], Any],
    num_workers: int = 0,
    group_by_length: bool = True,
    distributed: bool = False,
    seed: int | None = None,
) -> DataLoader:
    """The training DataLoader of every sapo DataModule: length-grouped batches
    (:class:`LengthGroupedBatchSampler`), or uniformly shuffled ones when ``group_by_length`` is off or the
    run is distributed (Lightning's distributed sampler then replaces the training sampler, which it cannot
    do for a batch sampler). ``seed`` None draws it from torch's generator, so ``seed_everything`` fixes the
    order; each epoch reshuffles."""
    if group_by_length and distributed:
        rank_zero_warn("group_by_length applies to single-process training; using random batches")
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    if not group_by_length or distributed:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            items,
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=collate_fn,
            num_workers=num_workers,
        )
    sampler = LengthGroupedBatchSampler(lengths, batch_size, seed=seed)
    return DataLoader(items, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers)
