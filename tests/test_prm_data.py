"""Verifier data: prompts, the PRM collator's padded batches, reading labelled files, length-grouped batches."""

from __future__ import annotations

import json
import logging

import pytest

from sapo.data.prm import (
    DEFAULT_PROMPT_TEMPLATE,
    PRMCollator,
    PRMDataModule,
    encode_labelled,
    read_labelled_trajectories,
    verifier_prompt,
)
from sapo.data.steps import encode_steps
from sapo.data.trajectory import Trajectory, TrajectoryFormatError, write_jsonl


def labelled(qid: str, steps: list[str], labels: list[float] | None, question: str = "What is 2+3?"):
    return Trajectory(qid, question, steps, labels=labels)


def test_prompt_uses_the_chat_template_with_the_instruction_or_the_plain_template(smollm2_tokenizer):
    chat = verifier_prompt("What is 2+3?", smollm2_tokenizer, instruction="Solve: ")
    assert "Solve: What is 2+3?" in chat
    assert chat.startswith("<|im_start|>") and chat.endswith("<|im_start|>assistant\n")
    plain = verifier_prompt("What is 2+3?", smollm2_tokenizer, use_chat_template=False)
    assert plain == DEFAULT_PROMPT_TEMPLATE.format(question="What is 2+3?")


def test_batch_holds_step_end_positions_labels_and_mask(smollm2_tokenizer):
    collate = PRMCollator(smollm2_tokenizer, "\n", max_length=256)
    trajectories = [
        labelled("a", ["2 + 3 = 5", "5 * 2 = 10", "The answer is 10"], [1.0, 0.25, 0.0]),
        labelled("b", ["The answer is 5"], [1.0], question="What is 5?"),
    ]
    batch = collate(trajectories)
    assert set(batch) == {"input_ids", "attention_mask", "step_positions", "step_labels", "step_mask"}
    assert batch["step_positions"].shape == (2, 3)
    for row, trajectory in enumerate(trajectories):
        expected = encode_steps(smollm2_tokenizer, collate.prompt(trajectory), trajectory.steps, "\n", 256)
        length = len(expected.input_ids)
        assert batch["input_ids"][row, :length].tolist() == expected.input_ids
        assert batch["attention_mask"][row].sum().item() == length
        assert (batch["input_ids"][row, length:] == smollm2_tokenizer.pad_token_id).all()  # right padding
        n = trajectory.num_steps
        assert batch["step_positions"][row, :n].tolist() == expected.positions
        assert batch["step_labels"][row, :n].tolist() == trajectory.labels
        assert batch["step_mask"][row, :n].all()
    # the short row's missing steps: position -1, no label, masked out
    assert batch["step_positions"][1, 1:].tolist() == [-1, -1]
    assert batch["step_mask"][1, 1:].tolist() == [False, False]
    # every label sits on the separator token that closes its step
    for position in batch["step_positions"][0].tolist():
        assert smollm2_tokenizer.decode([batch["input_ids"][0, position].item()]) == "\n"


def test_truncated_steps_get_no_position_and_no_label(smollm2_tokenizer):
    collate = PRMCollator(smollm2_tokenizer, "\n", max_length=256, use_chat_template=False)
    trajectory = labelled("a", ["2 + 3 = 5", "5 * 2 = 10", "The answer is 10"], [1.0, 1.0, 0.0])
    full = collate.encode(trajectory)
    cut = PRMCollator(smollm2_tokenizer, "\n", max_length=full.positions[1] + 1, use_chat_template=False)
    batch = cut([trajectory])
    assert batch["input_ids"].shape[1] == full.positions[1] + 1
    assert batch["step_mask"][0].tolist() == [True, True, False]
    assert batch["step_positions"][0].tolist() == [full.positions[0], full.positions[1], -1]
    assert batch["step_labels"][0, 2].item() == 0.0  # the wrong last step's 0 is gone, not kept as a label


def test_collating_an_unlabelled_trajectory_names_it(smollm2_tokenizer):
    collate = PRMCollator(smollm2_tokenizer)
    trajectories = [labelled("ok", ["The answer is 5"], [1.0]), labelled("q-unlabelled", ["x = 1"], None)]
    with pytest.raises(TrajectoryFormatError, match=r"trajectory 1 \(question_id 'q-unlabelled'\)"):
        collate(trajectories)


def test_reading_a_file_names_the_line_index_and_question_of_an_unlabelled_trajectory(tmp_path):
    path = tmp_path / "labelled.jsonl"
    write_jsonl(
        [
            labelled("q0", ["The answer is 5"], [1.0]),
            labelled("q1", ["x = 1", "The answer is 1"], [1.0, 0.0]),
        ],
        path,
    )
    with path.open("a") as fh:  # a blank line, then a trajectory without labels on line 4
        fh.write("\n" + json.dumps(labelled("q-missing", ["x"], None).to_dict()) + "\n")
    with pytest.raises(TrajectoryFormatError) as error:
        read_labelled_trajectories(path)
    message = str(error.value)
    assert f"{path}, line 4" in message and "trajectory 2" in message and "'q-missing'" in message


def test_reading_a_labelled_file_keeps_order_and_where(tmp_path):
    path = write_jsonl(
        [labelled(f"q{i}", ["The answer is 5"], [float(i % 2)]) for i in range(3)], tmp_path / "l.jsonl"
    )
    records = read_labelled_trajectories(path)
    assert [t.question_id for t, _ in records] == ["q0", "q1", "q2"]
    assert records[2][1] == f"{path}, line 3: trajectory 2 (question_id 'q2')"


def test_rows_without_any_placed_step_are_dropped_with_a_warning(smollm2_tokenizer, caplog):
    collate = PRMCollator(smollm2_tokenizer, max_length=12, use_chat_template=False)
    short = labelled("short", ["1"], [1.0], question="Q")
    long = labelled("long", ["x = 1"], [1.0], question="a very long question " * 5)
    with caplog.at_level(logging.WARNING, logger="sapo.data.prm"):
        examples = encode_labelled([(short, "short"), (long, "long")], collate)
    assert [e.where for e in examples] == ["short"]
    assert "1 step labels" in caplog.text and "1 trajectories" in caplog.text


def test_data_module_encodes_files_once_and_batches_them(tmp_path, smollm2_tokenizer):
    train = [labelled(f"t{i}", ["x = 1"] * (1 + i % 4), [1.0] * (1 + i % 4)) for i in range(10)]
    val = [labelled("v0", ["x = 1", "The answer is 1"], [1.0, 0.0])]
    module = PRMDataModule(
        str(write_jsonl(train, tmp_path / "train.jsonl")),
        str(write_jsonl(val, tmp_path / "val.jsonl")),
        batch_size=4,
    )
    module.collator = PRMCollator(smollm2_tokenizer)
    module.setup("fit")
    assert len(module.train_examples) == 10 and len(module.val_examples) == 1
    seen = []
    for batch in module.train_dataloader():
        assert batch["input_ids"].shape[0] <= 4
        seen.append(int(batch["step_mask"].sum()))
    assert sum(seen) == sum(t.num_steps for t in train)
    (val_batch,) = list(module.val_dataloader())
    assert val_batch["step_labels"][0].tolist() == [1.0, 0.0]


def test_data_module_rejects_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_file"):
        PRMDataModule(str(tmp_path / "nope.jsonl"))
