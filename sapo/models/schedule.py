"""The optimizer and learning-rate schedule the models share: AdamW; linear warm-up, then linear decay to zero
(SIPF's schedule)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import torch

from sapo.models.optim import BFloat16MomentAdamW

__all__ = [
    "MOMENT_DTYPES",
    "adamw",
    "adamw_with_linear_warmup_decay",
    "check_moment_dtype",
    "linear_warmup_decay",
    "linear_warmup_decay_scheduler",
]


def linear_warmup_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate multiplier at optimiser step ``step`` (0-based).

    ``m(t) = (t + 1) / (W + 1)`` for ``t < W`` (warm-up), then ``m(t) = max(0, (T - t) / max(1, T - W))``
    (linear decay to 0 at ``t = T``), with ``W`` warm-up steps out of ``T`` in all.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def linear_warmup_decay_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step :class:`~torch.optim.lr_scheduler.LambdaLR` of :func:`linear_warmup_decay` with
    ``W = floor(warmup_ratio * T)``, at least 1 when ``warmup_ratio > 0``, and ``T = max(1, total_steps)``.

    The floor of one: a short round (4 steps at a ratio of 0.1) would otherwise start at the peak rate
    with a fresh AdamW, whose first updates move every weight by about the learning rate; measured on the
    demo, 4 such steps from a converged SFT model cut its held-out accuracy from 21% to 6%."""
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    total = max(1, int(total_steps))
    warmup = max(1, int(warmup_ratio * total)) if warmup_ratio > 0 else 0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(linear_warmup_decay, warmup_steps=warmup, total_steps=total)
    )


#: devices whose parameters AdamW's fused kernel takes
FUSED_ADAMW_DEVICES = ("cpu", "cuda")

#: how AdamW may store its two moments: as the parameters (float32 master weights), or in bfloat16
#: (:class:`~sapo.models.optim.BFloat16MomentAdamW`)
MOMENT_DTYPES = ("float32", "bfloat16")


def check_moment_dtype(moment_dtype: str) -> None:
    """Refuse a ``moment_dtype`` that is not one of :data:`MOMENT_DTYPES`, naming it."""
    if moment_dtype not in MOMENT_DTYPES:
        raise ValueError(f"moment_dtype must be one of {MOMENT_DTYPES}, got {moment_dtype!r}")


def adamw(
    parameters: Iterable[torch.nn.Parameter],
    learning_rate: float,
    weight_decay: float,
    moment_dtype: str = "float32",
) -> torch.optim.Optimizer:
    """AdamW over ``parameters``. With ``moment_dtype="float32"``, ``torch.optim.AdamW``, fused (one kernel per
    parameter) where every parameter is a floating-point tensor on a CPU or CUDA device, else torch's default
    (multi-tensor) implementation; the same update either way. With ``"bfloat16"``,
    :class:`~sapo.models.optim.BFloat16MomentAdamW`: the same update from half the optimizer state, its moments
    stochastically rounded, at a slower step.

    torch's default implementation makes temporaries the size of all the parameters at each step (0.5 GiB for
    135M float32 weights) and its step took several times longer on a CPU (``benchmarks/optimizer_step.py``);
    transformers' Trainer, and so TRL, uses the fused kernel by default. A fused AdamW may take a gradient
    scaler's scale into its step instead of having the gradients unscaled first, and Lightning's mixed
    precision then refuses to clip gradients (the recipes clip at 1.0); so this one declines that offer: a
    scaler (16-bit mixed precision) unscales the gradients before the step, as for any optimizer, and clipping
    sees them unscaled.
    """
    check_moment_dtype(moment_dtype)
    parameters = list(parameters)
    if moment_dtype == "bfloat16":
        return BFloat16MomentAdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    fused = all(p.is_floating_point() and p.device.type in FUSED_ADAMW_DEVICES for p in parameters)
    optimizer = torch.optim.AdamW(
        parameters, lr=learning_rate, weight_decay=weight_decay, fused=fused or None
    )
    if fused:  # unscaled before the step, then clipped (the docstring)
        optimizer._step_supports_amp_scaling = False
    return optimizer


def adamw_with_linear_warmup_decay(
    parameters: Iterable[torch.nn.Parameter],
    learning_rate: float,
    weight_decay: float,
    warmup_ratio: float,
    total_steps: int,
    moment_dtype: str = "float32",
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: :func:`adamw` over ``parameters`` stepped with the schedule each
    step."""
    optimizer = adamw(parameters, learning_rate, weight_decay, moment_dtype)
    scheduler = linear_warmup_decay_scheduler(optimizer, total_steps, warmup_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
