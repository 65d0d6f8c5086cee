"""The length-grouped batch sampler: every index once, deterministic per (seed, epoch), less padding."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from sapo.data.batching import LengthGroupedBatchSampler, padded_tokens
from sapo.data.datamodule import SFTDataModule, pair_lengths
from sapo.data.tasks.arithmetic import ArithmeticTask


def _skewed_lengths(n: int = 1000, seed: int = 0) -> list[int]:
    """Mostly short rows and a tenth of long ones, as solutions of mixed difficulty are."""
    rng = np.random.default_rng(seed)
    short = rng.integers(20, 80, size=n)
    long = rng.integers(300, 600, size=n)
    return np.where(rng.random(n) < 0.1, long, short).tolist()


def test_padded_tokens_counts_what_the_collator_adds():
    assert padded_tokens([[0, 1], [2]], [3, 5, 4]) == 2
    assert padded_tokens([[0, 1, 2]], [1, 1, 1]) == 0


@pytest.mark.parametrize(
    "n, batch_size, per_group", [(0, 4, 2), (1, 4, 2), (37, 4, 3), (40, 8, 50), (101, 1, 5)]
)
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_index_is_in_exactly_one_batch(n, batch_size, per_group, drop_last):
    lengths = _skewed_lengths(n) if n else []
    sampler = LengthGroupedBatchSampler(
        lengths, batch_size, seed=3, batches_per_group=per_group, drop_last=drop_last
    )
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        flat = [i for batch in batches for i in batch]
        assert len(flat) == len(set(flat))
        if drop_last:
            assert all(len(b) == batch_size for b in batches)
            assert len(flat) == n - n % batch_size
        else:
            assert sorted(flat) == list(range(n))
            assert sum(len(b) < batch_size for b in batches) == (1 if n % batch_size else 0)


def test_order_is_fixed_by_seed_and_epoch():
    lengths = _skewed_lengths(200)
    a, b = LengthGroupedBatchSampler(lengths, 8, seed=1), LengthGroupedBatchSampler(lengths, 8, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b) == list(a)  # iterating again repeats the epoch
    assert list(LengthGroupedBatchSampler(lengths, 8, seed=2)) != list(
        LengthGroupedBatchSampler(lengths, 8, seed=1)
    )


def test_batches_are_grouped_within_mega_batches_and_the_longest_comes_first():
    lengths = _skewed_lengths(400)
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=0, batches_per_group=10)
    batches = list(sampler)
    assert max(lengths) in [lengths[i] for i in batches[0]]
    rng = np.random.default_rng([0, 0])
    groups = [set(g.tolist()) for g in np.split(rng.permutation(400), 5)]
    for batch in batches:
        assert any(set(batch) <= group for group in groups)  # a batch never mixes two mega-batches
    unordered = LengthGroupedBatchSampler(lengths, 8, seed=0, batches_per_group=10, longest_first=False)
    assert sorted(map(sorted, unordered)) == sorted(map(sorted, batches))


def test_grouping_pads_far_less_than_random_batches():
    lengths = _skewed_lengths(2000)
    grouped = padded_tokens(list(LengthGroupedBatchSampler(lengths, 8, seed=0)), lengths)
    generator = torch.Generator().manual_seed(0)
    random = padded_tokens(list(BatchSampler(RandomSampler(lengths, generator=generator), 8, False)), lengths)
    assert grouped < 0.1 * random


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedBatchSampler([1, 2], 0)
    with pytest.raises(ValueError, match="batches_per_group"):
        LengthGroupedBatchSampler([1, 2], 2, batches_per_group=0)
    with pytest.raises(ValueError, match="lengths"):
        LengthGroupedBatchSampler([1, -2], 2)


class _RecordBatches(L.LightningModule):
    """Trains nothing; records the row indices of every training batch, epoch by epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, list[list[int]]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).append(batch.tolist())
        return self.weight * 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_sets_the_epoch_of_the_sampler():
    lengths = _skewed_lengths(40)
    sampler = LengthGroupedBatchSampler(lengths, 4, seed=5, batches_per_group=3)
    loader = DataLoader(list(range(40)), batch_sampler=sampler)
    module = _RecordBatches()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    for epoch in (0, 1):
        expected = LengthGroupedBatchSampler(lengths, 4, seed=5, batches_per_group=3)
        expected.set_epoch(epoch)
        assert module.seen[epoch] == list(expected)
    assert module.seen[0] != module.seen[1]


def test_sft_datamodule_groups_training_batches_by_length(smollm2_tokenizer):
    def loader(group_by_length: bool) -> DataLoader:
        data = SFTDataModule(
            ArithmeticTask(split="train", num_questions=160), group_by_length=group_by_length
        )
        data.trainer = SimpleNamespace(
            lightning_module=SimpleNamespace(tokenizer=smollm2_tokenizer), world_size=1
        )
        data.setup("fit")
        torch.manual_seed(0)
        return data.train_dataloader()

    grouped, shuffled = loader(True), loader(False)
    assert isinstance(grouped.batch_sampler, LengthGroupedBatchSampler)
    assert list(grouped.batch_sampler) == list(loader(True).batch_sampler)  # seed_everything fixes the order
    lengths = pair_lengths(grouped.dataset, grouped.collate_fn)
    assert sorted(i for batch in grouped.batch_sampler for i in batch) == list(range(160))
    grouped_padding = padded_tokens(list(grouped.batch_sampler), lengths)
    assert grouped_padding < 0.5 * padded_tokens(list(shuffled.batch_sampler), lengths)
    batch = next(iter(grouped))
    assert batch["chosen_input_ids"].shape[0] == 8
