"""Step segmentation and step-end token positions, proven by properties over random texts and real tokenizers."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sapo.data.steps import encode_steps, join_steps, split_steps

ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789 +-*/=().,;:$% éü€✓ \t"


def _corpus(seed: int = 0, n: int = 400) -> list[str]:
    rng = random.Random(seed)
    words = [
        "step",
        "answer",
        "The",
        "is",
        "=",
        "+",
        "48/2 = 24",
        "so",
        "x",
        "total",
        "12",
        "apples",
        "€5",
        "é",
    ]
    return ["\n".join(" ".join(rng.choices(words, k=rng.randint(2, 8))) for _ in range(4)) for _ in range(n)]


def _byte_level_bpe(use_regex: bool) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here. Without the regex pre-split, merges run across newlines and spaces."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


@pytest.fixture(scope="module")
def bpe_regex() -> PreTrainedTokenizerFast:
    return _byte_level_bpe(use_regex=True)


@pytest.fixture(scope="module")
def bpe_merging() -> PreTrainedTokenizerFast:
    return _byte_level_bpe(use_regex=False)


step_text = st.text(alphabet=ALPHABET, min_size=1, max_size=30).map(str.strip).filter(bool)
steps_strategy = st.lists(step_text, min_size=1, max_size=8)
prompt_strategy = st.text(alphabet=ALPHABET + "\n", max_size=40)
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _step_ends(prompt: str, steps: list[str], separator: str) -> list[int]:
    ends, cursor = [], len(prompt)
    for s in steps:
        cursor += len(s) + len(separator)
        ends.append(cursor)
    return ends


def check_positions(tokenizer, prompt: str, steps: list[str], separator: str) -> None:
    """The invariants every encoding must satisfy, checked by decoding rather than by offsets."""
    enc = encode_steps(tokenizer, prompt, steps, separator)
    text = prompt + join_steps(steps, separator)
    assert _decode(tokenizer, enc.input_ids) == text
    assert len(enc.positions) == len(steps)
    assert enc.truncated == []
    placed = [p for p in enc.positions if p is not None]
    assert placed == sorted(set(placed)), "positions must be strictly increasing"
    for j, end in enumerate(_step_ends(prompt, steps, separator)):
        pos = enc.positions[j]
        if pos is None:
            assert j in enc.unplaced
            continue
        # The prefix up to the label token lies inside the text up to the step's end ...
        assert text[:end].startswith(_decode(tokenizer, enc.input_ids[: pos + 1]))
        # ... reaches into this step (past the previous step's end) ...
        previous_end = len(prompt) if j == 0 else _step_ends(prompt, steps, separator)[j - 1]
        assert len(_decode(tokenizer, enc.input_ids[: pos + 1])) > previous_end
        # ... and the next token, if any, runs past the step's end: the label token is the step's last.
        if pos + 1 < len(enc.input_ids):
            assert len(_decode(tokenizer, enc.input_ids[: pos + 2])) > end


@SETTINGS
@given(prompt=prompt_strategy, steps=steps_strategy)
def test_positions_smollm2_newline(smollm2_tokenizer, prompt, steps):
    check_positions(smollm2_tokenizer, prompt, steps, "\n")
    # SmolLM2 splits newlines from words, so every step has its own last token, ending exactly at the step.
    enc = encode_steps(smollm2_tokenizer, prompt, steps, "\n")
    assert enc.unplaced == []
    for pos, end in zip(enc.positions, _step_ends(prompt, steps, "\n"), strict=False):
        assert _decode(smollm2_tokenizer, enc.input_ids[: pos + 1]) == (prompt + join_steps(steps))[:end]


@SETTINGS
@given(
    prompt=prompt_strategy, steps=steps_strategy, separator=st.sampled_from(["\n", "\n\n", " ; ", "\nStep: "])
)
def test_positions_byte_level_bpe(bpe_regex, bpe_merging, prompt, steps, separator):
    check_positions(bpe_regex, prompt, steps, separator)
    check_positions(bpe_merging, prompt, steps, separator)


def test_merges_across_separator_never_leak_the_next_step(bpe_merging):
    """A token that starts in one step and ends in the next is never a label position."""
    steps = ["total is 12", "The answer is 12"]
    enc = encode_steps(bpe_merging, "Q\n", steps, "\n")
    offsets = bpe_merging(enc.text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    first_end = len("Q\n") + len(steps[0]) + 1
    for pos in enc.positions:
        if pos is not None and offsets[pos][0] < first_end:
            assert offsets[pos][1] <= first_end


@SETTINGS
@given(prompt=prompt_strategy, steps=steps_strategy, cut=st.integers(min_value=1, max_value=60))
def test_truncation_reports_lost_steps_and_keeps_the_rest(smollm2_tokenizer, prompt, steps, cut):
    full = encode_steps(smollm2_tokenizer, prompt, steps)
    enc = encode_steps(smollm2_tokenizer, prompt, steps, max_length=cut)
    assert len(enc.input_ids) == min(cut, len(full.input_ids))
    for j, (p_full, p_cut) in enumerate(zip(full.positions, enc.positions, strict=False)):
        if p_full < cut:
            assert p_cut == p_full
        else:
            assert p_cut is None and j in enc.truncated
    assert len(enc.truncated) == sum(p >= cut for p in full.positions)


def test_prompt_length_counts_prompt_tokens(smollm2_tokenizer):
    prompt = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    enc = encode_steps(smollm2_tokenizer, prompt, ["2 + 3 = 5", "The answer is 5"])
    prompt_ids = smollm2_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert enc.prompt_length == len(prompt_ids)
    assert enc.input_ids[: enc.prompt_length] == prompt_ids
    assert enc.positions[0] > enc.prompt_length - 1


def test_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="fast tokenizer"):
        encode_steps(Slow(), "q", ["a"])


@given(st.lists(step_text, min_size=0, max_size=6), st.sampled_from(["\n", "\n\n"]))
def test_split_join_round_trip(steps, separator):
    steps = [s for s in steps if "\n" not in s]
    assert split_steps(join_steps(steps, separator), separator) == steps


def test_split_drops_blank_pieces_and_strips():
    assert split_steps("  a = 1\n\n  \n b = 2 \nThe answer is 2") == ["a = 1", "b = 2", "The answer is 2"]
    with pytest.raises(ValueError, match="separator"):
        split_steps("a", "")
