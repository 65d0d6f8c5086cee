"""The learning-rate schedule the models share: linear warm-up, then linear decay to zero (SIPF's schedule)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import torch

__all__ = ["linear_warmup_decay", "linear_warmup_decay_scheduler", "adamw_with_linear_warmup_decay"]


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


def adamw_with_linear_warmup_decay(
    parameters: Iterable[torch.nn.Parameter],
    learning_rate: float,
    weight_decay: float,
    warmup_ratio: float,
    total_steps: int,
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: AdamW over ``parameters`` stepped with the schedule each step."""
    optimizer = torch.optim.AdamW(list(parameters), lr=learning_rate, weight_decay=weight_decay)
    scheduler = linear_warmup_decay_scheduler(optimizer, total_steps, warmup_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
