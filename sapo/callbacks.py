"""Lightning callbacks: measuring the reasoner while it trains, exporting it, progress lines for logs, and
handing freed heap memory back between steps."""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L

from sapo.data.tasks.base import Task
from sapo.eval.reasoner import sample_and_check

__all__ = [
    "KERNEL_CACHE_CAPACITY",
    "KERNEL_CACHE_VARIABLES",
    "ExportPretrained",
    "HeldOutAccuracy",
    "ProgressLines",
    "ReleaseFreedHeap",
    "bound_kernel_caches",
    "trim_heap",
]

#: entries kept by each of the CPU kernel caches :func:`bound_kernel_caches` sets (their default: 1,024)
KERNEL_CACHE_CAPACITY = 128

#: the environment variables of those caches: oneDNN's primitive cache, and the LRU cache of ideep, the
#: layer through which PyTorch calls oneDNN for matrix products
KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


class HeldOutAccuracy(L.Callback):
    """Greedy accuracy of the reasoner on held-out questions: before training and after each validation.

    Logs ``val/accuracy`` (the share of questions whose final answer the task judges correct) and writes
    every question's completion and verdict to ``heldout_start.jsonl`` / ``heldout_step{N}.jsonl`` in the
    logger's directory, so the
    number can be traced to its samples.

    Args:
        task: the held-out questions and their checker.
        max_questions: how many of the task's questions to use (the first ones).
        max_new_tokens: generation budget per question.
        batch_size: prompts per ``generate`` call.
    """

    def __init__(self, task: Task, max_questions: int = 100, max_new_tokens: int = 256, batch_size: int = 32):
        super().__init__()
        self.task = task
        self.max_questions = max_questions
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.history: list[tuple[int, float]] = []  # (global step, accuracy)

    def measure(self, trainer: L.Trainer, module: L.LightningModule, tag: str) -> float:
        questions = self.task.load()[: self.max_questions]
        # The trainer's precision context: under bf16-mixed, sampling runs in bf16 autocast too.
        with trainer.precision_plugin.forward_context():
            samples = sample_and_check(  # greedy; one batched check: programs run in parallel
                module.model,
                module.tokenizer,
                self.task,
                questions,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                description=f"held-out accuracy ({tag})",
            )
        trajectories = [question_samples[0] for question_samples in samples]
        accuracy = sum(bool(t.outcome) for t in trajectories) / max(1, len(trajectories))
        self.history.append((trainer.global_step, accuracy))
        if trainer.log_dir is not None:
            path = Path(trainer.log_dir) / f"heldout_{tag}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as fh:
                for t in trajectories:
                    fh.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
        return accuracy

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        accuracy = self.measure(trainer, pl_module, "start")
        for logger in trainer.loggers:
            logger.log_metrics({"val/accuracy": accuracy}, step=0)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        accuracy = self.measure(trainer, pl_module, f"step{trainer.global_step}")
        pl_module.log("val/accuracy", accuracy, prog_bar=True)


class ExportPretrained(L.Callback):
    """Save the trained model in transformers' format at the end of ``fit``, so any tool can load it.

    The module must have a ``save_pretrained(path)`` method (the reasoner and the verifier do). LoRA adapters
    are merged into the saved weights, so the folder is a plain checkpoint.

    Args:
        dirpath: the folder to write (created; files in it are replaced).
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__()
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            pl_module.save_pretrained(self.dirpath)


class ProgressLines(L.Callback):
    """Training progress as plain lines, for output that goes to a file rather than a terminal.

    A progress bar redraws one line with carriage returns, so a redirected log shows nothing useful until
    the phase ends. This prints ``[sapo] <name>: step s/N (p%), loss x, r steps/s`` about every
    ``every_seconds`` and at the end of training.

    Args:
        name: what the lines call the run (the loop's phase).
        every_seconds: the least time between two lines.
    """

    def __init__(self, name: str, every_seconds: float = 30.0) -> None:
        super().__init__()
        self.name = name
        self.every_seconds = every_seconds

    @staticmethod
    def wanted() -> bool:
        """Whether output goes elsewhere than a terminal (then lines read better than a bar)."""
        return not sys.stderr.isatty()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = self._last = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_seconds:
            self._last = now
            self._print(trainer, now)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(trainer, time.monotonic())

    def _print(self, trainer: L.Trainer, now: float) -> None:
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        loss = trainer.callback_metrics.get("train/loss")
        rate = step / max(now - self._started, 1e-9)
        share = f" ({100 * step / total:.0f}%)" if total and total != float("inf") else ""
        loss_text = f", loss {float(loss):.4f}" if loss is not None else ""
        print(f"[sapo] {self.name}: step {step}/{total}{share}{loss_text}, {rate:.2f} steps/s", flush=True)


class ReleaseFreedHeap(L.Callback):
    """Hands the heap memory freed in a training step back to the system every ``every_n_steps`` steps,
    after dropping the step's gradients.

    On Linux with glibc, most of a small model's activations and gradients (1-4 MiB blocks, under glibc's
    mmap threshold once it has grown to 32 MiB) come from the heap; glibc keeps the freed blocks, and
    because each step's blocks differ a little in size the heap fragments and the resident set grows with
    the steps. ``malloc_trim(0)`` after a step returns every free page of it. Measured on SmolLM2-135M's
    ORPO training (``benchmarks/training_speed.py``, 20 steps, 2 cores): peak resident 5.05 -> 3.83 GiB at
    the same speed (316 against 319 tokens/s), and 3.71 GiB with the gradients dropped as below. The trim
    is a no-op where glibc is absent (macOS, musl).

    Lightning's automatic optimisation zeroes gradients inside the next step's closure, after that step's
    forward pass, so the previous step's gradients (as large as the trained weights: 0.5 GiB for a fully
    fine-tuned 135M model in float32) live through every forward pass. ``free_gradients`` sets them to
    ``None`` as soon as the optimizer has stepped, which is what that zeroing would do a forward pass later.

    Args:
        every_n_steps: the optimizer steps between two trims.
        free_gradients: drop the gradients after every optimizer step (a callback that reads ``.grad`` in
            ``on_train_batch_end`` would then see ``None``; ``on_before_optimizer_step`` still sees them).
    """

    def __init__(self, every_n_steps: int = 1, free_gradients: bool = True) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.free_gradients = free_gradients
        self._last_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a run resumed at step N: its first batches accumulate towards step N + 1, keep their gradients
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # with gradient accumulation several batches end at one global step: act once, after the step
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        if self.free_gradients:
            for optimizer in trainer.optimizers:
                optimizer.zero_grad(set_to_none=True)
        if step % self.every_n_steps == 0:
            trim_heap()


def bound_kernel_caches(capacity: int = KERNEL_CACHE_CAPACITY) -> dict[str, str]:
    """Caps the CPU kernel caches of oneDNN and ideep at ``capacity`` entries each, where the environment
    does not set them already; returns the values in effect.

    On a CPU, PyTorch builds a oneDNN kernel for every new shape of a matrix product, and both caches keep
    up to 1,024 of them for the process's life. Batches of varying length make new shapes at every step, so
    a long run fills them: after the loop's SFT phase on the demo (25 steps), 330 MiB of heap stayed in use
    with no tensor left, and the loop carried about 1 GiB from phase to phase. At 128 entries the demo's
    phases start from 0.7-0.8 GiB instead of 1.2-1.4 (its peak, ORPO's round 1: 4.87 -> 3.92 GiB, with the
    gradients dropped after each step too) and ORPO trains as fast (361 against 357 tokens/s,
    ``benchmarks/training_speed.py``).
    Both libraries read their variable when they build their first kernel, so this works only before any
    model has run in the process; the ``sapo`` command calls it first thing.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    return {name: os.environ.setdefault(name, str(capacity)) for name in KERNEL_CACHE_VARIABLES}


def trim_heap() -> bool:
    """glibc's ``malloc_trim(0)``: free heap pages go back to the system. Returns whether any did (False
    also where there is no glibc)."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False


def _glibc() -> Any:
    """glibc, for ``malloc_trim``; ``None`` elsewhere (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()
