"""A phase's peak memory: what the phase itself allocated, not the peak of the process so far."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

#: run in a fresh interpreter: in a test worker, memory other tests left resident (or a thread of theirs still
#: allocating) can hide the block's growth
PEAKS = """
import json, torch
from sapo.evolution.memory import PhaseMemory
memory = PhaseMemory()
memory.start()
block = torch.ones(96 * 2**20)  # 384 MiB, written, so resident
del block
heavy = memory.summary()
memory.start()
print(json.dumps([heavy, memory.summary()]))
"""


def test_each_phase_reports_its_own_peak():
    result = subprocess.run([sys.executable, "-c", PEAKS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    heavy, light = json.loads(result.stdout.strip().splitlines()[-1])
    assert heavy["peak_rss_scope"] == light["peak_rss_scope"] == "phase"  # Linux, as in CI
    assert heavy["peak_rss_gib"] - light["peak_rss_gib"] > 0.3
    assert light["peak_rss_gib"] > 0.05  # the interpreter and torch themselves


def _resident_bytes() -> int:
    from sapo.evolution.memory import _status_bytes

    resident = _status_bytes("VmRSS:")
    assert resident is not None  # Linux, as in CI
    return resident


#: a worker that starts a worker of its own which holds 256 MiB (as vLLM's engine core starts its model worker)
WORKERS = """
import subprocess, sys
grandchild = subprocess.Popen(
    [sys.executable, "-c", "import time; block = bytearray(256 * 2**20); print('ready', flush=True); time.sleep(60)"],
    stdout=subprocess.PIPE, text=True,
)
print(grandchild.stdout.readline().strip(), grandchild.pid, flush=True)
grandchild.wait()
"""


def test_a_phase_counts_the_peaks_of_its_worker_processes_apart():
    from sapo.evolution.memory import PhaseMemory, descendants
    from sapo.evolution.report import _memory

    memory = PhaseMemory()
    memory.start()
    child = subprocess.Popen([sys.executable, "-c", WORKERS], stdout=subprocess.PIPE, text=True)
    try:
        ready, grandchild = child.stdout.readline().split()
        assert ready == "ready"
        assert {child.pid, int(grandchild)} <= set(descendants())
        summary = memory.summary()
    finally:
        child.kill()
        os.kill(int(grandchild), 9)
        child.wait()
    assert summary["workers"] >= 2
    assert summary["workers_peak_rss_gib"] >= 0.25  # the grandchild's block: a worker of a worker counts
    assert summary["peak_rss_gib"] < summary["rss_at_start_gib"] + 0.2  # not in this process's own peak
    assert f"worker processes {summary['workers_peak_rss_gib']:.2f} GiB" in _memory({"memory": summary})


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


def test_release_freed_heap_drops_gradients_after_the_optimizer_step_only(tmp_path):
    import lightning as L

    from sapo.callbacks import ReleaseFreedHeap

    class Linear(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return (self.layer(batch[0]) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

        def train_dataloader(self):
            data = torch.arange(32, dtype=torch.float32).reshape(8, 4) / 32
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=2)

    class Grads(L.Callback):  # after ReleaseFreedHeap in the list, so it sees what that one left
        def __init__(self):
            self.before_step: list[bool] = []
            self.batch_end: list[tuple[int, bool]] = []

        def on_before_optimizer_step(self, trainer, module, optimizer):
            self.before_step.append(module.layer.weight.grad is not None)

        def on_train_batch_end(self, trainer, module, *args):
            self.batch_end.append((trainer.global_step, module.layer.weight.grad is not None))

    from lightning.pytorch.callbacks import ModelCheckpoint

    def train(
        free_gradients: bool, accumulate: int, max_steps: int = -1, ckpt_path=None, checkpoints: bool = False
    ) -> tuple[Grads, torch.Tensor]:
        grads = Grads()
        callbacks = [ReleaseFreedHeap(free_gradients=free_gradients), grads]
        if checkpoints:
            callbacks.append(
                ModelCheckpoint(tmp_path / "ckpt", "{step}", every_n_train_steps=1, save_top_k=-1)
            )
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            max_epochs=1 if max_steps == -1 else -1,
            max_steps=max_steps,
            enable_checkpointing=checkpoints,
            enable_progress_bar=False,
            enable_model_summary=False,
            accumulate_grad_batches=accumulate,
            default_root_dir=tmp_path,
            callbacks=callbacks,
        )
        module = Linear()
        trainer.fit(module, ckpt_path=ckpt_path)
        return grads, module.layer.weight.detach().clone()

    grads, dropped = train(True, 1)
    assert grads.before_step == [True] * 4
    assert grads.batch_end == [(1, False), (2, False), (3, False), (4, False)]
    _, kept_weights = train(False, 1)
    assert torch.equal(dropped, kept_weights)  # the next closure would have zeroed them anyway
    # accumulation: the first batch of each pair ends before the step and keeps its gradients for the second
    grads, accumulated = train(True, 2)
    assert grads.batch_end == [(0, True), (1, False), (1, True), (2, False)]
    kept, kept_accumulated = train(False, 2)
    assert kept.batch_end == [(0, True), (1, True), (1, True), (2, True)]
    assert torch.equal(accumulated, kept_accumulated)

    # resumed mid-epoch from the checkpoint of step 1: its first batch accumulates towards step 2
    train(True, 2, max_steps=4, checkpoints=True)
    step1 = tmp_path / "ckpt" / "step=1.ckpt"
    grads, resumed = train(True, 2, max_steps=4, ckpt_path=step1)
    assert grads.batch_end[:2] == [(1, True), (2, False)]
    assert torch.equal(resumed, train(False, 2, max_steps=4, ckpt_path=step1)[1])


#: a fresh interpreter that builds one bfloat16 matrix-product kernel per shape, then prints the heap still
#: in use (glibc's count of allocated bytes) once nothing of the products is left
_KERNEL_CACHE_PROBE = """
import ctypes, gc, sys
if sys.argv[1] == "bounded":
    from sapo.callbacks import bound_kernel_caches
    bound_kernel_caches(8)
import torch
torch.set_num_threads(1)
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
weight = torch.randn(64, 64, dtype=torch.bfloat16)
before = libc.mallinfo2().uordblks
for rows in range(1, 201):
    torch.randn(rows, 64, dtype=torch.bfloat16) @ weight
gc.collect()
print(libc.mallinfo2().uordblks - before)
"""


@pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    reason="bfloat16 matrix products go through oneDNN only on CPUs with native bfloat16",
)
def test_bounded_kernel_caches_keep_no_heap_for_old_shapes():
    import subprocess
    import sys

    from sapo.callbacks import KERNEL_CACHE_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in KERNEL_CACHE_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"

    def retained(mode: str) -> int:
        result = subprocess.run(
            [sys.executable, "-c", _KERNEL_CACHE_PROBE, mode],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(result.stdout.split()[-1])

    default, bounded = retained("default"), retained("bounded")
    # measured: 200 shapes keep about 100 MiB with the caches' own 1,024 entries, a few MiB with 8
    assert default > 40 * 2**20
    assert bounded < default / 4


def test_bound_kernel_caches_keeps_what_the_environment_says(monkeypatch):
    from sapo.callbacks import KERNEL_CACHE_CAPACITY, bound_kernel_caches

    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "2048")
    assert bound_kernel_caches() == {
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "2048",
        "LRU_CACHE_CAPACITY": str(KERNEL_CACHE_CAPACITY),
    }
    with pytest.raises(ValueError, match="capacity"):
        bound_kernel_caches(0)


def test_the_sapo_command_bounds_the_kernel_caches_first():
    import subprocess
    import sys

    from sapo.callbacks import KERNEL_CACHE_CAPACITY, KERNEL_CACHE_VARIABLES

    # in its own process: the command changes a process-wide jsonargparse setting
    probe = (
        "import os, sys\n"
        "from sapo.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(' '.join(os.environ.get(name, '-') for name in {KERNEL_CACHE_VARIABLES!r}), file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_CACHE_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert result.stderr.split()[-2:] == [str(KERNEL_CACHE_CAPACITY)] * 2


def test_inside_collect_only_new_what_existed_is_frozen_and_new_cycles_are_still_freed():
    import gc
    import weakref

    from sapo.evolution.memory import collect_only_new, release_memory

    class Node:
        pass

    before = Node()
    before.self = before  # a cycle made before: frozen inside, so a collection there cannot free it
    gone_before = weakref.ref(before)
    del before
    with collect_only_new():
        assert gc.get_freeze_count() > 1000  # the libraries' objects, skipped by every collection inside
        made = Node()
        made.self = made
        gone = weakref.ref(made)
        del made
        release_memory()
        assert gone() is None  # a model dropped by a phase is made inside, and freed as before
        assert gone_before() is not None
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone_before() is None
