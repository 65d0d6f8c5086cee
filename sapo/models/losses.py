"""Losses as short functions; each docstring gives the equation it implements."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sapo.data.preference import IGNORE_INDEX

__all__ = ["sequence_logprob", "log1mexp", "orpo_loss"]


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-averaged log-probability of each sequence's labelled tokens.

    ``log P(y|x) = (1/|y|) * sum_t log p(y_t | x, y_<t)`` over positions whose label is not ``IGNORE_INDEX``;
    logits at position ``t`` predict the label at ``t + 1``. Returns ``(mean log-prob [B], token count [B])``;
    a sequence with no labelled token gets log-prob 0 and count 0.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    # Only labelled positions go through the (vocabulary-wide) log-softmax: prompts and padding are most of
    # a batch, and the float32 copy of every position's logits is the largest tensor of a training step.
    rows = mask.nonzero(as_tuple=True)[0]
    selected = logits[:, :-1][mask].float()
    token_logp = selected.log_softmax(-1).gather(1, targets[mask].unsqueeze(1)).squeeze(1)
    counts = mask.sum(-1)
    summed = torch.zeros(labels.shape[0], dtype=token_logp.dtype, device=token_logp.device).index_add(
        0, rows, token_logp
    )
    return summed / counts.clamp(min=1), counts


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable at both ends (Maechler 2012).

    Uses ``log(-expm1(x))`` for ``x > -log 2`` and ``log1p(-exp(x))`` below; ``x`` is clamped just under 0 so
    that a probability of exactly 1 gives a large finite value instead of ``-inf``.
    """
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    weight: float = 0.1,
    has_rejected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO (Hong et al. 2024): ``L = NLL(y_w) - weight * log sigmoid(log odds(y_w) - log odds(y_l))``.

    ``log odds(y) = log P(y) - log(1 - P(y))`` with ``log P`` token-averaged (:func:`sequence_logprob`) and
    ``log(1 - P)`` from :func:`log1mexp`; ``NLL(y_w) = -mean over the batch of log P(y_w)``. Rows where
    ``has_rejected`` is False contribute to the NLL only (plain SFT). Returns the loss and the terms worth
    logging.
    """
    if has_rejected is None:
        has_rejected = torch.ones_like(chosen_logp, dtype=torch.bool)
    nll = -chosen_logp.mean()
    log_odds = (chosen_logp - log1mexp(chosen_logp)) - (rejected_logp - log1mexp(rejected_logp))
    log_odds = log_odds[has_rejected]
    ratio_term = F.logsigmoid(log_odds).mean() if log_odds.numel() else nll.new_zeros(())
    loss = nll - weight * ratio_term
    pairs = has_rejected.float().sum().clamp(min=1)
    return loss, {
        "nll": nll.detach(),
        "or_loss": -ratio_term.detach(),
        "log_odds_ratio": log_odds.sum().detach() / pairs,
        "chosen_logp": chosen_logp.mean().detach(),
        "rejected_logp": (rejected_logp * has_rejected).sum().detach() / pairs,
        "reward_accuracy": ((chosen_logp > rejected_logp) & has_rejected).float().sum().detach() / pairs,
    }
