"""Sampling and labelling chunk by chunk, so that a killed run keeps every finished chunk.

Each chunk gets its own sampler, seeded from the phase's seed and the chunk's index, so a chunk sampled again
after a crash draws what it would have drawn the first time, whatever the chunks before it did. With several
processes each makes its own chunks (:meth:`~sapo.evolution.distributed.Ranks.mine`), waits for the others,
and reads every chunk back: the result does not depend on the number of processes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from sapo.data.tasks.base import Question, Task
from sapo.data.trajectory import Cost, Trajectory
from sapo.evolution.data import LabelledData
from sapo.evolution.distributed import ONE_PROCESS, Ranks
from sapo.evolution.run_directory import ChunkedJsonl
from sapo.evolution.settings import SamplingSettings
from sapo.rollout import GenerationBackend, Sampler, TaskRolloutSampler, derive_seed
from sapo.supervision import SupervisionStrategy
from sapo.supervision.protocols import StepScorer

__all__ = ["label_in_chunks", "label_subset", "sample_in_chunks", "sampler_factory", "trajectories_in_chunks"]

#: builds the sampler of one chunk from its seed
SamplerFactory = Callable[[int], Sampler]


def sampler_factory(settings: SamplingSettings, backend: GenerationBackend, tokenizer: Any) -> SamplerFactory:
    """Builds one chunk's sampler from its seed, with the recipe's sampling settings."""

    def make(seed: int) -> Sampler:
        return Sampler(
            None,
            tokenizer,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            batch_size=settings.batch_size,
            seed=seed,
            backend=backend,
        )

    return make


#: the roles of a labelling chunk's records
ROLES = ("labelled", "expanded", "dropped")


def sample_in_chunks(
    task: Task,
    chunks: Sequence[Sequence[Question]],
    samples_per_question: int,
    sampler: SamplerFactory,
    seed: int,
    store: ChunkedJsonl,
    cost: Cost,
    ranks: Ranks = ONE_PROCESS,
) -> list[Trajectory]:
    """K checked, deduplicated trajectories per question, chunk by chunk (:func:`trajectories_in_chunks`)."""

    def sample(chunk: Sequence[Question], chunk_seed: int) -> tuple[list[Trajectory], Cost]:
        chunk_sampler = sampler(chunk_seed)
        adapter = TaskRolloutSampler(chunk_sampler, task, chunk)
        return adapter.sample_trajectories(chunk, samples_per_question), chunk_sampler.cost

    return trajectories_in_chunks(chunks, sample, seed, store, cost, ranks)


def trajectories_in_chunks(
    chunks: Sequence[Sequence[Question]],
    make: Callable[[Sequence[Question], int], tuple[list[Trajectory], Cost]],
    seed: int,
    store: ChunkedJsonl,
    cost: Cost,
    ranks: Ranks = ONE_PROCESS,
) -> list[Trajectory]:
    """The trajectories ``make(chunk, chunk_seed)`` gives for each chunk of questions, with what they cost;
    finished chunks in ``store`` are read back, the others made and written (each by the rank it belongs
    to). Every chunk's cost, made by this process or another, is added to ``cost``."""
    for index, chunk in enumerate(chunks):
        if ranks.mine(index) and not store.has(index):
            store.start(index, of=len(chunks))
            trajectories, chunk_cost = make(chunk, derive_seed(seed, index))
            store.write(index, trajectories, cost=chunk_cost)
            progress(store.phase, index, len(chunks), ranks)
    ranks.barrier()
    trajectories: list[Trajectory] = []
    for index in range(len(chunks)):
        trajectories += store.read(index)
        cost.add(store.cost(index))
    return trajectories


def progress(phase: str, index: int, of: int, ranks: Ranks = ONE_PROCESS) -> None:
    """One line per finished chunk: readable on a terminal and in a redirected log alike."""
    print(f"[sapo{ranks.tag()}] {phase}: chunk {index + 1}/{of} done", flush=True)


def label_subset(
    trajectories: Sequence[Trajectory], count: int | None, seed: int, iteration: int
) -> list[Trajectory]:
    """The paper's ``subset(new samples)``: every labelable trajectory, or a seeded draw of ``count``."""
    usable = [t for t in trajectories if t.num_steps > 0 and t.outcome is not None]
    if count is None or count >= len(usable):
        return usable
    rng = random.Random(derive_seed(seed, "label-subset", iteration))
    chosen = sorted(rng.sample(range(len(usable)), count))
    return [usable[i] for i in chosen]


def label_in_chunks(
    strategy: SupervisionStrategy,
    task: Task,
    questions: Sequence[Question],
    chunks: Sequence[Sequence[Trajectory]],
    sampler: SamplerFactory | None,
    scorer: StepScorer | None,
    seed: int,
    store: ChunkedJsonl,
    ranks: Ranks = ONE_PROCESS,
) -> LabelledData:
    """Label each chunk with ``strategy`` (rollouts from ``sampler``, scores from ``scorer``), each by the rank
    it belongs to; finished chunks in ``store`` are read back. ``sampler`` None reads back only: every chunk
    must be finished."""
    result = LabelledData()
    by_id = {q.id: q for q in questions}
    for index, chunk in enumerate(chunks):
        if sampler is not None and ranks.mine(index) and not store.has(index):
            store.start(index, of=len(chunks))
            rollouts = TaskRolloutSampler(
                sampler(derive_seed(seed, index)), task, [by_id[t.question_id] for t in chunk]
            )
            out = strategy.label(chunk, rollouts, scorer)
            records = [{"role": role, **t.to_dict()} for role in ROLES for t in getattr(out, role)]
            store.write(index, records + [{"role": "cost", **out.cost.to_dict()}])
            progress(store.phase, index, len(chunks), ranks)
    if sampler is not None:
        ranks.barrier()
    for index in range(len(chunks)):
        if not store.has(index):
            raise RuntimeError(f"{store.path(index)} is missing from a labelling phase marked finished")
        for record in store.read_records(index):
            role = record.pop("role")
            if role == "cost":
                result.cost = result.cost + Cost.from_dict(record)
            else:
                getattr(result, role).append(Trajectory.from_dict(record))
    return result
