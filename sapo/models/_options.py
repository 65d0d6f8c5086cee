"""The loading options of a backbone: pad token, device, LoRA, 4-bit quantisation, gradient checkpointing.

:func:`_apply_options` applies a :class:`~sapo.models.backbone.BackboneSpec`'s options to a loaded model in
the order peft expects; the other helpers are its parts, the check for fast bfloat16, and the checks for
optional packages and transformers versions.
"""

from __future__ import annotations

import copy
import importlib.util
from typing import TYPE_CHECKING

import torch
import transformers
from packaging.version import Version
from transformers import PreTrainedModel

from sapo.rollout.attention import set_attention

if TYPE_CHECKING:
    from sapo.models.backbone import BackboneSpec, LoraSettings


def _apply_options(model: PreTrainedModel, tokenizer, spec: BackboneSpec, dtype: torch.dtype):
    """Pad token, attention, device, gradient checkpointing, 4-bit training fix and LoRA, in the order peft
    expects."""
    _ensure_pad_token(model, tokenizer)
    if spec.attention is not None:
        set_attention(model, spec.attention)
    if not spec.load_in_4bit:
        model.to(spec.device)
    if spec.load_in_4bit and spec.device.startswith("cpu"):
        _keep_4bit_cpu_layers_trainable(model)
    if spec.load_in_4bit and spec.lora is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=spec.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif spec.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    if spec.gradient_checkpointing:
        model.config.use_cache = False
    if spec.lora is not None:
        model = _add_lora(model, spec.lora)
    return model


def _ensure_pad_token(model: PreTrainedModel, tokenizer) -> None:
    """Batching needs a pad token; models without one pad with end-of-sequence (the usual convention)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def _enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant checkpointing works with frozen inputs (LoRA) without ``enable_input_require_grads``.

    transformers 5.x renamed the method and its keyword; the old name warns and goes away in v6.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _add_lora(model: PreTrainedModel, settings: LoraSettings):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _four_bit_config(compute_dtype: torch.dtype):
    """NF4 with double quantisation, as in QLoRA."""
    _require_package("bitsandbytes", "load_in_4bit needs bitsandbytes (pip install bitsandbytes)")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )


def _keep_4bit_cpu_layers_trainable(model: PreTrainedModel) -> None:
    """Work around a bitsandbytes 0.50 CPU bug that silently breaks QLoRA training after any generation.

    On CPUs with avx512_bf16, ``Linear4bit.forward`` in eval mode without grad re-packs its weight into an
    inference layout whose kernel (``gemv_4bit``) has no backward. Nothing packs it back, so after the
    first ``model.eval(); generate()`` every later backward pass gets wrong (mostly zero) gradients below
    each 4-bit layer. bitsandbytes' own inverse conversion is no cure: without double quantisation it
    leaves the block scales in the packed order, which scrambles every layer wider than one block.

    The hook keeps the training layout (the packed 4-bit data and a shallow copy of its quantisation
    state; packing replaces both rather than changing them in place) and restores it exactly whenever the
    layer runs in training mode or with gradients wanted. Inference keeps the fast packed kernel; the
    cost is a second copy of the 4-bit weights (half a byte per parameter).
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return

    def restore_training_layout(module, args):
        state = getattr(module.weight, "quant_state", None)
        if state is None:
            return
        if not getattr(state, "packing_format_for_cpu", False):
            module._sapo_training_layout = (module.weight.data, copy.copy(state))
            return
        wants_grad = torch.is_grad_enabled() and bool(args) and args[0].requires_grad
        if (module.training or wants_grad) and hasattr(module, "_sapo_training_layout"):
            data, state = module._sapo_training_layout
            module.weight.data, module.weight.quant_state = data, copy.copy(state)

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.register_forward_pre_hook(restore_training_layout)


def computes_bfloat16_fast(device: str) -> bool:
    """Whether ``device`` computes bfloat16 natively: CUDA with bf16 support, or a CPU whose oneDNN has bf16
    kernels (avx512_bf16 or AMX). Elsewhere (an AVX2-only CPU) torch emulates bfloat16, far slower than
    float32 (``benchmarks/emulated_bfloat16.py``)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.startswith("cpu"):
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _dtype_keyword() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56."""
    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _require_package(module: str, message: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(message)


def _require_gguf_package() -> None:
    _require_package("gguf", "reading GGUF files needs the gguf package (pip install gguf)")
