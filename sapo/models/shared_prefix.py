"""Both sides of a preference pair in one pass, their common prefix computed once.

A pair's chosen and rejected sides begin with the same tokens: the prompt (on the demo's arithmetic task 110
of a side's 146 tokens), and, where the rejected side goes wrong only after some right steps, those too. Two
passes compute that prefix twice. :func:`shared_prefix_batch` lays each row out as its chosen side followed by
the rejected side's tokens after the common prefix (its *tail*), and builds the attention mask and positions
under which every token sees exactly what it would see in its own side's pass:

* a chosen token attends causally to the chosen side, as in the chosen pass;
* a tail token attends to the common prefix and causally to the tail, never to the chosen side's tokens
  after the prefix, and takes the position it has in the rejected side.

So the decoder's last hidden states at the chosen positions equal the chosen pass's, and gathered through
:attr:`SharedPrefixBatch.rejected_index` they equal the rejected pass's, up to floating-point rounding: the
same log-probabilities and gradients, for ``len(chosen) + len(tail)`` positions a row instead of
``len(chosen) + len(rejected)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sapo.rollout.attention import GROUPED_EAGER

__all__ = ["SHARED_PREFIX_ATTENTION", "SharedPrefixBatch", "shared_prefix_batch"]

#: attention implementations that take an arbitrary 4D mask: ``sdpa`` a boolean one (True: may attend),
#: ``eager`` and sapo's grouped eager an additive one (0 or the dtype's lowest value); others (flash
#: attention, flex) do not
SHARED_PREFIX_ATTENTION = frozenset({"sdpa", "eager", GROUPED_EAGER})


@dataclass
class SharedPrefixBatch:
    """The joint layout of a batch (see the module's docstring).

    Attributes:
        input_ids: [B, W] each row's chosen side, then its rejected side's tail, then padding.
        position_ids: [B, W] every token's position in its own side.
        allowed: [B, W, W] True where query ``i`` may attend to key ``j``. No token attends to padding; a
            padding position attends at least to itself, so that no row of the attention is empty (an empty
            one would make NaNs that the backward pass spreads).
        chosen_width: the chosen tensors' width: ``hidden[:, :chosen_width]`` is the chosen side.
        rejected_rows: [n] the batch row of each rejected side (the rows flagged in ``has_rejected``).
        rejected_index: [n, Wr] for each rejected side and each of its positions (padding included), the
            joint position holding it: ``hidden[rejected_rows[:, None], rejected_index]`` is the rejected side.
        shared: [n] tokens each rejected side shares with its row's chosen side (computed once).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    allowed: torch.Tensor
    chosen_width: int
    rejected_rows: torch.Tensor
    rejected_index: torch.Tensor
    shared: torch.Tensor

    def attention_mask(self, implementation: str, dtype: torch.dtype) -> torch.Tensor:
        """The [B, 1, W, W] mask ``implementation`` takes (one of :data:`SHARED_PREFIX_ATTENTION`)."""
        if implementation == "sdpa":
            return self.allowed[:, None]
        if implementation in ("eager", GROUPED_EAGER):
            blocked = torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device)
            return blocked.masked_fill_(~self.allowed, torch.finfo(dtype).min)[:, None]
        raise ValueError(
            f"attention implementation {implementation!r} takes no custom 4D mask; "
            f"shared prefixes need one of {sorted(SHARED_PREFIX_ATTENTION)}"
        )


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest common prefix of two 1D token tensors."""
    n = min(a.numel(), b.numel())
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if differ.numel() else n


def shared_prefix_batch(
    chosen_ids: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_ids: torch.Tensor,
    rejected_mask: torch.Tensor,
    has_rejected: torch.Tensor,
) -> SharedPrefixBatch:
    """The joint layout of right-padded chosen sides [B, Wc] and the rejected sides [n, Wr] of the rows
    flagged in ``has_rejected`` [B], in row order (:class:`~sapo.data.preference.PairCollator`'s batch)."""
    device = chosen_ids.device
    rows = has_rejected.to(device).nonzero(as_tuple=True)[0]
    if rows.numel() != rejected_ids.shape[0]:
        raise ValueError(
            f"{rows.numel()} rows are flagged in has_rejected but the batch holds {rejected_ids.shape[0]} "
            "rejected sides"
        )
    chosen_lengths = chosen_mask.sum(-1).tolist()
    rejected_lengths = rejected_mask.sum(-1).tolist()
    pair_of_row = {row: k for k, row in enumerate(rows.tolist())}  # row: its rejected side
    shared = [
        _common_prefix(chosen_ids[row, : chosen_lengths[row]], rejected_ids[k, : rejected_lengths[k]])
        for row, k in pair_of_row.items()
    ]
    tail_lengths = [rejected_lengths[k] - shared[k] for k in range(len(shared))]
    lengths = [
        n + (tail_lengths[pair_of_row[row]] if row in pair_of_row else 0)
        for row, n in enumerate(chosen_lengths)
    ]
    batch, width = chosen_ids.shape[0], max(max(lengths), chosen_ids.shape[1])
    input_ids = torch.zeros(batch, width, dtype=chosen_ids.dtype, device=device)
    position_ids = torch.arange(width, device=device).repeat(batch, 1)
    valid = torch.zeros(batch, width, dtype=torch.bool, device=device)
    tail_start = torch.full((batch,), width, device=device)  # no tail: past the end
    prefix_end = torch.full((batch,), width, device=device)
    rejected_index = torch.zeros(rejected_ids.shape, dtype=torch.long, device=device)
    for row in range(batch):
        n_chosen = chosen_lengths[row]
        input_ids[row, :n_chosen] = chosen_ids[row, :n_chosen]
        valid[row, : lengths[row]] = True
        if row not in pair_of_row:
            continue
        k = pair_of_row[row]
        n_shared, end = shared[k], n_chosen + tail_lengths[k]
        input_ids[row, n_chosen:end] = rejected_ids[k, n_shared : rejected_lengths[k]]
        position_ids[row, n_chosen:end] = torch.arange(n_shared, rejected_lengths[k], device=device)
        tail_start[row], prefix_end[row] = n_chosen, n_shared
        rejected_index[k, :n_shared] = torch.arange(n_shared, device=device)
        rejected_index[k, n_shared : rejected_lengths[k]] = torch.arange(n_chosen, end, device=device)
    index = torch.arange(width, device=device)
    causal = index[None, :] <= index[:, None]  # [query, key]
    query_in_tail = index[None, :] >= tail_start[:, None]  # [B, W]
    key_chosen_only = (index[None, :] >= prefix_end[:, None]) & (index[None, :] < tail_start[:, None])
    allowed = causal[None] & valid[:, None, :] & ~(query_in_tail[:, :, None] & key_chosen_only[:, None, :])
    allowed |= torch.eye(width, dtype=torch.bool, device=device)[None]
    return SharedPrefixBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        allowed=allowed,
        chosen_width=chosen_ids.shape[1],
        rejected_rows=rows,
        rejected_index=rejected_index,
        shared=torch.tensor(shared, dtype=torch.long, device=device),
    )
