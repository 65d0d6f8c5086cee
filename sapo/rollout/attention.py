"""Grouped-query attention without copied keys and values: the attention ``generate`` decodes with on a CPU.

SmolLM2, Llama 3, Qwen2 and Mistral share each key/value head among several query heads (grouped-query
attention). transformers' eager attention first copies every key/value head once per query head of its group
(``repeat_kv``), and its sdpa attention hands decoding (one query per row) to a CPU kernel that is slow at
one query. :func:`grouped_eager_attention` computes the same thing with the query heads of a group stacked
instead, so the cached keys and values are read in place.

Measured on 2 cores of an AMD EPYC (Zen 5, ``avx512_bf16``), SmolLM2-135M in bfloat16, 32 rows with about
150 cached tokens: one decoding step took 117-122 ms under sdpa, 67-79 ms under eager and 50-51 ms under this
implementation (most of the rest is the weights' matrix products). The sampler's calls took 2.4-2.7x less
time than under sdpa with 2-shot prompts (``benchmarks/sampler.py``), the demo's draws of samples 1.6x
less. See docs/rollouts.md.

:func:`resolve_decode_attention` says which implementation ``generate`` decodes with, and :func:`attention_implementation`
switches a model to it for a block and back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = [
    "DECODE_ATTENTION_CHOICES",
    "GROUPED_EAGER",
    "GROUPED_EAGER_MODEL_TYPES",
    "attention_implementation",
    "attention_names",
    "grouped_eager_attention",
    "register_grouped_eager",
    "resolve_decode_attention",
    "set_attention",
]

#: the name :func:`register_grouped_eager` registers :func:`grouped_eager_attention` under in transformers
GROUPED_EAGER = "sapo_grouped_eager"

#: model types whose attention layers pass nothing to the attention function that it would have to apply
#: itself (no logit soft-capping, no attention sinks): ``"auto"`` uses :data:`GROUPED_EAGER` only for these
GROUPED_EAGER_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})

#: the values ``decode_attention`` takes: ``"auto"``, ``"model"`` (the model's own), or an implementation name
DECODE_ATTENTION_CHOICES = ("auto", "model", GROUPED_EAGER, "eager", "sdpa")


def grouped_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``o_h = softmax(s · q_h K_{g(h)}^T + m) V_{g(h)}`` with ``g(h) = h // (H_q / H_kv)``, transformers' eager
    attention with its key/value heads read in place.

    Shapes: ``query`` [B, H_q, L, D], ``key`` and ``value`` [B, H_kv, T, D], ``attention_mask`` additive
    [B, 1, L, ≥T] (0 or the dtype's lowest value) or None; returns the output as [B, L, H_q, D] and no
    attention weights. The ``H_q / H_kv`` query heads of group ``g`` become ``G·L`` rows of one matrix
    product with that group's keys, in the order ``repeat_kv`` pairs them, so each output equals eager's.
    """
    for name in ("softcap", "s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"{GROUPED_EAGER} does not apply {name!r}, which {type(module).__name__} passes; "
                "use the model's own attention implementation"
            )
    batch, query_heads, length, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    group = query_heads // kv_heads
    stacked = query.reshape(batch, kv_heads, group * length, dim)
    weights = torch.matmul(stacked, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        mask = attention_mask[:, :, None, :, :keys]  # [B, 1, 1, L, T] against [B, H_kv, G, L, T]
        weights = (weights.view(batch, kv_heads, group, length, keys) + mask).view_as(weights)
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).view(batch, query_heads, length, dim)
    return output.transpose(1, 2).contiguous(), None


def register_grouped_eager() -> str:
    """Register :func:`grouped_eager_attention` (with eager's additive mask) in transformers' attention
    registries under :data:`GROUPED_EAGER`; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(GROUPED_EAGER, grouped_eager_attention)  # idempotent
    AttentionMaskInterface.register(GROUPED_EAGER, eager_mask)
    return GROUPED_EAGER


def attention_names() -> list[str]:
    """Every attention implementation a model can be set to: ``eager``, the ones transformers has
    registered (sdpa, flash attention, flex attention) and :data:`GROUPED_EAGER`."""
    from transformers import AttentionInterface

    return sorted({"eager", GROUPED_EAGER, *AttentionInterface()})


def _implementation(model: Any) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def resolve_decode_attention(model: Any, requested: str = "auto") -> str | None:
    """The attention implementation ``generate`` should decode ``model`` with (None: leave it as it is).

    ``"auto"``: :data:`GROUPED_EAGER` on a CPU for the model types of :data:`GROUPED_EAGER_MODEL_TYPES` (the
    measurement in the module's docstring); elsewhere the model's own (sdpa and flash attention are the fast
    ones on a GPU). ``"model"``: the model's own. Any other name of :data:`DECODE_ATTENTION_CHOICES`: that one.
    """
    if requested not in DECODE_ATTENTION_CHOICES:
        raise ValueError(f"decode_attention must be one of {DECODE_ATTENTION_CHOICES}, got {requested!r}")
    if requested == "model" or _implementation(model) is None:
        return None
    if requested == "auto":
        device = getattr(model, "device", torch.device("cpu"))
        model_type = getattr(model.config, "model_type", None)
        if torch.device(device).type != "cpu" or model_type not in GROUPED_EAGER_MODEL_TYPES:
            return None
        return GROUPED_EAGER
    return requested


def set_attention(model: Any, name: str) -> None:
    """Set ``model``'s attention implementation to ``name``, registering :data:`GROUPED_EAGER` first."""
    if name == GROUPED_EAGER:
        register_grouped_eager()
    model.set_attn_implementation(name)


@contextmanager
def attention_implementation(model: Any, name: str | None) -> Iterator[None]:
    """Run the block with ``model``'s attention set to ``name`` (:func:`set_attention`), then set it back;
    ``None`` or the model's own name changes nothing."""
    previous = _implementation(model)
    if name is None or name == previous:
        yield
        return
    set_attention(model, name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
