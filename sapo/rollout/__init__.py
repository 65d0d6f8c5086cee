"""Generation: batched, seeded, costed sampling of trajectories and of continuations from step prefixes, and
step-level tree search pruned by a verifier."""

from sapo.rollout.attention import GROUPED_EAGER, grouped_eager_attention
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
from sapo.rollout.tree_search import (
    SearchNode,
    SearchRound,
    StepBeamSearch,
    StepMCTS,
    StepProposer,
    StepTreeSearch,
    step_stop_rule,
)
from sapo.rollout.vllm_backend import VLLMBackend, VLLMEngine, VLLMEngineError, VLLMOptions, vllm_available

__all__ = [
    "FROM_TASK",
    "GROUPED_EAGER",
    "Generation",
    "GenerationBackend",
    "Sampler",
    "SearchNode",
    "SearchRound",
    "StepBeamSearch",
    "StepMCTS",
    "StepProposer",
    "StepTreeSearch",
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
    "grouped_eager_attention",
    "shared_prefill",
    "step_stop_rule",
    "task_stop_rule",
    "vllm_available",
]
