"""The pair collator: prompt tokens masked, EOS appended, right padding, mixed SFT and ORPO rows, a rejected side
labelled from its first error."""

from __future__ import annotations

import pytest

from sapo.data.pairs import build_pairs, rft_pairs
from sapo.data.preference import IGNORE_INDEX, PairCollator, PreferencePair
from sapo.data.trajectory import Trajectory, TrajectoryFormatError


def test_chosen_only_batch_masks_prompt_and_pads(smollm2_tokenizer):
    tok = smollm2_tokenizer
    collate = PairCollator(tok, "\n", max_length=64)
    pairs = [
        PreferencePair("a", "Q: 2+3?\nA:\n", ["2 + 3 = 5", "The answer is 5"]),
        PreferencePair("b", "Q: 1?\nA:\n", ["The answer is 1"]),
    ]
    batch = collate(pairs)
    assert set(batch) == {"chosen_input_ids", "chosen_attention_mask", "chosen_labels"}
    ids, labels, mask = batch["chosen_input_ids"], batch["chosen_labels"], batch["chosen_attention_mask"]
    for row, pair in enumerate(pairs):
        n = int(mask[row].sum())
        prompt_len = len(tok(pair.prompt, add_special_tokens=False)["input_ids"])
        assert (labels[row, :prompt_len] == IGNORE_INDEX).all()
        assert labels[row, prompt_len:n].tolist() == ids[row, prompt_len:n].tolist()
        assert ids[row, n - 1].item() == tok.eos_token_id  # the model learns to stop
        assert tok.decode(ids[row, prompt_len : n - 1]) == "\n".join(pair.chosen) + "\n"
        assert (labels[row, n:] == IGNORE_INDEX).all() and (mask[row, n:] == 0).all()


def test_mixed_batch_marks_rows_without_rejected_side(smollm2_tokenizer):
    collate = PairCollator(smollm2_tokenizer, "\n", max_length=64)
    batch = collate(
        [
            PreferencePair("a", "Q\n", ["x = 1", "The answer is 1"], ["x = 2", "The answer is 2"]),
            PreferencePair("b", "Q\n", ["The answer is 3"]),
        ]
    )
    assert batch["has_rejected"].tolist() == [True, False]
    # only the row with a rejected side is padded into the rejected tensors: no pass for the SFT row
    assert batch["rejected_input_ids"].shape[0] == 1
    assert batch["rejected_labels"].shape == batch["rejected_input_ids"].shape
    only = collate([PreferencePair("a", "Q\n", ["x = 1", "The answer is 1"], ["x = 2", "The answer is 2"])])
    assert batch["rejected_input_ids"][0].tolist() == only["rejected_input_ids"][0].tolist()


def test_long_sequences_are_cut_without_eos(smollm2_tokenizer):
    collate = PairCollator(smollm2_tokenizer, "\n", max_length=10)
    batch = collate([PreferencePair("a", "Q\n", ["one two three four five six seven eight nine ten"])])
    assert batch["chosen_input_ids"].shape[1] == 10
    assert smollm2_tokenizer.eos_token_id not in batch["chosen_input_ids"][0].tolist()


def test_built_pairs_and_rft_pairs_collate_into_one_batch(smollm2_tokenizer):
    trajectories = [
        Trajectory("q", "2+3?", ["2 + 3 = 5", "The answer is 5"], outcome=True),
        Trajectory("q", "2+3?", ["2 + 3 = 6", "The answer is 6"], outcome=False),
    ]
    orpo = build_pairs(trajectories, [[1.0, 1.0], [0.5, 0.0]], prompt=lambda t: f"Q: {t.question}\n")
    sft = rft_pairs(trajectories, prompt=lambda t: f"Q: {t.question}\n")
    assert PreferencePair.from_dict(orpo[0].to_dict()) == orpo[0] and orpo[0].margin == 0.75
    batch = PairCollator(smollm2_tokenizer, "\n", max_length=64)(orpo + sft)
    assert batch["has_rejected"].tolist() == [True, False]
    assert batch["rejected_input_ids"].shape[0] == 1  # the SFT row has no rejected side to compute


def test_a_marked_first_error_labels_the_rejected_side_from_that_step_on(smollm2_tokenizer):
    tok = smollm2_tokenizer
    collate = PairCollator(tok, "\n", max_length=64)
    steps = ["7 - 1 = 6", "6 * 2 = 13", "The answer is 13"]
    marked = PreferencePair("a", "Q: (7-1)*2?\nA:\n", ["The answer is 12"], steps, rejected_first_error=1)
    whole = PreferencePair("a", "Q: (7-1)*2?\nA:\n", ["The answer is 12"], steps)
    batch = collate([marked, whole])
    ids, labels = batch["rejected_input_ids"], batch["rejected_labels"]
    assert ids[0].tolist() == ids[1].tolist()  # the right step stays in the input as context
    labelled = [t for t in labels[0].tolist() if t != IGNORE_INDEX]
    assert tok.decode(labelled[:-1]) == "6 * 2 = 13\nThe answer is 13\n" and labelled[-1] == tok.eos_token_id
    assert len(labelled) < int((labels[1] != IGNORE_INDEX).sum())
    assert batch["has_rejected"].tolist() == [True, True]
    # a first error at step 0 is the whole side
    at_zero = collate([PreferencePair("a", whole.prompt, whole.chosen, steps, rejected_first_error=0)])
    assert at_zero["rejected_labels"][0].tolist() == labels[1].tolist()


def test_a_first_error_cut_off_by_truncation_leaves_no_rejected_side(smollm2_tokenizer):
    collate = PairCollator(smollm2_tokenizer, "\n", max_length=12)
    long_step = "one two three four five six seven eight nine ten eleven twelve"
    pair = PreferencePair("a", "Q\n", ["x"], [long_step, "The answer is 2"], rejected_first_error=1)
    batch = collate([pair, PreferencePair("b", "Q\n", ["y"], ["z = 3"])])
    assert batch["has_rejected"].tolist() == [False, True]  # nothing of the error is left to push down
    assert batch["rejected_input_ids"].shape[0] == 1  # so its side is not computed at all
    assert not collate([pair])["has_rejected"].any() and "rejected_input_ids" not in collate([pair])


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"rejected": ["a", "b"], "rejected_first_error": 2}, r"step index of the rejected side \(0 to 1\)"),
        ({"rejected": ["a"], "rejected_first_error": True}, r"step index"),
        ({"rejected_first_error": 0}, r"without a rejected side"),
    ],
)
def test_a_bad_first_error_in_a_pairs_file_names_the_line(record, message):
    data = {"question_id": "q", "prompt": "Q", "chosen": ["c"]} | record
    with pytest.raises(TrajectoryFormatError, match=rf"pairs\.jsonl, line 3: .*{message}"):
        PreferencePair.from_dict(data, where="pairs.jsonl, line 3")
