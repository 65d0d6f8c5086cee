"""Preference pairs for the reasoner, and the collator that turns them into padded training batches."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from sapo.data.steps import DEFAULT_SEPARATOR, encode_steps
from sapo.data.trajectory import TrajectoryFormatError, iter_jsonl

__all__ = ["IGNORE_INDEX", "PairCollator", "PreferencePair", "read_pairs"]

#: label value of tokens that carry no loss (prompt tokens, padding); the value torch's cross-entropy skips
IGNORE_INDEX = -100


@dataclass
class PreferencePair:
    """A prompt with a chosen solution and, optionally, a rejected one (without it the pair is plain SFT).

    ``rejected_first_error``, when set, is the index of the rejected side's first wrong step: the preference
    term then sees the rejected side only from that step on (:class:`PairCollator`), so the right steps
    before it are not pushed down with the error.
    """

    question_id: str
    prompt: str
    chosen: list[str]
    rejected: list[str] | None = None
    margin: float | None = None
    rejected_first_error: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "pair") -> PreferencePair:
        """The pair a :meth:`to_dict` record holds; a malformed record raises an error naming ``where``."""
        if not isinstance(data, dict):
            raise TrajectoryFormatError(f"{where}: expected an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        missing = [name for name in ("question_id", "prompt", "chosen") if name not in data]
        unknown = sorted(set(data) - known)
        if missing or unknown:
            raise TrajectoryFormatError(
                f"{where}: "
                + "; ".join(
                    ([f"missing field(s) {missing}"] if missing else [])
                    + ([f"unknown field(s) {unknown}"] if unknown else [])
                )
            )
        first_error = data.get("rejected_first_error")
        if first_error is not None:
            rejected = data.get("rejected")
            if rejected is None:
                raise TrajectoryFormatError(
                    f"{where}: rejected_first_error {first_error!r} without a rejected side"
                )
            if (
                isinstance(first_error, bool)
                or not isinstance(first_error, int)
                or not 0 <= first_error < len(rejected)
            ):
                raise TrajectoryFormatError(
                    f"{where}: rejected_first_error must be a step index of the rejected side (0 to "
                    f"{len(rejected) - 1}), got {first_error!r}"
                )
        return cls(**data)


def read_pairs(path: str | os.PathLike[str]) -> list[PreferencePair]:
    """The pairs of a JSONL file (one :meth:`PreferencePair.to_dict` record a line; write them with
    :func:`sapo.data.trajectory.write_jsonl`); errors name the file and line."""
    return [
        PreferencePair.from_dict(data, where=f"{path}, line {lineno}") for lineno, data in iter_jsonl(path)
    ]


class PairCollator:
    """Tokenises pairs into right-padded batches; prompt tokens and padding get ``IGNORE_INDEX`` labels.

    Each side is ``prompt + steps`` (every step followed by the separator) and then the EOS token, so the
    model learns to stop after the answer step. Batches are padded to their longest sequence.

    A pair with ``rejected_first_error = e`` labels its rejected side only from step ``e`` on: the steps
    before it stay in the input, as context, and carry no loss, so the rejected side's log-probability is
    ``log P(y_l[e:] | x, y_l[:e])``. Where truncation cut step ``e`` off, nothing of the error is left to
    push down, and the row counts as having no rejected side (``has_rejected`` False).

    A batch where some pair has a rejected side carries ``has_rejected`` (one flag per row) and, when any flag
    is set, ``rejected_input_ids``, ``rejected_attention_mask`` and ``rejected_labels`` with one row per set
    flag, in row order.
    """

    def __init__(self, tokenizer: Any, separator: str = DEFAULT_SEPARATOR, max_length: int = 1024) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; set one (for example the EOS token) before collating"
            )
        self.tokenizer = tokenizer
        self.separator = separator
        self.max_length = max_length

    def encode(self, prompt: str, steps: Sequence[str], from_step: int = 0) -> tuple[list[int], list[int]]:
        """Token ids and labels of one side; the EOS is dropped when the text fills ``max_length``.

        Tokens before step ``from_step`` get ``IGNORE_INDEX`` labels; they all do when truncation cut off
        a step before ``from_step``, whose tokens are then not all in the text."""
        enc = encode_steps(self.tokenizer, prompt, steps, self.separator, max_length=self.max_length)
        ids = list(enc.input_ids)
        if len(ids) < self.max_length and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        start = enc.prompt_length
        if from_step > 0:
            if any(j < from_step for j in enc.truncated):
                start = len(ids)
            else:  # after the last token of the last step before from_step that owns one
                start = max((p + 1 for p in enc.positions[:from_step] if p is not None), default=start)
        labels = [IGNORE_INDEX] * start + ids[start:]
        return ids, labels

    def pad(self, rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, labs) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(labs)] = torch.tensor(labs)
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def __call__(self, pairs: Sequence[PreferencePair]) -> dict[str, torch.Tensor]:
        batch = {
            f"chosen_{k}": v for k, v in self.pad([self.encode(p.prompt, p.chosen) for p in pairs]).items()
        }
        if any(p.rejected is not None for p in pairs):
            encoded = [
                self.encode(p.prompt, p.rejected, p.rejected_first_error or 0)
                if p.rejected is not None
                else None
                for p in pairs
            ]
            has_rejected = [
                side is not None and any(label != IGNORE_INDEX for label in side[1]) for side in encoded
            ]
            batch["has_rejected"] = torch.tensor(has_rejected)
            # Only the rows that have a rejected side are padded into the rejected tensors, in row order,
            # so that a model computes no rejected side for an SFT row.
            rejected = [side for side, has in zip(encoded, has_rejected, strict=True) if has]
            if rejected:
                batch.update({f"rejected_{k}": v for k, v in self.pad(rejected).items()})
        return batch
