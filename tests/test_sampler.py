"""The Sampler: seeding, batching, stopping after the answer, cost, deduplication, rollouts from prefixes.

Two reasoners: the tiny random Llama (real generation, for seeding, batching and cost), and a scripted one,
the same Llama whose logits are overwritten so that it writes a text chosen from its prompt (for what the
text must look like: the stop rule, checked outcomes, duplicates), recording every prompt it was given.
"""

from __future__ import annotations

from collections import deque

import pytest
import torch
from conftest import WrittenReasoner

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.tasks.base import Question
from sapo.data.tasks.math import ANSWER_LINE_RE
from sapo.data.trajectory import Cost, Trajectory
from sapo.models import TINY_RANDOM, BackboneSpec
from sapo.rollout import (
    Sampler,
    StopRule,
    TaskRolloutSampler,
    as_stop_rule,
    deduplicate,
    generate_batched,
    shared_prefill,
    task_stop_rule,
)
from sapo.rollout.generate import finish_generation, first_stop_point
from sapo.supervision.protocols import Prefix, RolloutSampler

ANSWER_SCRIPT = "3 + 4 = 7\nThe answer is 7.\nmore text after the answer\n"
#: ends a math completion just after its answer line, as the math tasks' ``completion_end`` does
ANSWER_LINE_STOP = StopRule.regex(ANSWER_LINE_RE)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model is faster on one thread, above all on a machine other jobs share."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(sapo_cache_dir):
    return BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir).load()


class ScriptedLM(WrittenReasoner):
    """Writes ``script(prompt)`` then EOS for every row, whatever the sampling settings; ``prompts`` are the
    prompts it was asked to complete (the rows ``generate`` received)."""

    def setup(self, tokenizer, script):
        return super().setup(tokenizer, lambda prompt: _Always(script(prompt)))

    @property
    def prompts(self) -> list[str]:
        return list(self.seen.elements())


class _Always:
    """The same text for the j-th sample of a prompt, for every j."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __getitem__(self, j: int) -> str:
        return self.text


@pytest.fixture(scope="module")
def scripted_model(tiny):
    model, tokenizer = tiny
    scripted = ScriptedLM(model.config)
    scripted.generation_config = model.generation_config
    return scripted.eval(), tokenizer


def scripted(scripted_model, script):
    model, tokenizer = scripted_model
    return model.setup(tokenizer, script), tokenizer


@pytest.fixture(scope="module")
def task() -> ArithmeticTask:
    return ArithmeticTask(num_questions=4, seed=0, min_steps=2, max_steps=3)


@pytest.fixture(scope="module")
def questions(task) -> list[Question]:
    return task.load()


PLAIN_PROMPTS = [
    "Question: 3 apples and 4 pears. How many fruit?\nAnswer:\n",
    "Hi",
    "The cat sat on the mat and then it",
    "x = 1\ny = 2\nprint(x",
    "Numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9,",
]


# --- seeding and batching -----------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_samples_and_a_different_seed_different_ones(tiny):
    model, tokenizer = tiny

    def sample(seed):
        sampler = Sampler(
            model, tokenizer, max_new_tokens=8, temperature=1.0, batch_size=4, seed=seed, progress=False
        )
        return [[g.text for g in samples] for samples in sampler.generate(PLAIN_PROMPTS[:3], 2)]

    rng_before = torch.random.get_rng_state()
    first = sample(0)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "sampling must not move the global RNG"
    assert sample(0) == first
    assert sample(1) != first
    assert len({text for samples in first for text in samples}) == 6  # temperature 1: six different texts


def test_successive_calls_draw_fresh_samples(tiny):
    model, tokenizer = tiny
    sampler = Sampler(model, tokenizer, max_new_tokens=8, batch_size=4, seed=0, progress=False)
    first, second = (sampler.generate(PLAIN_PROMPTS[:2], 2) for _ in range(2))
    assert [g.text for s in first for g in s] != [g.text for s in second for g in s]


def test_greedy_results_do_not_depend_on_batch_size_or_order(tiny):
    model, tokenizer = tiny
    prompts = PLAIN_PROMPTS + PLAIN_PROMPTS[:2]
    reference = generate_batched(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert len({g.text for g in reference[:5]}) == 5  # the prompts get different completions
    for batch_size in (2, 3, 16):
        assert (
            generate_batched(model, tokenizer, prompts, max_new_tokens=6, batch_size=batch_size) == reference
        )
    order = [4, 0, 6, 2, 1, 5, 3]
    shuffled = generate_batched(model, tokenizer, [prompts[i] for i in order], max_new_tokens=6, batch_size=3)
    assert shuffled == [reference[i] for i in order]


SHARED_HEADER = "You solve problems step by step. Example: 2 + 2 = 4. The answer is 4.\nQuestion: "
SHARED_PROMPTS = [SHARED_HEADER + q for q in ("one plus two?", "seven times six, then add one?", "Hi")]


def test_shared_prefill_gives_the_logits_of_a_left_padded_forward(tiny):
    model, tokenizer = tiny
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in SHARED_PROMPTS]
    rows = [rows[0], rows[1], rows[0], rows[2], rows[1]]  # repeats, as k samples of a prompt are
    prefill = shared_prefill(model, rows, tokenizer.pad_token_id)
    assert prefill.cache.get_seq_length() == prefill.input_ids.shape[1] - 1
    for row, ids, mask in zip(rows, prefill.input_ids, prefill.attention_mask, strict=True):
        assert ids[mask.bool()].tolist() == row  # each row's own tokens, in order, whatever the layout
    position = prefill.attention_mask.sum(-1, keepdim=True) - 1
    with torch.no_grad():
        shared = model(
            input_ids=prefill.input_ids[:, -1:],
            attention_mask=prefill.attention_mask,
            position_ids=position,
            past_key_values=prefill.cache,
        ).logits[:, -1]
        width = max(len(r) for r in rows)
        padded = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        plain = model(input_ids=padded, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(shared, plain, atol=1e-4, rtol=1e-4)


def test_shared_prefill_reads_the_common_prefix_and_each_distinct_prompt_once(tiny):
    model, tokenizer = tiny
    prompts = [SHARED_PROMPTS[0]] * 4 + [SHARED_PROMPTS[1]] * 4
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in SHARED_PROMPTS[:2]]
    common = len(tokenizer(SHARED_HEADER, add_special_tokens=False)["input_ids"]) - 1  # a token may straddle
    shared, plain = Cost(), Cost()
    kwargs = dict(max_new_tokens=4, batch_size=8)
    greedy = generate_batched(model, tokenizer, prompts, cost=shared, **kwargs)
    assert generate_batched(model, tokenizer, prompts, cost=plain, share_prefill=False, **kwargs) == greedy
    assert shared.prompt_tokens == plain.prompt_tokens == 4 * sum(lengths)
    assert plain.prefill_tokens == 8 * max(lengths)
    assert shared.prefill_tokens <= common + 2 * (max(lengths) - common) + 8
    assert shared.prefill_saving > 3


# --- stopping after the answer and what it costs ------------------------------------------------------------------


def test_stop_rule_cuts_the_text_after_the_answer_line_and_counts_tokens_to_the_stop(scripted_model):
    model, tokenizer = scripted(
        scripted_model, lambda prompt: ANSWER_SCRIPT if "apples" in prompt else "1 + 1 = 2\n"
    )
    n_answer = len(tokenizer("3 + 4 = 7\nThe answer is 7.\n", add_special_tokens=False)["input_ids"])
    n_script = len(tokenizer(ANSWER_SCRIPT, add_special_tokens=False)["input_ids"])
    prompts = [PLAIN_PROMPTS[0], PLAIN_PROMPTS[1]]

    cost = Cost()
    stopped = generate_batched(model, tokenizer, prompts, max_new_tokens=40, stop=ANSWER_LINE_STOP, cost=cost)
    assert stopped[0].text == "3 + 4 = 7\nThe answer is 7.\n"
    assert (stopped[0].num_tokens, stopped[0].finish_reason) == (n_answer, "stop")
    assert stopped[1].text == "1 + 1 = 2\n" and stopped[1].finish_reason == "eos"
    assert cost.generated_tokens == sum(g.num_tokens for g in stopped)
    assert cost.completions == 2 and cost.calls == 1

    unstopped = generate_batched(model, tokenizer, prompts, max_new_tokens=40)
    assert unstopped[0].text == ANSWER_SCRIPT and unstopped[0].num_tokens == n_script + 1  # + EOS

    budget = generate_batched(model, tokenizer, prompts[:1], max_new_tokens=5, stop=ANSWER_LINE_STOP)
    assert budget[0].num_tokens == 5 and budget[0].finish_reason == "length"

    # a backend that cannot stop while generating finds the same stop point afterwards (the vLLM path)
    tokens = tokenizer(ANSWER_SCRIPT, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ends = {tokenizer.eos_token_id}
    at = first_stop_point(tokenizer, tokens, ends, ANSWER_LINE_STOP)
    assert finish_generation(tokenizer, tokens, ends, ANSWER_LINE_STOP, stopped_at=at) == stopped[0]


def test_stop_rules_from_regex_and_callable():
    rule = as_stop_rule(r"END\n")
    assert isinstance(rule, StopRule) and rule.end("a\nEND\nb") == 6 and rule.end("a\nEN") is None
    every_token = as_stop_rule(lambda text: 3 if len(text) > 5 else None)
    assert every_token.trigger is None and every_token.end("abcdefg") == 3
    assert ANSWER_LINE_STOP.end("1 + 1 = 2\nThe answer is 2.\nx") == len("1 + 1 = 2\nThe answer is 2.\n")
    assert ANSWER_LINE_STOP.end("The answer is 2.") is None  # the line is not finished yet
    assert ANSWER_LINE_STOP.end("the answer is unclear\n") is None
    from_task = task_stop_rule(ArithmeticTask())  # the rule the sampler takes from a math task: the same
    assert from_task is not None and from_task.trigger == ANSWER_LINE_STOP.trigger
    for text in ("1 + 1 = 2\nThe answer is 2.\nx", "The answer is 2.", "#### 7\n", "\\boxed{3}\n", "no\n"):
        assert from_task.end(text) == ANSWER_LINE_STOP.end(text)


def test_cost_records_each_call_and_the_running_total(tiny):
    model, tokenizer = tiny
    sampler = Sampler(model, tokenizer, max_new_tokens=7, batch_size=3, seed=0, progress=False)
    first = [g for s in sampler.generate(PLAIN_PROMPTS, 2, stop=r"\n") for g in s]
    first_cost = sampler.last_cost
    assert first_cost.completions == len(first) == 10
    assert first_cost.generated_tokens == sum(g.num_tokens for g in first)
    assert first_cost.batches == 4 and first_cost.seconds > 0
    assert all(1 <= g.num_tokens <= 7 for g in first)
    second = [g for s in sampler.generate(PLAIN_PROMPTS[:1], 1) for g in s]
    assert sampler.last_cost.completions == 1 and sampler.last_cost.generated_tokens == second[0].num_tokens
    assert sampler.cost == first_cost + sampler.last_cost
    assert sampler.cost.generated_tokens == sum(g.num_tokens for g in first + second)


def test_progress_bar_shows_sequence_and_token_rates(tiny, capsys):
    model, tokenizer = tiny
    Sampler(model, tokenizer, max_new_tokens=3, seed=0, progress=True).generate(PLAIN_PROMPTS[:2])
    err = capsys.readouterr().err
    assert "seq/s" in err and "tok/s" in err


# --- trajectories: checked and deduplicated -----------------------------------------------------------------------


def test_deduplicate_keeps_the_first_of_each_solution_per_question():
    def t(qid, *steps):
        return Trajectory(question_id=qid, question="q", steps=list(steps))

    a, a_again, a_other_question, b = (
        t("q1", "1 + 1 = 2", "The answer is 2."),
        t("q1", "1 +  1 = 2", "the ANSWER is 2."),
        t("q2", "1 + 1 = 2", "The answer is 2."),
        t("q1", "2 = 2"),
    )
    kept = deduplicate([a, a_again, a_other_question, b], key=ArithmeticTask().dedup_key)
    assert kept == [a, a_other_question, b]
    assert [k.meta["duplicates"] for k in kept] == [1, 0, 0]
    by_last_step = deduplicate([a, b, t("q1", "x", "2 = 2")], key=lambda tr: tr.steps[-1])
    assert len(by_last_step) == 2


def test_sample_trajectories_checks_and_deduplicates_per_question(scripted_model, task, questions):
    right, wrong = questions[0], questions[1]
    gold = right.solution

    def script(prompt):
        return (
            gold + "more text after the answer\n"
            if right.question in prompt
            else "1 + 1 = 2\nThe answer is 99999.\n"
        )

    model, tokenizer = scripted(scripted_model, script)
    sampler = Sampler(model, tokenizer, max_new_tokens=60, batch_size=4, seed=0, progress=False)
    sampler_for_task = TaskRolloutSampler(sampler, task, questions, stop=task_stop_rule(task))
    trajectories = sampler_for_task.sample_trajectories([right, wrong], 3)

    assert [t.question_id for t in trajectories] == [right.id, wrong.id]  # three identical samples each
    assert [t.meta["duplicates"] for t in trajectories] == [2, 2]
    assert trajectories[0].steps == task.split_steps(gold) and trajectories[0].outcome is True
    assert trajectories[0].final_answer == right.answer and trajectories[0].gold_answer == right.answer
    assert trajectories[1].outcome is False and trajectories[1].final_answer == "99999"
    n_gold = len(tokenizer(gold, add_special_tokens=False)["input_ids"])
    assert trajectories[0].meta["generated_tokens"] == n_gold  # stopped after the answer line
    assert sampler.last_cost.completions == 6
    assert sampler.last_cost.generated_tokens == 3 * sum(t.meta["generated_tokens"] for t in trajectories)
    assert sampler_for_task.last_cost == sampler.last_cost


# --- rollouts from prefixes ---------------------------------------------------------------------------------------


def gold_prefixes(task, questions):
    """Prefixes of 0, 1 and 2 steps of the gold solutions of three different questions."""
    return [Prefix(task.gold_trajectory(q), n) for q, n in zip(questions[:3], (0, 1, 2), strict=True)]


def test_rollouts_continue_exactly_the_question_prompt_plus_the_prefix_text(scripted_model, task, questions):
    prefixes = gold_prefixes(task, questions)
    marker = {q.question: i for i, q in enumerate(questions[:3])}

    def script(prompt):  # the continuation names which prefix it continues; prefix 1 reaches the gold answer
        i = next(i for text, i in marker.items() if text in prompt)
        answer = questions[i].answer if i == 1 else "99999"
        return f"prefix {i} goes on\nThe answer is {answer}.\n"

    model, tokenizer = scripted(scripted_model, script)
    sampler = Sampler(model, tokenizer, max_new_tokens=40, batch_size=8, seed=0, progress=False)
    adapter = TaskRolloutSampler(sampler, task, questions, stop=task_stop_rule(task))
    assert isinstance(adapter, RolloutSampler)
    results = adapter.rollouts(prefixes, k=2)

    by_id = {q.id: q for q in questions}
    expected = {
        task.prompt(by_id[p.trajectory.question_id], tokenizer) + task.completion_text(p.steps)
        for p in prefixes
    }
    assert set(model.prompts) == expected and len(model.prompts) == 6
    assert [len(r) for r in results] == [2, 2, 2]
    for i, rollouts in enumerate(results):
        assert all(r.steps == [f"prefix {i} goes on", r.steps[-1]] for r in rollouts)
        assert all(r.meta["prefix_steps"] == prefixes[i].num_steps for r in rollouts)
    assert [r.outcome for r in results[1]] == [True, True] and results[1][0].final_answer == questions[
        1
    ].answer
    assert not any(r.outcome for r in results[0] + results[2])
    assert adapter.last_cost.completions == 6
    assert adapter.last_cost.generated_tokens == sum(r.num_tokens for rs in results for r in rs)


def test_outcome_is_checked_on_prefix_plus_continuation(scripted_model, task, questions):
    """A continuation that states no answer is judged by the last number of the whole completion, which here
    is the prefix's last equation: the gold answer (the checker saw the prefix)."""
    q = questions[0]
    gold = task.gold_trajectory(q)
    prefix = Prefix(gold, gold.num_steps - 1)  # every equation, not the answer line
    model, tokenizer = scripted(scripted_model, lambda prompt: "no more numbers here\n")
    sampler = Sampler(model, tokenizer, max_new_tokens=12, seed=0, progress=False)
    [[rollout]] = TaskRolloutSampler(sampler, task, questions, stop=task_stop_rule(task)).rollouts(
        [prefix], k=1
    )
    assert rollout.steps == ["no more numbers here"]
    assert rollout.final_answer == q.answer and rollout.outcome is True


def test_adapter_returns_exactly_k_rollouts_per_prefix_in_order(tiny, task, questions):
    model, tokenizer = tiny
    sampler = Sampler(model, tokenizer, max_new_tokens=5, batch_size=4, seed=0, progress=False)
    adapter = TaskRolloutSampler(sampler, task, questions)
    prefixes = gold_prefixes(task, questions)[::-1]
    results = adapter.rollouts(prefixes, k=3)
    assert [len(r) for r in results] == [3, 3, 3]
    assert [[r.meta["prefix_steps"] for r in rs] for rs in results] == [[2] * 3, [1] * 3, [0] * 3]
    assert all(1 <= r.num_tokens <= 5 for rs in results for r in rs)
    assert sampler.last_cost.completions == 9
    assert sampler.last_cost.generated_tokens == sum(r.num_tokens for rs in results for r in rs)


def test_a_finished_prefix_is_not_continued(tiny, task, questions):
    model, tokenizer = tiny
    sampler = Sampler(model, tokenizer, max_new_tokens=5, seed=0, progress=False)
    gold = task.gold_trajectory(questions[0])
    [rollouts] = TaskRolloutSampler(sampler, task, questions, stop=task_stop_rule(task)).rollouts(
        [Prefix(gold, gold.num_steps)], k=2
    )
    assert [(r.steps, r.outcome, r.num_tokens, r.meta["finished_prefix"]) for r in rollouts] == [
        ([], True, 0, True)
    ] * 2
    assert sampler.cost.completions == 0


class ScriptedOutcomes(ArithmeticTask):
    """An arithmetic task whose checker answers from a script: per question, the verdicts of its checks in
    order (then False)."""

    def script(self, verdicts: dict[str, list[bool]]) -> ScriptedOutcomes:
        self.verdicts = {qid: deque(v) for qid, v in verdicts.items()}
        return self

    def is_correct(self, answer, question):
        queue = self.verdicts.get(question.id)
        return bool(queue.popleft()) if queue else False


@pytest.mark.parametrize("chunk, expected_lengths", [(1, [3, 4, 1]), (2, [4, 4, 2])])
def test_early_stop_ends_a_prefix_after_the_round_of_its_first_correct_rollout(
    tiny, questions, chunk, expected_lengths
):
    model, tokenizer = tiny
    task = ScriptedOutcomes(num_questions=4, seed=0, min_steps=2, max_steps=3)
    prefixes = gold_prefixes(task, questions)
    ids = [p.trajectory.question_id for p in prefixes]
    task.script(
        {ids[0]: [False, False, True, False], ids[1]: [False] * 4, ids[2]: [True, False, False, False]}
    )
    sampler = Sampler(model, tokenizer, max_new_tokens=3, batch_size=8, seed=0, progress=False)
    adapter = TaskRolloutSampler(sampler, task, questions, early_stop_chunk=chunk)
    results = adapter.rollouts(prefixes, k=4, early_stop=True)

    assert [len(r) for r in results] == expected_lengths
    assert [r.outcome for r in results[0]] == [False, False, True, False][: expected_lengths[0]]
    assert not any(r.outcome for r in results[1])
    assert results[2][0].outcome is True
    assert adapter.last_cost.completions == sum(expected_lengths)  # nothing sampled after a success's round
    assert adapter.last_cost.calls == 4 // chunk


def test_without_early_stop_every_prefix_gets_k_even_after_a_success(tiny, questions):
    model, tokenizer = tiny
    task = ScriptedOutcomes(num_questions=4, seed=0, min_steps=2, max_steps=3)
    prefixes = gold_prefixes(task, questions)
    task.script({p.trajectory.question_id: [True] * 4 for p in prefixes})
    sampler = Sampler(model, tokenizer, max_new_tokens=3, batch_size=8, seed=0, progress=False)
    results = TaskRolloutSampler(sampler, task, questions).rollouts(prefixes, k=4)
    assert [len(r) for r in results] == [4, 4, 4] and all(r.outcome for rs in results for r in rs)
    assert sampler.cost.calls == 1


def test_rollouts_of_an_unknown_question_say_so(tiny, task, questions):
    model, tokenizer = tiny
    adapter = TaskRolloutSampler(Sampler(model, tokenizer, progress=False), task, questions[:1])
    with pytest.raises(KeyError, match="unknown question"):
        adapter.rollouts(gold_prefixes(task, questions)[1:2], k=1)
