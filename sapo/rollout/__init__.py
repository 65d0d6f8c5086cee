"""Generation: batched, seeded, costed sampling of trajectories and of continuations from step prefixes."""

from sapo.rollout.generate import (
    Generation,
    StopRule,
    as_stop_rule,
    derive_seed,
    generate_batched,
    shared_prefill,
)
from sapo.rollout.sampler import (
    FROM_TASK,
    GenerationBackend,
    Sampler,
    TaskRolloutSampler,
    TransformersBackend,
    deduplicate,
    task_stop_rule,
)
from sapo.rollout.vllm_backend import VLLMBackend, VLLMEngine, VLLMEngineError, VLLMOptions, vllm_available

__all__ = [
    "FROM_TASK",
    "Generation",
    "GenerationBackend",
    "Sampler",
    "StopRule",
    "TaskRolloutSampler",
    "TransformersBackend",
    "VLLMBackend",
    "VLLMEngine",
    "VLLMEngineError",
    "VLLMOptions",
    "as_stop_rule",
    "deduplicate",
    "derive_seed",
    "generate_batched",
    "shared_prefill",
    "task_stop_rule",
    "vllm_available",
]
