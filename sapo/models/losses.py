"""Losses as short functions; each docstring gives the equation it implements."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sapo.data.preference import IGNORE_INDEX

__all__ = ["chunked_labelled_logprob", "sequence_logprob", "log1mexp", "orpo_loss", "dpo_loss"]

#: elements per chunk of :class:`LabelledTokenLogprob`'s backward pass (2**24 float32 values: 64 MiB)
BACKWARD_CHUNK_ELEMENTS = 2**24

#: labelled positions per chunk of :func:`chunked_labelled_logprob`: 512 x 49152 float32 logits are 100 MB,
#: and 512 rows still keep the head's matrix product efficient
LOGPROB_CHUNK_TOKENS = 512


class LabelledTokenLogprob(torch.autograd.Function):
    """``log p(y_t) = -softplus(log sum_{v != y} exp(z_v) - z_y)`` at labelled positions, in float32 or wider.

    It equals ``z_y - logsumexp(z)``, but that difference cancels when ``p(y)`` is near 1: both terms are
    about the size of the logits (20 or more for a confident model), so float32 rounding leaves an absolute
    error near 1e-6, as large as ``log p`` itself, and ORPO's ``log(1 - p)`` then takes the logarithm of
    that error. This form builds the small ``sum_{v != y} exp(z_v - z_y)`` directly, and softplus
    (``log(1 + exp(.))``) keeps it to float32's relative precision.

    The gradient is written out, ``d log p(y) / d z_v = 1[v = y] - softmax(z)_v``, with ``1 - p(y)`` at
    ``v = y`` taken as ``exp(lse_others - lse_all)`` (exact there too). Only labelled positions are copied
    to float32; that copy is the only vocabulary-wide tensor kept for the backward pass, which writes the
    gradient into the logits' gradient chunk by chunk: less peak memory than ``log_softmax`` then
    ``gather`` (8 x 300 tokens, 2/3 labelled, SmolLM2's 49152-token vocabulary, on CPU: 890 MB against
    910 MB with float32 logits, 740 MB against 910 MB with bfloat16 ones), at the same speed.

    Inputs: ``logits`` [B, T, V] (any float dtype), ``targets`` [B, T - 1] and ``mask`` [B, T - 1], where
    logits at ``t`` predict ``targets[:, t]``; returns the ``N = mask.sum()`` token log-probabilities in
    row-major order of ``mask``.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # boolean indexing copies, so ``selected`` is ours to overwrite; float32 at least (float64 stays)
        selected = logits[:, :-1][mask].to(torch.promote_types(logits.dtype, torch.float32))
        target = targets[mask].unsqueeze(1)
        token_logp, others, lse_all, lse_others = _rows_logprob(selected, target)
        ctx.save_for_backward(others, target, mask, lse_all, lse_others)
        ctx.logits_shape, ctx.logits_dtype = logits.shape, logits.dtype
        return token_logp

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        others, target, mask, lse_all, lse_others = ctx.saved_tensors
        grad_logits = others.new_zeros(ctx.logits_shape, dtype=ctx.logits_dtype)
        batch_index, position = mask.nonzero(as_tuple=True)
        one_minus_p = (lse_others - lse_all).exp()
        # In chunks of rows, so that no second [N, V] tensor is made (and the saved copy stays intact).
        rows = max(1, BACKWARD_CHUNK_ELEMENTS // max(1, others.shape[1]))
        for start in range(0, others.shape[0], rows):
            part = slice(start, start + rows)
            chunk = _rows_logprob_grad(
                others[part], target[part], lse_all[part], one_minus_p[part], grad[part]
            )
            grad_logits[batch_index[part], position[part]] = chunk.to(ctx.logits_dtype)
        return grad_logits, None, None


def _rows_logprob(selected: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:class:`LabelledTokenLogprob`'s forward on rows ``selected`` [N, V] (float32 or wider, overwritten:
    it becomes ``others``, the logits with the target's set to -inf) and ``target`` [N, 1]; returns
    ``(log p [N], others, lse_all, lse_others)``."""
    lse_all = selected.logsumexp(-1)
    target_logit = selected.gather(1, target).squeeze(1)
    others = selected.scatter_(1, target, float("-inf"))
    lse_others = others.logsumexp(-1)
    return -F.softplus(lse_others - target_logit), others, lse_all, lse_others


def _rows_logprob_grad(
    others: torch.Tensor,
    target: torch.Tensor,
    lse_all: torch.Tensor,
    one_minus_p: torch.Tensor,
    grad: torch.Tensor,
) -> torch.Tensor:
    """Gradient of :func:`_rows_logprob`'s ``log p`` w.r.t. its rows' logits, as a new tensor like ``others``."""
    # -softmax(z)_v * grad for v != y (exp(-inf) = 0 at y), then (1 - p(y)) * grad at y
    chunk = (others - lse_all.unsqueeze(1)).exp_().mul_(-grad.unsqueeze(1))
    return chunk.scatter_(1, target, (grad * one_minus_p).unsqueeze(1))


class _RowTokenLogprob(torch.autograd.Function):
    """:class:`LabelledTokenLogprob` on logits already gathered to rows: ``logits`` [N, V], ``targets`` [N];
    returns the N token log-probabilities, by the same arithmetic."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(logits.dtype, torch.float32)
        # a copy in every case: _rows_logprob overwrites it, and the logits are the caller's
        selected = logits.to(wide, copy=True)
        target = targets.unsqueeze(1)
        token_logp, others, lse_all, lse_others = _rows_logprob(selected, target)
        ctx.save_for_backward(others, target, lse_all, lse_others)
        ctx.logits_dtype = logits.dtype
        return token_logp

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        others, target, lse_all, lse_others = ctx.saved_tensors
        one_minus_p = (lse_others - lse_all).exp()
        return _rows_logprob_grad(others, target, lse_all, one_minus_p, grad).to(ctx.logits_dtype), None


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-averaged log-probability of each sequence's labelled tokens.

    ``log P(y|x) = (1/|y|) * sum_t log p(y_t | x, y_<t)`` over positions whose label is not ``IGNORE_INDEX``;
    logits at position ``t`` predict the label at ``t + 1``. Returns ``(mean log-prob [B], token count [B])``;
    a sequence with no labelled token gets log-prob 0 and count 0. ``log p`` is
    :class:`LabelledTokenLogprob`, exact in float32 even when ``p`` is within 1e-6 of 1.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    # Only labelled positions go through the vocabulary-wide reduction: prompts and padding are most of a
    # batch, and the float32 copy of every position's logits is the largest tensor of a training step.
    return _sequence_means(LabelledTokenLogprob.apply(logits, targets, mask), mask)


def _sequence_means(token_logp: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean of ``token_logp`` (row-major order of ``mask`` [B, T - 1]) and per-row token counts."""
    rows = mask.nonzero(as_tuple=True)[0]
    counts = mask.sum(-1)
    summed = torch.zeros(mask.shape[0], dtype=token_logp.dtype, device=token_logp.device).index_add(
        0, rows, token_logp
    )
    return summed / counts.clamp(min=1), counts


def chunked_labelled_logprob(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    chunk_tokens: int = LOGPROB_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_logprob` of ``logits = head(hidden)`` without making the [B, T, V] logits.

    ``hidden`` [B, T, H] are the last hidden states (after the final norm), ``head`` maps [n, H] to [n, V]
    logits (the LM head module, so its hooks and adapters apply). The head runs only at the positions
    whose next label is not ``IGNORE_INDEX``, ``chunk_tokens`` of them at a time, each chunk under
    non-reentrant checkpointing: at most one chunk's [n, V] logits exist at once, in forward and in
    backward, which recomputes them. Gradients reach ``hidden`` and the head's parameters (tied or not).
    Returns ``(mean log-prob [B], token count [B])``, equal to ``sequence_logprob(head(hidden), labels)``:
    ``log p`` is the same arithmetic as :class:`LabelledTokenLogprob`.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    selected, target = hidden[:, :-1][mask], targets[mask]  # [N, H], [N]

    def chunk_logp(part: torch.Tensor, part_target: torch.Tensor) -> torch.Tensor:
        return _RowTokenLogprob.apply(head(part), part_target)

    # max(1, N): a batch with no labelled token still gets one (empty) chunk, so the result has a graph
    parts = [
        checkpoint(
            chunk_logp,
            selected[start : start + chunk_tokens],
            target[start : start + chunk_tokens],
            use_reentrant=False,
        )
        for start in range(0, max(1, selected.shape[0]), chunk_tokens)
    ]
    return _sequence_means(torch.cat(parts), mask)


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

    ``log P(y_l)`` averages over whichever of the rejected side's tokens carry labels: the whole completion,
    or, for a pair that marks the rejected side's first wrong step ``e``, its tokens from step ``e`` on
    (:class:`~sapo.data.preference.PairCollator`), which makes the term
    ``log sigmoid(log odds(y_w | x) - log odds(y_l[e:] | x, y_l[:e]))``.
    """
    if has_rejected is None:
        has_rejected = torch.ones_like(chosen_logp, dtype=torch.bool)
    nll = -chosen_logp.mean()
    # rows without a rejected side are left out before the odds: their rejected entry may be a placeholder
    chosen, rejected = chosen_logp[has_rejected], rejected_logp[has_rejected]
    log_odds = (chosen - log1mexp(chosen)) - (rejected - log1mexp(rejected))
    ratio_term = F.logsigmoid(log_odds).mean() if log_odds.numel() else nll.new_zeros(())
    loss = nll - weight * ratio_term
    pairs = has_rejected.float().sum().clamp(min=1)
    return loss, {
        "nll": nll.detach(),
        "or_loss": -ratio_term.detach(),
        "log_odds_ratio": log_odds.sum().detach() / pairs,
        "chosen_logp": chosen_logp.mean().detach(),
        "rejected_logp": rejected.sum().detach() / pairs,
        "reward_accuracy": (chosen > rejected).float().sum().detach() / pairs,
    }


def dpo_loss(
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    reference_chosen_logp: torch.Tensor,
    reference_rejected_logp: torch.Tensor,
    beta: float = 0.1,
    has_rejected: torch.Tensor | None = None,
    chosen_nll: torch.Tensor | None = None,
    sft_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023), with RPO's optional SFT term (Pang et al. 2024):
    ``L = -mean over pairs of log sigmoid(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log
    pi_ref(y_l))]) + sft_weight * NLL(y_w)``.

    Unlike ORPO's, the log-probabilities are summed over a sequence's labelled tokens, ``log pi(y|x) = sum_t
    log p(y_t | x, y_<t)``, for the policy and for the frozen reference ``pi_ref`` (constants: computed
    without gradient). ``beta * (log pi(y) - log pi_ref(y))`` is a side's implicit reward; beta = 0.1 is the
    DPO paper's and TRL's default. ``chosen_nll`` is ``NLL(y_w)``, the mean over every row of the chosen
    sides' token-averaged negative log-likelihood; ``sft_weight = 0`` is DPO's own loss. Rows where
    ``has_rejected`` is False contribute to the SFT term only; without pairs the preference term is 0 (with
    a graph). Returns the loss and the terms worth logging, pair terms averaged over the pairs.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if sft_weight < 0:
        raise ValueError(f"sft_weight must be >= 0, got {sft_weight}")
    if sft_weight > 0 and chosen_nll is None:
        raise ValueError(f"sft_weight = {sft_weight} needs chosen_nll")
    if has_rejected is None:
        has_rejected = torch.ones_like(policy_chosen_logp, dtype=torch.bool)
    chosen_reward = beta * (policy_chosen_logp - reference_chosen_logp)[has_rejected]
    rejected_reward = beta * (policy_rejected_logp - reference_rejected_logp)[has_rejected]
    margin = chosen_reward - rejected_reward
    pairs = has_rejected.float().sum().clamp(min=1)
    # a sum over pairs, not .mean(): an empty batch of pairs gives 0 (with a graph), not NaN
    preference = -F.logsigmoid(margin).sum() / pairs
    loss = preference if chosen_nll is None else preference + sft_weight * chosen_nll
    terms = {"dpo_loss": preference.detach()}
    if chosen_nll is not None:
        terms["nll"] = chosen_nll.detach()
    return loss, terms | {
        "chosen_reward": chosen_reward.sum().detach() / pairs,
        "rejected_reward": rejected_reward.sum().detach() / pairs,
        "reward_margin": margin.sum().detach() / pairs,
        "reward_accuracy": (margin > 0).float().sum().detach() / pairs,
    }
