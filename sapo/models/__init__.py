"""Models: the backbone loader (hub, local folder, GGUF, packaged SmolLM2, tiny random) and its options."""

from sapo.models.backbone import (
    PACKAGED_SMOLLM2,
    TINY_RANDOM,
    BackboneSpec,
    LoadedBackbone,
    LoadInfo,
    LoraSettings,
    ModelLoadError,
    computes_bfloat16_fast,
    convert_gguf_to_checkpoint,
    default_cache_dir,
    load_backbone,
    load_tokenizer,
    packaged_smollm2_gguf,
    resolve_dtype,
    tiny_random_config,
)

__all__ = [
    "PACKAGED_SMOLLM2",
    "TINY_RANDOM",
    "BackboneSpec",
    "LoadInfo",
    "LoadedBackbone",
    "LoraSettings",
    "ModelLoadError",
    "computes_bfloat16_fast",
    "convert_gguf_to_checkpoint",
    "default_cache_dir",
    "load_backbone",
    "load_tokenizer",
    "packaged_smollm2_gguf",
    "resolve_dtype",
    "tiny_random_config",
]

from sapo.models.schedule import (
    adamw_with_linear_warmup_decay,
    linear_warmup_decay,
    linear_warmup_decay_scheduler,
)
from sapo.models.verifier import PRMVerifier, step_loss

__all__ += [
    "PRMVerifier",
    "adamw_with_linear_warmup_decay",
    "linear_warmup_decay",
    "linear_warmup_decay_scheduler",
    "step_loss",
]
