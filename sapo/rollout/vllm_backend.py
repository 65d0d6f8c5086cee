"""An optional vLLM backend for the :class:`~sapo.rollout.sampler.Sampler`, used on CUDA when vLLM imports.

vLLM is not a dependency: it is imported only inside this module's functions, so importing sapo never needs
it. It serves a checkpoint folder (a model being trained must be saved first; generation and training run in
separate phases, so free the training model before starting the engine). Every prompt gets its own seed
(``derive_seed(seed, row)``), so vLLM's samples do not depend on how its scheduler batches them.

vLLM stops on strings, not on a rule like "after the answer line", so here a row runs to EOS or the token
budget and is cut at the rule's stop point afterwards: ``num_tokens`` counts up to that point, as with
transformers, and the tokens generated past it are counted in ``Cost.idle_row_steps``.

This backend is not exercised by the test suite (no CUDA there).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from sapo.data.trajectory import Cost
from sapo.rollout.generate import (
    Generation,
    StopRule,
    derive_seed,
    finish_generation,
    first_stop_point,
    progress_rate,
)

__all__ = ["VLLMBackend", "vllm_available"]


def vllm_available() -> bool:
    """Whether vLLM is installed and a CUDA device is present (the conditions for the vLLM backend)."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


class VLLMBackend:
    """Generates with a vLLM engine over a checkpoint folder.

    Args:
        checkpoint: a transformers checkpoint folder (or hub id) vLLM can load.
        tokenizer: the tokenizer for prompts and decoding (default: the engine's).
        dtype: vLLM's dtype (``"auto"``, ``"bfloat16"``, ``"float16"``, ``"float32"``).
        gpu_memory_utilization: the share of GPU memory vLLM may take (weights and KV cache).
        engine_options: further keyword arguments for ``vllm.LLM``.
    """

    def __init__(
        self,
        checkpoint: str,
        tokenizer: Any = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        **engine_options: Any,
    ) -> None:
        from vllm import LLM  # imported here: vLLM is optional

        self.llm = LLM(
            model=checkpoint, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, **engine_options
        )
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()

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
        call_cost = Cost(calls=1, batches=1 if prompts else 0)
        if not prompts:
            cost.add(call_cost)
            return []
        token_ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                max_tokens=max_new_tokens,
                seed=None if seed is None else derive_seed(seed, row),
                skip_special_tokens=True,
            )
            for row in range(len(prompts))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in token_ids], params, use_tqdm=False)
        end_ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}
        results = []
        bar = tqdm(total=len(prompts), desc=description, unit="seq", disable=not progress)
        for ids, output in zip(token_ids, outputs, strict=True):
            tokens = list(output.outputs[0].token_ids)
            check_started = time.perf_counter()
            stopped_at = first_stop_point(self.tokenizer, tokens, end_ids, stop)
            call_cost.stop_check_seconds += time.perf_counter() - check_started
            generation = finish_generation(self.tokenizer, tokens, end_ids, stop, stopped_at=stopped_at)
            results.append(generation)
            call_cost.completions += 1
            call_cost.prompt_tokens += len(ids)
            call_cost.generated_tokens += generation.num_tokens
            call_cost.idle_row_steps += len(tokens) - generation.num_tokens
            bar.update(1)
        call_cost.seconds = time.perf_counter() - started
        bar.set_postfix_str(progress_rate(call_cost))
        bar.close()
        cost.add(call_cost)
        return results
