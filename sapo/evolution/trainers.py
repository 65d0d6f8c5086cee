"""The loop's trainers and loggers, made from the ``sapo fit`` trainer as a template.

Each training phase gets a fresh :class:`~lightning.pytorch.Trainer` (see :mod:`sapo.evolution.loop` for
why) that copies the template's device, precision, gradient accumulation and clipping, and logs to its own
CSV and TensorBoard folder under ``<run_dir>/logs/phases/<phase>``. The per-iteration metrics go to
:func:`iteration_loggers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, Strategy

from sapo.callbacks import ProgressLines, ReleaseFreedHeap

__all__ = ["iteration_loggers", "phase_trainer"]


def _phase_strategy(template: L.Trainer) -> Strategy | str:
    """The template's strategy, made anew for one phase. Under DDP the copy keeps the template's cluster
    environment: it finds the process group :func:`~sapo.evolution.distributed.launch` started and the
    processes already there, so a phase's ``fit`` launches nothing."""
    strategy = template.strategy
    if not isinstance(strategy, DDPStrategy) or template.world_size == 1:
        return "auto"
    return DDPStrategy(
        cluster_environment=strategy.cluster_environment,
        process_group_backend=strategy.process_group_backend,
        timeout=strategy._timeout,
        **strategy._ddp_kwargs,
    )


def phase_trainer(
    template: L.Trainer,
    run_dir: Path,
    phase: str,
    epochs: int,
    gradient_clip: float | None,
    max_steps: int | None = None,
    release_heap_every_n_steps: int = 0,
) -> L.Trainer:
    """The trainer of one phase: ``epochs`` passes over its data, or exactly ``max_steps`` optimizer steps
    (as many epochs as that takes); ``gradient_clip`` overrides the template's ``gradient_clip_val``;
    ``release_heap_every_n_steps`` adds :class:`~sapo.callbacks.ReleaseFreedHeap` (0: none)."""
    logs = run_dir / "logs" / "phases"
    callbacks: list[L.Callback] = [ProgressLines(phase)] if ProgressLines.wanted() else []
    if release_heap_every_n_steps:
        callbacks.append(ReleaseFreedHeap(release_heap_every_n_steps))
    return L.Trainer(
        # the device type, not the accelerator object: given an object, Lightning sets mixed precision
        # up for CUDA, and on a CPU bf16-mixed would then run in float32
        accelerator=template.strategy.root_device.type,
        devices=template.num_devices,
        num_nodes=template.num_nodes,
        strategy=_phase_strategy(template),
        precision=template.precision,
        max_epochs=epochs if max_steps is None else -1,
        max_steps=-1 if max_steps is None else max_steps,
        accumulate_grad_batches=template.accumulate_grad_batches,
        gradient_clip_val=gradient_clip if gradient_clip is not None else template.gradient_clip_val,
        log_every_n_steps=template.log_every_n_steps,
        limit_train_batches=template.limit_train_batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=template.progress_bar_callback is not None and not ProgressLines.wanted(),
        callbacks=callbacks,
        logger=[
            CSVLogger(logs, name=phase, version=""),
            TensorBoardLogger(logs, name=phase, version="", default_hp_metric=False),
        ],
        default_root_dir=run_dir,
    )


def iteration_loggers(template: L.Trainer, run_dir: Path) -> list[Any]:
    """Where the per-iteration metrics go: TensorBoard under ``<run_dir>/logs/iterations`` (event files of
    every process of the run in one folder), and the template's loggers other than CSV and TensorBoard ones
    (those would write where the recipe's ``save_dir`` says, not in this run's folder; the CSV is
    :func:`~sapo.evolution.report.write_metrics_csv`'s)."""
    own = TensorBoardLogger(run_dir / "logs", name="iterations", version="", default_hp_metric=False)
    others = [logger for logger in template.loggers if not isinstance(logger, (CSVLogger, TensorBoardLogger))]
    return [own, *others]
