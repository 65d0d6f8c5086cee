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
    """A prompt with a chosen solution and, optionally, a rejected one (without it the pair is plain SFT)."""

    question_id: str
    prompt: str
    chosen: list[str]
    rejected: list[str] | None = None
    margin: float | None = None

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
    """

    def __init__(self, tokenizer: Any, separator: str = DEFAULT_SEPARATOR, max_length: int = 1024) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; set one (for example the EOS token) before collating"
            )
        self.tokenizer = tokenizer
        self.separator = separator
        self.max_length = max_length

    def encode(self, prompt: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids and labels of one side; the EOS is dropped when the text fills ``max_length``."""
        enc = encode_steps(self.tokenizer, prompt, steps, self.separator, max_length=self.max_length)
        ids = list(enc.input_ids)
        if len(ids) < self.max_length and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        labels = [IGNORE_INDEX] * enc.prompt_length + ids[enc.prompt_length :]
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
        has_rejected = [p.rejected is not None for p in pairs]
        if any(has_rejected):
            # Rows without a rejected side repeat their chosen side; ``has_rejected`` keeps them out of the
            # odds-ratio term, so they are trained with the NLL only.
            rejected = [
                self.encode(p.prompt, p.rejected if p.rejected is not None else p.chosen) for p in pairs
            ]
            batch.update({f"rejected_{k}": v for k, v in self.pad(rejected).items()})
            batch["has_rejected"] = torch.tensor(has_rejected)
        return batch
