"""A phase's peak memory: what the phase itself allocated, not the peak of the process so far."""

from __future__ import annotations

import torch

from sapo.evolution.memory import PhaseMemory


def test_each_phase_reports_its_own_peak():
    memory = PhaseMemory()
    memory.start()
    block = torch.ones(96 * 2**20)  # 384 MiB, written, so resident
    del block
    heavy = memory.summary()
    memory.start()
    light = memory.summary()
    assert heavy["peak_rss_scope"] == light["peak_rss_scope"] == "phase"  # Linux, as in CI
    assert heavy["peak_rss_gib"] - light["peak_rss_gib"] > 0.3
    assert light["peak_rss_gib"] > 0.05  # the interpreter and torch themselves


def _resident_bytes() -> int:
    from sapo.evolution.memory import _status_bytes

    resident = _status_bytes("VmRSS:")
    assert resident is not None  # Linux, as in CI
    return resident


def test_trim_heap_hands_freed_heap_blocks_back():
    """Freed heap blocks below a live one stay resident until ``malloc_trim`` returns their pages."""
    import ctypes

    from sapo.callbacks import trim_heap

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 KiB blocks, under glibc's smallest mmap threshold (128 KiB): they come from the heap
    blocks = [libc.malloc(64 * 1024) for _ in range(2048)]  # 128 MiB
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)
    for block in blocks[:-1]:  # the last one pins the heap's top, so free() alone trims nothing
        libc.free(block)
    before = _resident_bytes()
    assert trim_heap()
    after = _resident_bytes()
    libc.free(blocks[-1])
    assert before - after > 100 * 2**20


def test_release_freed_heap_trims_every_n_steps(monkeypatch, tmp_path):
    import lightning as L

    import sapo.callbacks
    from sapo.callbacks import ReleaseFreedHeap
    from sapo.evolution.trainers import phase_trainer

    steps: list[int] = []

    class Counts(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            steps.append(trainer.global_step)

    trims: list[int] = []
    monkeypatch.setattr(sapo.callbacks, "trim_heap", lambda: trims.append(steps[-1]) or True)

    class Linear(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 4)), batch_size=2)

    template = L.Trainer(accelerator="cpu", devices=1, logger=False)
    trainer = phase_trainer(
        template, tmp_path, "sft", epochs=1, gradient_clip=None, release_heap_every_n_steps=2
    )
    trainer.callbacks.insert(0, Counts())
    trainer.fit(Linear())
    assert steps == [1, 2, 3, 4] and trims == [2, 4]
    # gradient accumulation: four batches end at global steps 0, 1, 1, 2; one trim per optimizer step
    steps.clear()
    trims.clear()
    accumulating = L.Trainer(accelerator="cpu", devices=1, logger=False, accumulate_grad_batches=2)
    trainer = phase_trainer(
        accumulating, tmp_path, "sft", epochs=1, gradient_clip=None, release_heap_every_n_steps=1
    )
    trainer.callbacks.insert(0, Counts())
    trainer.fit(Linear())
    assert steps == [0, 1, 1, 2] and trims == [1, 2]
    assert not any(
        isinstance(c, ReleaseFreedHeap) for c in phase_trainer(template, tmp_path, "x", 1, None).callbacks
    )
    try:
        ReleaseFreedHeap(0)
    except ValueError as error:
        assert "every_n_steps" in str(error)
    else:
        raise AssertionError("every_n_steps 0 was accepted")
