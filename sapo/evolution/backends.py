"""The generation backend of every phase that samples the reasoner: sampling, labelling, held-out answers.

With ``sampling.backend: transformers`` each phase loads its reasoner (frozen, in the dtype it samples in)
and frees it when it ends. With ``vllm`` the run has **one** engine: the first phase that generates starts it
on its reasoner, and every later phase points it at its own reasoner (:meth:`VLLMEngine.serve`: the weights
are reloaded in place). sapo saves every reasoner merged (LoRA included), so a weight reload serves LoRA and
full fine-tuning recipes alike. The engine stays up while the training phases run; on a GPU its memory share
(``sampling.vllm.gpu_memory_utilization``) is what training does not get.

With several processes (:mod:`sapo.evolution.distributed`) every rank has its own engine (data parallel):
on GPUs each on its rank's GPU, on a CPU each bound to its share of the node's cores (with
``sampling.vllm.cpu_cores: auto``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sapo.evolution.distributed import ONE_PROCESS, LaunchError, Ranks
from sapo.evolution.settings import FLAG, SamplingSettings
from sapo.models.backbone import BackboneSpec, load_tokenizer, resolve_dtype
from sapo.rollout import GenerationBackend, TransformersBackend
from sapo.rollout.vllm_backend import INSTALL_HINT, VLLMBackend, VLLMEngine, VLLMOptions, vllm_available

__all__ = ["ADJUSTABLE", "ReasonerBackends", "chosen_backend", "frozen_dtype"]

#: settings a rerun may change: they size the engine or say when it runs, not what it computes
_RESULT_NEUTRAL = (
    "kv_cache_gib",
    "gpu_memory_utilization",
    "cpu_cores",
    "max_model_len",
    "stop_while_training",
)
ADJUSTABLE = tuple(f"{FLAG}.sampling.vllm.{name}" for name in _RESULT_NEUTRAL)


def chosen_backend(setting: str) -> str:
    """``transformers`` or ``vllm`` for the ``sampling.backend`` setting; ``vllm`` needs vLLM installed."""
    if setting == "auto":
        return "vllm" if vllm_available() else "transformers"
    if setting == "vllm" and not vllm_available():
        raise ValueError(
            f"{FLAG}.sampling.backend is 'vllm' but vLLM is not installed: {INSTALL_HINT}, or set the "
            "backend to 'transformers'"
        )
    return setting


def frozen_dtype(spec: BackboneSpec) -> str:
    """The dtype of a model that is only sampled or scored: the reasoner's, or with ``dtype: auto`` what
    ``auto`` gives a frozen base (bfloat16 where it is fast). Without this a merged checkpoint would load in
    float32 (``auto`` for a model without adapters assumes it trains) and sample 2-3x slower."""
    if spec.dtype != "auto":
        return spec.dtype
    device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return str(resolve_dtype("auto", device, base_is_frozen=True)).removeprefix("torch.")


class ReasonerBackends:
    """Hands each phase a backend that generates from a given reasoner checkpoint.

    Args:
        settings: the loop's sampling settings (backend, batch size, engine options).
        reasoner: the reasoner's backbone settings (its cache folder; a checkpoint is loaded in its place).
        dtype: the dtype the loop samples in (the engine's ``dtype: auto`` too).
        seed: the engine's seed.
        ranks: this process's place in a launch of several (each rank gets an engine of its own).
    """

    def __init__(
        self,
        settings: SamplingSettings,
        reasoner: BackboneSpec,
        dtype: str,
        seed: int,
        ranks: Ranks = ONE_PROCESS,
    ) -> None:
        self.settings = settings
        self.kind = chosen_backend(settings.backend)
        self._ranks = ranks
        if ranks.distributed and self.kind == "vllm" and settings.vllm.tensor_parallel_size > 1:
            raise LaunchError(
                f"{FLAG}.sampling.vllm.tensor_parallel_size is {settings.vllm.tensor_parallel_size} with "
                f"{ranks.world_size} processes: with several processes each runs its own engine on its own "
                "device; an engine shared across processes is not built. Set it to 1, or launch one process "
                "(trainer.devices 1) for a tensor-parallel engine"
            )
        self._reasoner = reasoner
        self._dtype = dtype
        self._seed = seed
        self.engine: VLLMEngine | None = None

    def _load_frozen(self, folder: Path) -> tuple[Any, Any]:
        """The reasoner at ``folder`` for sampling only: no adapter, no 4-bit, in the sampling dtype."""
        spec = replace(
            self._reasoner,
            name_or_path=str(folder),
            dtype=self._dtype,
            lora=None,
            load_in_4bit=False,
            gradient_checkpointing=False,
        )
        model, tokenizer = spec.load()
        return model.eval(), tokenizer

    def open(self, folder: Path, batch_size: int | None = None) -> tuple[GenerationBackend, Any]:
        """A backend generating from the reasoner at ``folder``, and its tokenizer. ``batch_size``: rows per
        transformers call (default: ``sampling.batch_size``; vLLM schedules its own batches). With
        transformers the caller frees the backend (it holds the model) when the phase ends."""
        if self.kind == "transformers":
            model, tokenizer = self._load_frozen(folder)
            rows = batch_size or self.settings.batch_size
            backend = TransformersBackend(
                model, tokenizer, rows, decode_attention=self.settings.decode_attention
            )
            return backend, tokenizer
        tokenizer = load_tokenizer(str(folder), cache_dir=self._reasoner.cache_dir)
        if self.engine is None:
            options: VLLMOptions = self.settings.vllm
            if options.dtype == "auto":
                options = replace(options, dtype=self._dtype)
            print(f"[sapo] starting the vLLM engine on {folder}")
            self.engine = VLLMEngine(
                folder,
                options,
                seed=self._seed,
                setting=f"{FLAG}.sampling.vllm",
                environment=self._placement(),
            )
            print(f"[sapo] vLLM engine started in {self.engine.start_seconds:.1f} s")
        else:
            self.engine.serve(folder)
        return VLLMBackend(self.engine, tokenizer), tokenizer

    def _placement(self) -> dict[str, str]:
        """Where this rank's engine runs: its GPU (the local rank's), or its share of the node's cores when
        ``cpu_cores`` is ``auto`` (ranks would otherwise bind their threads to the same cores)."""
        ranks = self._ranks
        if not ranks.distributed:
            return {}
        if self._reasoner.device is not None and self._reasoner.device.startswith("cuda"):
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            gpus = visible.split(",") if visible else [str(i) for i in range(ranks.local_size)]
            return {"CUDA_VISIBLE_DEVICES": gpus[ranks.local_rank]}
        if self.settings.vllm.cpu_cores != "auto":
            return {}
        cores = sorted(os.sched_getaffinity(0))
        share = max(1, len(cores) // ranks.local_size)
        mine = cores[ranks.local_rank * share : (ranks.local_rank + 1) * share] or cores[-share:]
        return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, mine))}

    def summary(self) -> dict[str, Any]:
        """What a phase's record keeps about the engine (empty with transformers)."""
        return {} if self.engine is None else {"vllm_engine": self.engine.summary()}

    def before_training(self) -> None:
        """A training phase begins: stop the engine if ``vllm.stop_while_training`` asks for its memory
        (the next :meth:`open` starts a new one)."""
        if self.settings.vllm.stop_while_training:
            self.close()

    def close(self) -> None:
        """Stop the engine, if one was started."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None
