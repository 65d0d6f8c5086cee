"""The loop on several processes: launched once by Lightning's launcher, every rank runs every phase.

``sapo fit --trainer.devices N --trainer.num_nodes M --trainer.strategy ddp`` starts N processes per node
through the ``sapo fit`` trainer's own launcher (Lightning's, or ``torchrun`` / SLURM when they started the
processes), and each of them runs the whole loop (:func:`launch`). Inside it:

- sampling and labelling chunk ``i`` is made by rank ``i mod world_size`` (:meth:`Ranks.mine`); every
  chunk's seed depends on the chunk alone, so the chunks, and what is built from them, are the same for any
  number of processes;
- the training phases are DDP over the process group already started (each phase's trainer finds it and
  launches nothing);
- rank 0 is the only writer of the manifest, the phase files, the saved models and the report; each rank
  writes its own chunks and its own event log; a barrier ends every phase;
- the phases that read a whole set at once (pairs, held-out evaluation) run on rank 0 while the others
  wait.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

__all__ = ["ONE_PROCESS", "LaunchError", "Ranks", "check_launch", "launch"]

T = TypeVar("T")

#: how the loop's processes may be started: Lightning's launcher re-runs the command once per process
#: (``ddp``), or an outside launcher started them (torchrun, SLURM); spawn and fork cannot run a loop whose
#: phases load models and start engines of their own
SUPPORTED = "'auto' or 'ddp' (DDPStrategy with start_method='popen')"


class LaunchError(ValueError):
    """A launch the loop cannot run (a strategy, a device count, ranks that disagree); raised before any
    work, naming the setting."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world_size`` (``local_rank`` of ``local_size`` on its
    node). One process: rank 0 of 1, and every collective is a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def of(cls, trainer: L.Trainer) -> Ranks:
        """The ranks the trainer's strategy gives this process (after :func:`launch` set it up)."""
        if trainer.world_size == 1:
            return ONE_PROCESS
        return cls(trainer.global_rank, trainer.world_size, trainer.local_rank, trainer.num_devices)

    @property
    def writer(self) -> bool:
        """Whether this process writes the run's shared files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def mine(self, index: int) -> bool:
        """Whether chunk ``index`` is this rank's to make: ``index mod world_size == rank``."""
        return index % self.world_size == self.rank

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def agree(self, settings: Any, differences: Callable[[Any, Any], list[str]]) -> None:
        """Raise :class:`LaunchError` on every rank unless every rank runs the same ``settings``; the
        message names the keys where a rank differs from rank 0."""
        every = self.gather(settings)
        for rank, other in enumerate(every[1:], start=1):
            changed = sorted(differences(every[0], other))
            if changed:
                raise LaunchError(
                    f"the processes of this launch disagree on the recipe: rank {rank} differs from rank 0 at "
                    f"{', '.join(changed[:8])}; launch every process with the same config and arguments"
                )

    def tag(self) -> str:
        """`` rank r`` for log lines when there are several processes, else nothing."""
        return f" rank {self.rank}" if self.distributed else ""


#: the ranks of a run in one process
ONE_PROCESS = Ranks()


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_launch(trainer: L.Trainer) -> None:
    """Refuse, before any work, a launch the loop cannot run: a strategy other than DDP launched by
    re-running the command (or started from outside), or more CPU processes per node than cores."""
    strategy = trainer.strategy
    if type(strategy) is DDPStrategy:  # not its subclasses (DeepSpeed): their checkpoints are sharded
        if strategy._start_method != "popen":
            raise LaunchError(
                f"trainer.strategy: the loop cannot run under {type(strategy).__name__}"
                f"(start_method={strategy._start_method!r}): spawned or forked processes cannot load the "
                f"phases' models and engines of their own; use {SUPPORTED}"
            )
    elif not isinstance(strategy, SingleDeviceStrategy):
        raise LaunchError(
            f"trainer.strategy: the loop does not support {type(strategy).__name__}; use {SUPPORTED}"
        )
    if strategy.root_device.type == "cpu" and trainer.num_devices > _available_cpus():
        raise LaunchError(
            f"trainer.devices is {trainer.num_devices} CPU processes per node, but this machine gives this "
            f"process {_available_cpus()} cores; each process needs at least one: lower trainer.devices"
        )


def launch(trainer: L.Trainer, function: Callable[[Ranks], T]) -> T:
    """Run ``function(ranks)`` on every process of the trainer's launch: Lightning's launcher starts the
    other processes (each re-runs the command and comes back here) unless torchrun or SLURM did; the
    process group is then set up once, and every phase's trainer uses it."""
    check_launch(trainer)
    if trainer.world_size == 1:
        return function(ONE_PROCESS)

    def on_rank() -> T:
        trainer.strategy.setup_environment()  # the process group, once for every phase
        ranks = Ranks.of(trainer)
        try:
            result = function(ranks)
            ranks.barrier()
            return result
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()

    launcher = trainer.strategy.launcher
    assert launcher is not None
    return launcher.launch(on_rank)


def device_for_rank(trainer: L.Trainer) -> str | None:
    """The device a frozen model of this process goes to: its own GPU when processes share a node's GPUs,
    else None (the backbone's default)."""
    device = trainer.strategy.root_device
    return str(device) if device.type == "cuda" and trainer.world_size > 1 else None


def torch_threads_for_rank(ranks: Ranks) -> None:
    """One rank's share of the node's cores for torch (Lightning's launcher sets it for the processes it
    starts; torchrun and SLURM do not)."""
    if ranks.distributed and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, _available_cpus() // ranks.local_size))
