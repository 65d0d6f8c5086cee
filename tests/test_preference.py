"""The pair collator: prompt tokens masked, EOS appended, right padding, mixed SFT and ORPO rows."""

from __future__ import annotations

from sapo.data.pairs import build_pairs, rft_pairs
from sapo.data.preference import IGNORE_INDEX, PairCollator, PreferencePair
from sapo.data.trajectory import Trajectory


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
    assert batch["rejected_input_ids"].shape[0] == 2


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
    # the SFT row repeats its chosen side on the rejected side, where has_rejected keeps it out of the ratio
    assert batch["rejected_input_ids"][1].tolist() == batch["chosen_input_ids"][1].tolist()
