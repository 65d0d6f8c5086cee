"""Step-level tree search (SPHERE's self-generation): beam search and MCTS pruned by a verifier.

Two reasoners, as in the sampler's tests: the tiny random Llama (real sampling, for counts, cost, seeds and
batching) and a written one, the same Llama whose logits are overwritten so that it writes the step a test
chooses from the path so far and the sample's index (for what the search must do with the text: follow the
verifier, stop at the answer, merge duplicates, back up outcomes).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import WrittenReasoner

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.trajectory import Cost
from sapo.models import TINY_RANDOM, BackboneSpec
from sapo.rollout import (
    Sampler,
    SearchNode,
    StepBeamSearch,
    StepMCTS,
    StepProposer,
    StepTreeSearch,
    step_stop_rule,
)
from sapo.supervision.protocols import StepScorer


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


@pytest.fixture(scope="module")
def task() -> ArithmeticTask:
    return ArithmeticTask(num_questions=3, seed=0, min_steps=2, max_steps=3)


@pytest.fixture(scope="module")
def questions(task):
    return task.load()


def sampler(tiny, *, seed=0, temperature=0.8, max_new_tokens=5):
    model, tokenizer = tiny
    return Sampler(
        model,
        tokenizer,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        batch_size=64,
        backend="transformers",
        progress=False,
    )


class TextScorer:
    """A deterministic verifier that likes letters: a step scores the share of its characters that are
    letters. Records every path it was asked to score, call by call."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, tuple[str, ...], float]]] = []

    def score(self, trajectories):
        scores = [[sum(ch.isalpha() for ch in s) / max(len(s), 1) for s in t.steps] for t in trajectories]
        self.calls.append(
            [(t.question_id, tuple(t.steps), s[-1]) for t, s in zip(trajectories, scores, strict=True)]
        )
        return scores


class ConstantScorer:
    def __init__(self, value: float = 0.5) -> None:
        self.value = value

    def score(self, trajectories):
        return [[self.value] * t.num_steps for t in trajectories]


class GoldPrefixScorer:
    """A perfect verifier of partial solutions: 1.0 for each step while the path follows the gold solution,
    0.0 from its first departure on. (The task's oracle, :class:`OracleScorer`, judges a whole solution: it
    reads the last step of a partial path as its answer, so it is no scorer of prefixes.)"""

    def __init__(self, task, questions, inverted: bool = False) -> None:
        self.gold = {q.id: task.split_steps(q.solution) for q in questions}
        self.inverted = inverted

    def score(self, trajectories):
        scores = []
        for t in trajectories:
            gold = self.gold[t.question_id]
            on_track = next((i for i, s in enumerate(t.steps) if i >= len(gold) or s != gold[i]), t.num_steps)
            labels = [1.0 if i < on_track else 0.0 for i in range(t.num_steps)]
            scores.append([1.0 - v for v in labels] if self.inverted else labels)
        return scores


def nodes_of(search: StepTreeSearch) -> list[SearchNode]:
    return [node for root in search.last_roots.values() for node in root.walk()]


# --- the written reasoner ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written_model(tiny):
    model, tokenizer = tiny
    written = WrittenReasoner(model.config)
    written.generation_config = model.generation_config
    return written.eval(), tokenizer


def written(written_model, task, questions, write):
    """A sampler whose model writes ``write(question, steps so far, j)`` then EOS for the ``j``-th row it is
    given with that path (counted over the whole search)."""
    model, tokenizer = written_model
    prompts = {task.prompt(q, tokenizer): q for q in questions}

    def plan(prompt):
        head = next(p for p in prompts if prompt.startswith(p))
        question, steps = prompts[head], task.split_steps(prompt[len(head) :])
        return _Indexed(lambda j: write(question, steps, j))

    model.setup(tokenizer, plan)
    return Sampler(model, tokenizer, max_new_tokens=40, seed=0, backend="transformers", progress=False)


class _Indexed:
    def __init__(self, text_of) -> None:
        self.text_of = text_of

    def __getitem__(self, j: int) -> str:
        return self.text_of(j)


def gold_steps(task, question) -> list[str]:
    return task.split_steps(question.solution)


def follow_gold(task):
    """Sample 0 writes the gold solution's next step; the others write false equations, each its own."""

    def write(question, steps, j):
        gold = gold_steps(task, question)
        on_track = steps == gold[: len(steps)] and len(steps) < len(gold)
        return f"{gold[len(steps)]}\n" if on_track and j == 0 else f"{j} + {j} = {2 * j + 1}\n"

    return write


# --- the step stop rule ------------------------------------------------------------------------------------------


def test_a_step_ends_after_its_first_separator_that_follows_text(task):
    rule = step_stop_rule(task)
    assert rule.end("\n\n 3 + 4 = 7\n5 + 1 = 6\n") == len("\n\n 3 + 4 = 7\n")
    assert rule.end("3 + 4 = 7") is None and rule.end("\n \n") is None
    assert rule.trigger == "\n"
    paragraphs = ArithmeticTask(num_questions=1, separator="\n\n")
    rule = step_stop_rule(paragraphs)
    assert rule.end("We add.\n3 + 4 = 7\n\nThen") == len("We add.\n3 + 4 = 7\n\n")
    # the answer line ends the step even inside a paragraph: nothing is written after the answer
    assert rule.end("So\nThe answer is 7.\nand more\n\n") == len("So\nThe answer is 7.\n")


# --- beam search --------------------------------------------------------------------------------------------------


def test_beam_search_expands_only_the_width_best_beams_of_each_depth(tiny, task, questions):
    width, candidates, max_depth = 2, 3, 3
    scorer = TextScorer()
    proposer = StepProposer(sampler(tiny), candidates=candidates)
    search = StepBeamSearch(task, [proposer], scorer, width=width, max_depth=max_depth)
    assert isinstance(scorer, StepScorer)
    leaves = search.search(questions[:2])

    nodes = nodes_of(search)
    by_path = {(n.question.id, tuple(n.steps)): n for n in nodes}
    assert len(scorer.calls) == max_depth  # one verifier call per depth, every question at once
    expanded_per_depth = [sum(n.expansions for n in nodes if n.depth == d) for d in range(max_depth)]
    assert all(n.expansions <= 1 for n in nodes)
    for depth, call in enumerate(scorer.calls, start=1):
        for question in questions[:2]:
            # recompute the beams from what the verifier said: the width best unfinished paths, earlier first
            scored = [(path, score) for qid, path, score in call if qid == question.id]
            unfinished = [
                (path, score) for path, score in scored if not by_path[(question.id, path)].finished
            ]
            ranked = sorted(unfinished, key=lambda ps: -ps[1])
            best, rest = ranked[:width], ranked[width:]
            expanded = [
                tuple(n.steps) for n in nodes if n.question is question and n.depth == depth and n.expansions
            ]
            if depth < max_depth:
                assert sorted(expanded) == sorted(path for path, _ in best)
                assert all(by_path[(question.id, path)].pruned for path, _ in rest)
                if rest:  # pruning kept the best
                    assert min(score for _, score in best) >= max(score for _, score in rest)
            else:
                assert not expanded and not unfinished  # the last depth's paths are all leaves

    # one piece per step (the stop rule ends a step at its separator), one step per depth
    assert all(n.depth == len(n.steps) for n in nodes)
    assert proposer.sampler.cost.completions == sum(expanded_per_depth) * candidates
    assert search.last_cost.completions == proposer.sampler.cost.completions
    assert search.last_cost.generated_tokens == proposer.sampler.cost.generated_tokens
    assert search.last_cost.verifier_passes == sum(len(call) for call in scorer.calls) == len(nodes) - 2
    assert search.last_cost.seconds >= proposer.sampler.cost.seconds
    assert [r.expanded for r in search.last_rounds] == expanded_per_depth

    assert leaves and {t.question_id for t in leaves} == {q.id for q in questions[:2]}
    for leaf in leaves:
        assert leaf.outcome is not None and leaf.meta["search"] == "beam"
        assert 1 <= leaf.num_steps <= max_depth
        for key in ("step_scores", "proposers", "step_duplicates"):
            assert len(leaf.meta[key]) == leaf.num_steps
        node = by_path[(leaf.question_id, tuple(leaf.steps))]
        assert leaf.meta["step_scores"] == node.step_scores and node.finished
        for d in range(leaf.num_steps):  # every ancestor was a kept beam
            assert by_path[(leaf.question_id, tuple(leaf.steps[:d]))].expansions == 1
    # the random reasoner writes no newline in 5 tokens: every path is cut at max_depth
    assert {t.meta["finish_reason"] for t in leaves} == {"max_depth"}
    assert len(leaves) == 2 * width * candidates


def test_beam_search_follows_the_verifier_to_the_right_answer(written_model, task, questions):
    question = questions[0]
    gold = gold_steps(task, question)
    proposer = StepProposer(written(written_model, task, questions, follow_gold(task)), candidates=3)
    search = StepBeamSearch(
        task, [proposer], GoldPrefixScorer(task, questions), width=1, max_depth=len(gold) + 1
    )
    leaves = search.search([question])

    right = [t for t in leaves if t.outcome]
    assert len(right) == 1 and right[0].steps == gold and right[0].final_answer == question.answer
    assert right[0].meta["step_scores"] == [1.0] * len(gold)
    assert right[0].meta["finish_reason"] == "stop" and right[0].meta["depth"] == len(gold)
    for node in nodes_of(search):
        if node.depth and node.depth < len(gold) and not node.finished:
            assert node.pruned == (node.value == 0.0)  # the gold step (1.0) was kept, every false one pruned
    # the rest of the leaves: the beam kept after the answer (a false equation, width 1) runs to max_depth
    assert {t.meta["finish_reason"] for t in leaves if not t.outcome} == {"max_depth"}

    # the same reasoner under a verifier that is always wrong never keeps the gold step
    proposer = StepProposer(written(written_model, task, questions, follow_gold(task)), candidates=3)
    wrong = StepBeamSearch(
        task, [proposer], GoldPrefixScorer(task, questions, inverted=True), width=1, max_depth=len(gold) + 1
    )
    assert not any(t.outcome for t in wrong.search([question]))


def test_two_proposers_both_write_steps_and_each_proposes_its_own_number(tiny, task, questions):
    reasoner = StepProposer(sampler(tiny, seed=0, temperature=0.8), candidates=2, name="reasoner")
    diversity = StepProposer(
        sampler(tiny, seed=7, temperature=1.2, max_new_tokens=3), candidates=3, name="diversity"
    )
    search = StepBeamSearch(task, [reasoner, diversity], TextScorer(), width=2, max_depth=3)
    leaves = search.search(questions[:2])

    assert {name for t in leaves for name in t.meta["proposers"]} == {"reasoner", "diversity"}
    expansions = sum(n.expansions for n in nodes_of(search))
    assert reasoner.sampler.cost.completions == 2 * expansions
    assert diversity.sampler.cost.completions == 3 * expansions
    assert search.last_cost.completions == 5 * expansions
    assert [r.completions for r in search.last_rounds] == [
        {"reasoner": 2 * r.expanded, "diversity": 3 * r.expanded} for r in search.last_rounds
    ]
    for node in nodes_of(search):
        if node.expansions:
            written_by = Counter(child.proposers[-1] for child in node.children)
            assert written_by["reasoner"] <= 2 and written_by["diversity"] <= 3
            assert sum(1 + c.duplicates for c in node.children) + node.empty_pieces == 5


def test_a_proposer_shared_by_two_names_is_costed_once(tiny, task, questions):
    shared = sampler(tiny)
    proposers = [StepProposer(shared, 2, "reasoner"), StepProposer(shared, 1, "again")]
    search = StepBeamSearch(task, proposers, TextScorer(), width=1, max_depth=2)
    search.search(questions[:1])
    assert search.last_cost.completions == shared.cost.completions == 3 * 2


# --- what one step can be -----------------------------------------------------------------------------------------


def test_identical_candidates_are_merged_and_still_cost(written_model, task, questions):
    sampler_ = written(written_model, task, questions, lambda q, steps, j: f"{len(steps) + 1} + 1 = 9\n")
    search = StepBeamSearch(task, [StepProposer(sampler_, candidates=4)], TextScorer(), width=3, max_depth=2)
    [leaf] = search.search(questions[:1])
    assert leaf.steps == ["1 + 1 = 9", "2 + 1 = 9"]
    assert leaf.meta["step_duplicates"] == [3, 3]
    assert search.last_cost.completions == 8 and search.last_cost.verifier_passes == 2


def test_a_leading_blank_line_is_skipped_and_an_empty_piece_discarded(written_model, task, questions):
    def write(question, steps, j):
        return "" if j == 1 else "\n\n 3 + 4 = 7\nnot this line\n"

    search = StepBeamSearch(
        task, [StepProposer(written(written_model, task, questions, write), 2)], TextScorer(), max_depth=1
    )
    [leaf] = search.search(questions[:1])
    assert leaf.steps == ["3 + 4 = 7"] and leaf.meta["finish_reason"] == "max_depth"
    root = search.last_roots[questions[0].id]
    assert root.empty_pieces == 1 and len(root.children) == 1
    assert search.last_cost.completions == 2 and search.last_cost.verifier_passes == 1


def test_a_step_ended_by_eos_is_a_leaf(written_model, task, questions):
    write = lambda question, steps, j: "12 + 5 = 17" if j == 0 else f"{j} + 0 = {j}\n"  # noqa: E731
    search = StepBeamSearch(
        task, [StepProposer(written(written_model, task, questions, write), 2)], TextScorer(), max_depth=3
    )
    leaves = search.search(questions[:1])
    eos = [t for t in leaves if t.meta["finish_reason"] == "eos"]
    assert ["12 + 5 = 17"] in [t.steps for t in eos]  # at the first depth, not continued
    assert all(t.steps[-1] == "12 + 5 = 17" for t in eos)
    assert all(t.steps[:-1] == ["1 + 0 = 1"] * (t.num_steps - 1) for t in leaves)
    assert {t.meta["finish_reason"] for t in leaves} == {"eos", "max_depth"}


@pytest.mark.parametrize("search_class", [StepBeamSearch, StepMCTS])
def test_no_leaf_is_deeper_than_max_depth(written_model, task, questions, search_class):
    """A path that never states an answer is cut at max_depth expansions: for a math task (one step per
    expansion) exactly max_depth steps."""
    write = lambda question, steps, j: f"{len(steps)} + {j} = {len(steps) + j}\n"  # noqa: E731
    proposer = StepProposer(written(written_model, task, questions, write), 2)
    extra = {"simulations": 12} if search_class is StepMCTS else {}
    search = search_class(task, [proposer], TextScorer(), max_depth=3, **extra)
    leaves = search.search(questions[:1])
    assert leaves
    assert all(t.num_steps == t.meta["depth"] == 3 for t in leaves)
    assert {t.meta["finish_reason"] for t in leaves} == {"max_depth"}
    assert max(n.depth for n in nodes_of(search)) == 3
    assert all(not n.children for n in nodes_of(search) if n.depth == 3)


# --- MCTS ---------------------------------------------------------------------------------------------------------


def test_mcts_runs_its_simulations_and_visit_counts_add_up(tiny, task, questions):
    simulations = 6
    proposer = StepProposer(sampler(tiny), candidates=2)
    search = StepMCTS(task, [proposer], TextScorer(), simulations=simulations, max_depth=2)
    leaves = search.search(questions[:2])

    assert len(search.last_rounds) == simulations
    nodes = nodes_of(search)
    for root in search.last_roots.values():
        assert root.visits == simulations
    for node in nodes:
        assert node.visits == node.ended_here + sum(c.visits for c in node.children)
        assert node.expansions <= 1
    # every node but the roots was scored once; every expansion sampled each candidate
    assert search.last_cost.verifier_passes == len(nodes) - 2
    assert proposer.sampler.cost.completions == 2 * sum(n.expansions for n in nodes)
    assert search.last_cost.completions == proposer.sampler.cost.completions
    assert leaves and all(t.meta["search"] == "mcts" and t.outcome is not None for t in leaves)
    assert sorted(map(id, (n.trajectory for n in nodes if n.finished))) == sorted(map(id, leaves))


def right_or_wrong_answer(task):
    """Sample 0 writes the gold solution's next step, sample 1 a wrong answer line."""

    def write(question, steps, j):
        gold = gold_steps(task, question)
        if j % 2 == 1:
            return "The answer is 99999.\n"
        return f"{gold[len(steps)]}\n" if steps == gold[: len(steps)] else "1 + 1 = 3\n"

    return write


def test_mcts_backs_up_the_outcome_of_a_right_answer(written_model, task, questions):
    question = questions[0]
    gold = gold_steps(task, question)

    def run(use_outcome):
        proposer = StepProposer(written(written_model, task, questions, right_or_wrong_answer(task)), 2)
        search = StepMCTS(
            task,
            [proposer],
            ConstantScorer(0.5),
            simulations=4 * len(gold),
            exploration=0.0,
            use_outcome=use_outcome,
            max_depth=len(gold) + 1,
        )
        return search, search.search([question])

    search, leaves = run(use_outcome=True)
    [right] = [t for t in leaves if t.outcome]
    assert right.steps == gold
    nodes = {tuple(n.steps): n for n in nodes_of(search)}
    assert nodes[tuple(gold)].reward == 1.0
    assert all(n.reward == 0.0 for n in nodes.values() if n.finished and not n.trajectory.outcome)
    parent = nodes[tuple(gold[:-1])]
    assert parent.value_sum >= 1.0  # the right answer's 1.0 was backed up when its parent was expanded
    root = search.last_roots[question.id]
    assert root.mean_value > 0.5  # only an outcome can back up more than the verifier's 0.5

    search, _ = run(use_outcome=False)
    root = search.last_roots[question.id]
    assert root.value_sum == pytest.approx(0.5 * root.visits)  # the verifier's score only


def test_mcts_width_keeps_the_best_children(tiny, task, questions):
    search = StepMCTS(
        task, [StepProposer(sampler(tiny), candidates=4)], TextScorer(), simulations=3, width=2, max_depth=3
    )
    search.search(questions[:1])
    expanded = [n for n in nodes_of(search) if n.expansions]
    assert len(expanded) == 3
    for node in expanded:  # the random reasoner's 4 candidates differ: 2 kept, 2 cut
        assert len(node.children) == 2 and node.cut_children == 2
    # the cut ones were scored too (the verifier saw them before the cap)
    assert search.last_cost.verifier_passes == 4 * len(expanded)
    assert sum(r.dropped for r in search.last_rounds) == 2 * len(expanded)
    scores = search.scorer.calls[0]
    kept = {tuple(c.steps) for c in search.last_roots[questions[0].id].children}
    assert min(s for _, path, s in scores if path in kept) >= max(
        s for _, path, s in scores if path not in kept
    )


# --- determinism, cost, validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("search_class", [StepBeamSearch, StepMCTS])
def test_equal_seeds_give_equal_leaves_and_another_seed_others(tiny, task, questions, search_class):
    def leaves(seed):
        proposers = [
            StepProposer(sampler(tiny, seed=seed), 2, "reasoner"),
            StepProposer(sampler(tiny, seed=seed + 100, temperature=1.0), 2, "diversity"),
        ]
        extra = {"simulations": 4} if search_class is StepMCTS else {"width": 2}
        found = search_class(task, proposers, TextScorer(), max_depth=2, **extra).search(questions[:2])
        return [(t.question_id, t.steps, t.outcome, t.meta) for t in found]

    first = leaves(0)
    assert first and leaves(0) == first
    assert leaves(1) != first  # the random reasoner at temperature 0.8-1 never repeats 5 tokens


def test_cost_is_per_call_and_cumulative(tiny, task, questions):
    proposer = StepProposer(sampler(tiny), 2)
    search = StepBeamSearch(task, [proposer], TextScorer(), width=1, max_depth=2)
    search.search(questions[:1])
    first = search.last_cost
    search.search(questions[1:2])
    assert search.cost == first + search.last_cost
    assert search.cost.completions == proposer.sampler.cost.completions
    assert search.search([]) == [] and search.last_cost == Cost(seconds=search.last_cost.seconds)


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda p, s, t: StepProposer(p.sampler, candidates=0), "candidates"),
        (lambda p, s, t: StepBeamSearch(t, [p], s, width=0), "width"),
        (lambda p, s, t: StepBeamSearch(t, [p], s, max_depth=0), "max_depth"),
        (lambda p, s, t: StepBeamSearch(t, [], s), "proposers"),
        (lambda p, s, t: StepMCTS(t, [p], s, simulations=0), "simulations"),
        (lambda p, s, t: StepMCTS(t, [p], s, exploration=-0.1), "exploration"),
        (lambda p, s, t: StepMCTS(t, [p], s, width=0), "width"),
        (lambda p, s, t: StepMCTS(t, [p, p], s), "names"),
    ],
)
def test_bad_settings_are_refused_naming_the_argument(tiny, task, make, argument):
    proposer = StepProposer(sampler(tiny), 1)
    with pytest.raises(ValueError, match=argument):
        make(proposer, TextScorer(), task)
    assert proposer.sampler.cost == Cost()


def test_repeated_question_ids_are_refused(tiny, task, questions):
    search = StepBeamSearch(task, [StepProposer(sampler(tiny), 1)], TextScorer())
    with pytest.raises(ValueError, match="ids"):
        search.search([questions[0], questions[0]])


def test_questions_known_beforehand_are_optional(tiny, task, questions):
    """``questions=`` (as TaskRolloutSampler takes them) changes nothing: searched questions are always known."""

    def leaves(**known):
        proposer = StepProposer(sampler(tiny), 2)
        search = StepBeamSearch(task, [proposer], TextScorer(), width=1, max_depth=2, **known)
        return [(t.steps, t.outcome) for t in search.search(questions[:1])]

    assert leaves(questions=questions) == leaves(questions={q.id: q for q in questions}) == leaves()
