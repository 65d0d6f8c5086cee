"""The Sampler: K trajectories per question and k continuations per step prefix, batched, seeded, costed.

Two layers:

- :class:`Sampler` knows a reasoner and nothing of tasks: ``generate(prompts, num_samples)`` samples every
  prompt ``num_samples`` times in one batched pass through its backend (transformers ``generate`` or vLLM;
  ``"auto"``, the default, takes vLLM when it imports and the model is a checkpoint
  folder), with temperature, top_p, a token budget and an optional stop rule. Each call gets its own seed, derived from the sampler's
  seed and the call's number, so two samplers with the same seed make the same samples call for call, and
  successive calls (early-stop rounds, say) draw fresh ones. It keeps the cumulative :attr:`Sampler.cost`
  and the cost of its :attr:`Sampler.last_cost` call.
- :class:`TaskRolloutSampler` puts a task around it: prompts from ``task.prompt``, steps from
  ``task.split_steps``, answers and outcomes from ``task.check``. It samples checked, deduplicated
  trajectories for the loop (:meth:`TaskRolloutSampler.sample_trajectories`) and implements
  :class:`~sapo.supervision.protocols.RolloutSampler` for the supervision strategies
  (:meth:`TaskRolloutSampler.rollouts`).

Nothing here is global: every sampler owns its seed, counters and cost, so one per rank (later) is enough.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sapo.data.tasks.base import Question, Task
from sapo.data.trajectory import Cost, Trajectory
from sapo.rollout.generate import (
    Generation,
    StopRule,
    as_stop_rule,
    derive_seed,
    generate_batched,
)
from sapo.supervision.protocols import Prefix, Rollout

__all__ = [
    "FROM_TASK",
    "GenerationBackend",
    "Sampler",
    "TaskRolloutSampler",
    "TransformersBackend",
    "deduplicate",
    "task_stop_rule",
]

logger = logging.getLogger(__name__)


class GenerationBackend(Protocol):
    """Completes prompts, one :class:`Generation` per prompt in input order, adding its cost to ``cost``."""

    def __call__(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: StopRule | None,
        seed: int | None,
        progress: bool,
        description: str,
        cost: Cost,
    ) -> list[Generation]: ...


@dataclass
class TransformersBackend:
    """The default backend: :func:`~sapo.rollout.generate.generate_batched` on an in-memory model (with its
    shared prefill unless ``share_prefill`` is off, decoding with ``decode_attention``: see there)."""

    model: Any
    tokenizer: Any
    batch_size: int = 32
    share_prefill: bool = True
    decode_attention: str = "auto"

    def __call__(self, prompts: Sequence[str], **settings: Any) -> list[Generation]:
        return generate_batched(
            self.model,
            self.tokenizer,
            prompts,
            batch_size=self.batch_size,
            share_prefill=self.share_prefill,
            decode_attention=self.decode_attention,
            **settings,
        )


class Sampler:
    """Samples completions from a reasoner.

    Args:
        model: the reasoner (a transformers causal LM), or for the vLLM backend a checkpoint folder (an
            engine is started for this sampler) or a running :class:`~sapo.rollout.vllm_backend.VLLMEngine`.
        tokenizer: its tokenizer (the task adapter builds prompts with it).
        max_new_tokens: the token budget of every completion.
        temperature: 0 for greedy decoding; SIPF samples math at 1.0 and code at 0.7.
        top_p: nucleus sampling threshold (1.0: off). No top-k cut is applied.
        batch_size: rows (sequences) per model call of the transformers backend.
        seed: the root of every call's seed.
        backend: ``"auto"`` (vLLM when :func:`~sapo.rollout.vllm_backend.vllm_available` and ``model`` is a
            checkpoint path or an engine, else transformers; the default here), ``"transformers"``, ``"vllm"``, or a ready
            :class:`GenerationBackend`. The loop passes a ready backend (one engine per run).
        progress: show a progress bar with sequences/s and tokens/s for each call.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 32,
        seed: int = 0,
        backend: str | GenerationBackend = "auto",
        progress: bool = True,
    ) -> None:
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.progress = progress
        self.backend = _make_backend(backend, model, tokenizer, batch_size)
        self.cost = Cost()
        self.last_cost = Cost()
        self._calls = 0

    def generate(
        self,
        prompts: Sequence[str],
        num_samples: int = 1,
        *,
        stop: StopRule | str | Callable[[str], int | None] | None = None,
        description: str = "sampling",
    ) -> list[list[Generation]]:
        """``num_samples`` completions of every prompt (one list per prompt, in order), in one batched pass.

        ``stop`` says where a completion is finished (see :func:`~sapo.rollout.generate.as_stop_rule`);
        EOS and ``max_new_tokens`` always end it.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        rows = [prompt for prompt in prompts for _ in range(num_samples)]
        call_cost = Cost()
        seed = derive_seed(self.seed, "call", self._calls)
        self._calls += 1
        generations = self.backend(
            rows,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=as_stop_rule(stop),
            seed=seed,
            progress=self.progress,
            description=description,
            cost=call_cost,
        )
        self.last_cost = call_cost
        self.cost.add(call_cost)
        return [generations[i : i + num_samples] for i in range(0, len(generations), num_samples)]


def _make_backend(
    backend: str | GenerationBackend, model: Any, tokenizer: Any, batch_size: int
) -> GenerationBackend:
    if not isinstance(backend, str):
        return backend
    if backend not in ("auto", "transformers", "vllm"):
        raise ValueError(
            f"backend must be 'auto', 'transformers', 'vllm' or a backend object, got {backend!r}"
        )
    from sapo.rollout.vllm_backend import VLLMBackend, VLLMEngine, vllm_available

    if backend == "vllm" or (backend == "auto" and isinstance(model, (str, VLLMEngine)) and vllm_available()):
        if isinstance(model, VLLMEngine):
            return VLLMBackend(model, tokenizer)
        if not isinstance(model, str):
            raise TypeError(
                "the vLLM backend needs a checkpoint folder or a VLLMEngine as the model, got "
                f"{type(model).__name__}"
            )
        return VLLMBackend(VLLMEngine(model), tokenizer)
    if isinstance(model, (str, VLLMEngine)):
        raise TypeError(
            f"model {model!r} is a path or an engine but vLLM is not used here; load it "
            "(sapo.models.load_backbone) and pass the model"
        )
    return TransformersBackend(model, tokenizer, batch_size)


# --------------------------------------------------------------------------------------------- task layer


class _FromTask:
    def __repr__(self) -> str:
        return "FROM_TASK"


#: the default ``stop`` of :class:`TaskRolloutSampler`: the task's own rule (see :func:`task_stop_rule`)
FROM_TASK: Any = _FromTask()


def task_stop_rule(task: Task) -> StopRule | None:
    """The task's stop rule: its ``completion_end(completion) -> int | None`` method, checked after every
    generated token that contains a newline; ``None`` (EOS and the token budget only) when it has none."""
    if type(task).completion_end is Task.completion_end:  # the base never ends early: skip the checks
        return None
    return StopRule(task.completion_end, trigger="\n")


def deduplicate(
    trajectories: Sequence[Trajectory], key: Callable[[Trajectory], Hashable]
) -> list[Trajectory]:
    """The first trajectory of each ``(question_id, key)``, in order; ``meta["duplicates"]`` counts the
    later ones dropped for it (they cost tokens, so the count is kept)."""
    kept: dict[tuple[str, Hashable], Trajectory] = {}
    for t in trajectories:
        first = kept.setdefault((t.question_id, key(t)), t)
        first.meta["duplicates"] = first.meta.get("duplicates", 0) + (first is not t)
    return list(kept.values())


@dataclass
class _Round:
    """Which prefixes one round of rollouts continues, and how many continuations each gets."""

    prefixes: list[int]
    size: int
    generations: dict[int, list[Generation]] = field(default_factory=dict)


class TaskRolloutSampler:
    """Checked trajectories and rollouts of one task, sampled from one reasoner.

    Implements :class:`~sapo.supervision.protocols.RolloutSampler`.

    Args:
        sampler: the reasoner's :class:`Sampler`.
        task: builds prompts, splits steps, checks answers.
        questions: the questions rollouts may continue, by id (a prefix names its question by id).
        stop: where a completion is finished; :data:`FROM_TASK` (default) takes the task's rule
            (:func:`task_stop_rule`), ``None`` stops only at EOS and the token budget.
        dedup_key: when two samples of one question are the same solution; default the task's
            ``dedup_key(trajectory)``.
        early_stop_chunk: continuations per prefix per round under ``early_stop``; default ``ceil(k / 4)``
            (at most four rounds). Smaller chunks waste fewer samples after a success but make more,
            smaller model calls.
    """

    def __init__(
        self,
        sampler: Sampler,
        task: Task,
        questions: Mapping[str, Question] | Sequence[Question] = (),
        *,
        stop: Any = FROM_TASK,
        dedup_key: Callable[[Trajectory], Hashable] | None = None,
        early_stop_chunk: int | None = None,
    ) -> None:
        if early_stop_chunk is not None and early_stop_chunk < 1:
            raise ValueError(f"early_stop_chunk must be >= 1, got {early_stop_chunk}")
        self.sampler = sampler
        self.task = task
        self.questions = dict(questions) if isinstance(questions, Mapping) else {q.id: q for q in questions}
        self.stop = task_stop_rule(task) if stop is FROM_TASK else as_stop_rule(stop)
        self.dedup_key = dedup_key or task.dedup_key
        self.early_stop_chunk = early_stop_chunk
        self.last_cost = Cost()

    # --- trajectories for the loop -------------------------------------------------------------------------
    def sample_trajectories(self, questions: Sequence[Question], num_samples: int) -> list[Trajectory]:
        """``num_samples`` solutions per question, checked by the task, deduplicated per question.

        Each trajectory's ``meta`` holds ``generated_tokens``, ``finish_reason``, ``sample_index`` and
        ``duplicates``. Completions with no step at all are dropped (nothing to label); the sampler's cost
        still counts them.
        """
        before = _copy(self.sampler.cost)
        prompts = [self.task.prompt(q, self.sampler.tokenizer) for q in questions]
        generations = self.sampler.generate(
            prompts, num_samples, stop=self.stop, description="sampling trajectories"
        )
        sampled = [
            self.task.new_trajectory(
                q, g.text, generated_tokens=g.num_tokens, finish_reason=g.finish_reason, sample_index=j
            )
            for q, samples in zip(questions, generations, strict=True)
            for j, g in enumerate(samples)
        ]
        nonempty = [t for t in sampled if t.steps]
        if len(nonempty) < len(sampled):
            logger.info("dropped %d completions without steps", len(sampled) - len(nonempty))
        kept = deduplicate(nonempty, self.dedup_key)
        self.task.check(kept, {q.id: q for q in questions})
        self.last_cost = self.sampler.cost - before
        return kept

    # --- rollouts for the strategies -----------------------------------------------------------------------
    def continuation_prompt(self, prefix: Prefix) -> str:
        """The question's prompt followed by the prefix's steps, as the task writes a completion."""
        return self.task.prompt(self._question(prefix), self.sampler.tokenizer) + self.task.completion_text(
            prefix.steps
        )

    def rollouts(self, prefixes: Sequence[Prefix], k: int, early_stop: bool = False) -> list[list[Rollout]]:
        """``k`` checked continuations of every prefix, one list per prefix in order, batched across prefixes.

        A rollout's steps are its own (after the prefix); its answer and outcome come from ``task.check`` on
        the whole completion (prefix steps + continuation steps). A prefix the stop rule already finds
        finished (it states its answer) is not continued: its rollouts are empty continuations that cost
        nothing and carry the prefix's own outcome (``meta["finished_prefix"]``).

        With ``early_stop`` the continuations come in rounds of ``early_stop_chunk`` and a prefix leaves the
        rounds once one of its rollouts is correct: its list then holds every rollout sampled up to and
        including that round (fewer than ``k``), so the rollouts returned are exactly what was paid for.
        Without it every list has exactly ``k`` rollouts.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        before = _copy(self.sampler.cost)
        results: list[list[Rollout]] = [[] for _ in prefixes]
        prompts = [self.continuation_prompt(p) for p in prefixes]
        finished = {i for i, p in enumerate(prefixes) if self._is_finished(p)}
        active = list(range(len(prefixes)))
        sizes = self._round_sizes(k, early_stop)
        for number, size in enumerate(sizes):
            if not active:
                break
            to_generate = [i for i in active if i not in finished]
            description = f"rollouts (round {number + 1}/{len(sizes)})" if len(sizes) > 1 else "rollouts"
            generated = (
                self.sampler.generate(
                    [prompts[i] for i in to_generate], size, stop=self.stop, description=description
                )
                if to_generate
                else []
            )
            by_prefix = dict(zip(to_generate, generated, strict=True))
            empty = [Generation("", 0, "stop")] * size
            new = {i: by_prefix.get(i, empty) for i in active}
            checked = self._check_continuations(
                [prefixes[i] for i in active], [new[i] for i in active], number
            )
            for i, rollouts in zip(active, checked, strict=True):
                if i in finished:
                    for r in rollouts:
                        r.meta["finished_prefix"] = True
                results[i].extend(rollouts)
            if early_stop:
                active = [i for i in active if not any(r.outcome for r in results[i])]
        self.last_cost = self.sampler.cost - before
        return results

    def _round_sizes(self, k: int, early_stop: bool) -> list[int]:
        if not early_stop:
            return [k]
        chunk = self.early_stop_chunk or math.ceil(k / 4)
        return [min(chunk, k - start) for start in range(0, k, chunk)]

    def _is_finished(self, prefix: Prefix) -> bool:
        if self.stop is None or prefix.num_steps == 0:
            return False
        return self.stop.end(self.task.completion_text(prefix.steps)) is not None

    def _check_continuations(
        self, prefixes: Sequence[Prefix], generations: Sequence[Sequence[Generation]], round_number: int
    ) -> list[list[Rollout]]:
        """Split each continuation into steps and check prefix + continuation with the task, in one batch."""
        continuations: list[tuple[int, Generation, list[str]]] = []
        whole: list[Trajectory] = []
        for p, (prefix, samples) in enumerate(zip(prefixes, generations, strict=True)):
            for g in samples:
                steps = self.task.split_steps(g.text)
                continuations.append((p, g, steps))
                whole.append(
                    Trajectory(
                        question_id=prefix.trajectory.question_id,
                        question=prefix.trajectory.question,
                        steps=[*prefix.steps, *steps],
                    )
                )
        self.task.check(whole, self.questions)
        rollouts: list[list[Rollout]] = [[] for _ in prefixes]
        for (p, g, steps), t in zip(continuations, whole, strict=True):
            meta = {
                "finish_reason": g.finish_reason,
                "round": round_number,
                "prefix_steps": prefixes[p].num_steps,
            }
            rollouts[p].append(Rollout(steps, t.final_answer, bool(t.outcome), g.num_tokens, meta))
        return rollouts

    def _question(self, prefix: Prefix) -> Question:
        question_id = prefix.trajectory.question_id
        if question_id not in self.questions:
            raise KeyError(
                f"prefix of unknown question {question_id!r}: pass its Question to TaskRolloutSampler"
            )
        return self.questions[question_id]


def _copy(cost: Cost) -> Cost:
    return replace(cost)
