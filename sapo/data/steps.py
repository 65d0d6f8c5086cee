"""Step segmentation and the token positions where step labels live.

A step's label sits on the *last token of that step*: the last token that ends inside the step's span in the
text (the span includes the separator that follows the step, so where the tokenizer keeps the separator
with the step, that token is the separator). Positions come from the tokenizer's character offsets of the
whole text, never from tokenising steps one by one, so merges across a separator cannot shift them; a token
that begins inside a step and runs into the next one is never used, because its hidden state would already
have seen the next step. A step with no token of its own (cut off by ``max_length``, or swallowed by a token
that straddles it) has no position and is reported, never given a neighbour's position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_SEPARATOR",
    "StepEncoding",
    "encode_steps",
    "join_steps",
    "normalised_steps",
    "split_steps",
]

DEFAULT_SEPARATOR = "\n"


def split_steps(text: str, separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """Split a completion into steps: pieces between separators, stripped, empty pieces dropped."""
    if not separator:
        raise ValueError("the step separator must be a non-empty string")
    return [piece.strip() for piece in text.split(separator) if piece.strip()]


def join_steps(steps: Sequence[str], separator: str = DEFAULT_SEPARATOR) -> str:
    """The completion text the models see: every step followed by the separator."""
    return "".join(step + separator for step in steps)


@dataclass
class StepEncoding:
    """A tokenised ``prompt + steps`` with one label position per step.

    Attributes:
        input_ids: the token ids of the (possibly truncated) text.
        attention_mask: ones, one per id.
        prompt_length: number of tokens that end at or before the end of the prompt (the part that is not
            the completion; a token straddling the prompt's end counts as completion).
        positions: for each step, the index into ``input_ids`` of its last token, or ``None`` when the step
            has none (see :attr:`unplaced`).
        truncated: indices of steps that lost their position to ``max_length``.
        unplaced: indices of steps whose text lies inside a token that also covers the next step's text.
        text: the full text that was tokenised.
    """

    input_ids: list[int]
    attention_mask: list[int]
    prompt_length: int
    positions: list[int | None]
    truncated: list[int] = field(default_factory=list)
    unplaced: list[int] = field(default_factory=list)
    text: str = ""

    @property
    def placed(self) -> list[tuple[int, int]]:
        """``(step index, token position)`` for every step that has a position."""
        return [(i, p) for i, p in enumerate(self.positions) if p is not None]


def encode_steps(
    tokenizer,
    prompt: str,
    steps: Sequence[str],
    separator: str = DEFAULT_SEPARATOR,
    max_length: int | None = None,
    add_special_tokens: bool = False,
) -> StepEncoding:
    """Tokenise ``prompt + join_steps(steps)`` and find each step's label position from character offsets.

    Step ``j`` spans characters ``[E_{j-1}, E_j)`` of the text (``E_{-1}`` is the end of the prompt, and
    each span ends after the step's separator). Its position is ``max{i : end_i <= E_j}`` over tokens with
    ``end_i > E_{j-1}``: the last token that lies within the step. ``add_special_tokens`` defaults to False
    because prompts built with a chat template already carry their special tokens.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: step positions need character offsets "
            "(return_offsets_mapping), which only fast tokenizers give"
        )
    text = prompt + join_steps(steps, separator)
    ends: list[int] = []  # E_j, the character where step j's span ends
    cursor = len(prompt)
    for step in steps:
        cursor += len(step) + len(separator)
        ends.append(cursor)

    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    input_ids = list(enc["input_ids"])
    # Special tokens added by the tokenizer have offset (0, 0) and belong to no step: give them end -1.
    token_ends = [e if e > s or (s, e) != (0, 0) else -1 for s, e in offsets]

    # Positions are found on the whole text and only then cut, so a step whose last token is cut off is
    # reported as truncated instead of being labelled on a token in its middle.
    positions: list[int | None] = []
    unplaced: list[int] = []
    i = 0  # token cursor: ends are non-decreasing, so one pass serves all steps
    start = len(prompt)
    for j, end in enumerate(ends):
        last = None
        while i < len(token_ends) and token_ends[i] <= end:
            if token_ends[i] > start:
                last = i
            i += 1
        if last is None:
            unplaced.append(j)
        positions.append(last)
        start = end

    truncated: list[int] = []
    if max_length is not None and len(input_ids) > max_length:
        input_ids, token_ends = input_ids[:max_length], token_ends[:max_length]
        truncated = [j for j, p in enumerate(positions) if p is not None and p >= max_length]
        positions = [None if j in truncated else p for j, p in enumerate(positions)]
    prompt_length = sum(1 for e in token_ends if e <= len(prompt))
    return StepEncoding(
        input_ids=input_ids,
        attention_mask=[1] * len(input_ids),
        prompt_length=prompt_length,
        positions=positions,
        truncated=truncated,
        unplaced=unplaced,
        text=text,
    )


def normalised_steps(trajectory: Any) -> tuple[str, ...]:
    """The steps lower-cased with white space collapsed: the default rule for "the same solution"
    (:meth:`sapo.data.tasks.base.Task.dedup_key`); trajectories of one question with equal keys are one."""
    return tuple(" ".join(step.lower().split()) for step in trajectory.steps)
