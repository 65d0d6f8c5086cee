"""The loop's data: each trajectory's prompt from its own task, the questions an iteration samples, the data
of the verifier and ORPO phases, pairs read back from a file."""

from __future__ import annotations

import pytest

from sapo.data.preference import PairCollator, PreferencePair, read_pairs
from sapo.data.prm import PRMCollator, verifier_prompt
from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.trajectory import Trajectory, TrajectoryFormatError, write_jsonl
from sapo.evolution import LabelledData, SAPSDataModule


def test_the_verifier_reads_the_prompt_the_task_gave_the_reasoner(smollm2_tokenizer):
    task = ArithmeticTask(split="train", num_questions=3, num_fewshot=2)
    data = SAPSDataModule(task)
    question = data.questions[0]
    trajectory = Trajectory(question.id, question.question, ["1 + 1 = 2", "The answer is 2"])
    prompts = data.prompts(smollm2_tokenizer)
    expected = task.prompt(question, smollm2_tokenizer)
    assert prompts(trajectory) == expected
    assert "assistant" in expected.split(question.question)[0]  # the few-shot turns come first
    collator = PRMCollator(smollm2_tokenizer, prompt=prompts)
    assert collator.prompt(trajectory) == expected
    # what the collator rebuilt from the question text alone lost the few-shot examples
    rebuilt = verifier_prompt(question.question, smollm2_tokenizer, task.instruction)
    assert rebuilt != expected
    assert PRMCollator(smollm2_tokenizer, instruction=task.instruction).prompt(trajectory) == rebuilt
    encoded = collator.encode(trajectory)
    assert (
        encoded.input_ids[: len(smollm2_tokenizer(expected)["input_ids"]) - 1]
        == (smollm2_tokenizer(expected)["input_ids"][:-1])
    )


def test_held_out_questions_have_prompts_too_and_an_unknown_question_is_named(smollm2_tokenizer):
    data = SAPSDataModule(
        ArithmeticTask(split="train", num_questions=2), ArithmeticTask(split="test", num_questions=2)
    )
    prompts = data.prompts(smollm2_tokenizer, heldout_count=2)
    held_out = data.heldout(2)[1]
    assert prompts(Trajectory(held_out.id, held_out.question, ["x"])) == data.heldout_task.prompt(
        held_out, smollm2_tokenizer
    )
    with pytest.raises(KeyError, match="nowhere/1"):
        prompts(Trajectory("nowhere/1", "?", ["x"]))


def test_each_iteration_draws_its_own_seeded_questions():
    data = SAPSDataModule(ArithmeticTask(split="train", num_questions=20), chunk_size=3)
    first, again = data.iteration_questions(1, 5, seed=0), data.iteration_questions(1, 5, seed=0)
    assert [q.id for q in first] == [q.id for q in again] and len(first) == 5
    assert [q.id for q in first] != [q.id for q in data.iteration_questions(2, 5, seed=0)]
    assert len(data.iteration_questions(1, None, seed=0)) == 20
    assert [len(c) for c in data.chunks(first)] == [3, 2]


def test_gold_solutions_split_the_questions_into_sft_gold_and_answer_only_ones(smollm2_tokenizer):
    data = SAPSDataModule(ArithmeticTask(split="train", num_questions=30), gold_solutions=10)
    gold_ids = {q.id for q in data.questions[:10]}
    assert {q.id for q in data.gold_questions} == gold_ids
    for t in range(3):  # the loop samples only questions it knows by their final answers
        drawn = data.iteration_questions(t, 8, seed=0)
        assert len(drawn) == 8 and not gold_ids & {q.id for q in drawn}
    assert {q.id for q in data.iteration_questions(0, None, seed=0)} == {q.id for q in data.questions[10:]}
    assert {t.question_id for t in data.gold_trajectories()} == gold_ids  # D_org
    assert data.gold_trajectories(data.questions[8:12]) == data.gold_trajectories()[8:10]

    class Module:  # what setup reads from the trainer: the model's tokenizer
        tokenizer = smollm2_tokenizer

    data.trainer = type("Trainer", (), {"lightning_module": Module()})()
    data.setup("fit")
    assert [pair.question_id for pair in data.train_pairs] == [q.id for q in data.gold_questions]
    # orpo.replay_gold: D_org's gold solutions join a round's pairs, but never twice
    sampled = data.questions[12]
    pair = PreferencePair(sampled.id, "p", ["1 + 1 = 2", "The answer is 2"], ["1 + 1 = 3"])
    replayed = data.replayed_gold([pair], smollm2_tokenizer)
    assert [p.question_id for p in replayed] == [q.id for q in data.gold_questions]
    assert all(p.rejected is None for p in replayed) and replayed == data.train_pairs
    assert data.replayed_gold(replayed[:3] + [pair], smollm2_tokenizer) == replayed[3:]
    with pytest.raises(ValueError, match="gold_solutions is 30, but the task has only 30 questions"):
        _ = SAPSDataModule(ArithmeticTask(split="train", num_questions=30), gold_solutions=30).questions
    with pytest.raises(ValueError, match="data.init_args.gold_solutions must be at least 1"):
        SAPSDataModule(ArithmeticTask(split="train", num_questions=2), gold_solutions=0)


def test_a_bad_data_setting_names_its_flag():
    with pytest.raises(ValueError, match="data.init_args.chunk_size"):
        SAPSDataModule(ArithmeticTask(split="train", num_questions=2), chunk_size=0)


def test_phase_data_keeps_only_trajectories_with_a_placed_label(smollm2_tokenizer):
    data = SAPSDataModule(ArithmeticTask(split="train", num_questions=2), batch_size=2, max_length=64)
    collator = PRMCollator(smollm2_tokenizer, max_length=64)
    short = Trajectory("q", "2 + 2?", ["2 + 2 = 4", "The answer is 4"], labels=[1.0, 1.0])
    cut = Trajectory("q", "word " * 80, ["2 + 2 = 4"], labels=[1.0])  # its prompt alone fills max_length
    verifier = data.verifier_data([short, cut], collator)
    assert len(verifier.items) == 1 and verifier.items[0].labels == [1.0, 1.0]
    pairs = [PreferencePair("q", "Q: 2 + 2?\n", ["2 + 2 = 4"], ["2 + 2 = 5"], 0.5)]
    orpo = data.pair_data(pairs, smollm2_tokenizer)
    encoded = PairCollator(smollm2_tokenizer, data.task.separator, 64)
    assert orpo.lengths == [
        len(encoded.encode(p.prompt, p.chosen)[0]) + len(encoded.encode(p.prompt, p.rejected)[0])
        for p in pairs
    ]
    with pytest.raises(ValueError, match="got no data"):
        data.pair_data([], smollm2_tokenizer)


def test_labels_accumulate_part_by_part():
    a, b = (Trajectory(q, "?", ["x"], labels=[1.0]) for q in ("a", "b"))
    first = LabelledData(labelled=[a], expanded=[b])
    both = first + LabelledData(labelled=[b], dropped=[a])
    assert [t.question_id for t in both.trajectories] == ["a", "b", "b"]  # labelled of both, then expanded
    assert len(both.dropped) == 1


def test_pairs_round_trip_and_a_bad_line_is_named(tmp_path):
    pairs = [PreferencePair("q1", "P", ["a"], ["b"], 0.25), PreferencePair("q2", "P", ["c"])]
    path = write_jsonl(pairs, tmp_path / "pairs.jsonl")
    assert read_pairs(path) == pairs
    path.write_text(path.read_text() + '{"question_id": "q3", "prompt": "P"}\n')
    with pytest.raises(TrajectoryFormatError, match=r"pairs.jsonl, line 3: missing field\(s\) \['chosen'\]"):
        read_pairs(path)
