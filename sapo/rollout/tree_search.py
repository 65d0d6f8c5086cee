"""Step-level tree search pruned by a verifier: SPHERE's self-generation stage, with its diversity induction.

SPHERE (2025) does not sample whole solutions: it grows them one step at a time as a tree. At each node the
reasoner proposes a handful of candidate next steps (about 5, at temperature 0.8), a process reward model
(the verifier) scores the partial solutions, and the tree is pruned (:class:`StepBeamSearch`) or searched
(:class:`StepMCTS`). Its *diversity induction* adds a second, smaller model that also proposes candidate
steps at every node (about 10 per node), so that the leaves cover several valid paths rather than the
reasoner's favourite one. Here every model that proposes steps is a :class:`StepProposer`: a
:class:`~sapo.rollout.sampler.Sampler` (any causal LM, its own tokenizer: models exchange text, not tokens)
and how many candidates it proposes per node.

**One step.** A proposer continues ``task.prompt(question) + task.completion_text(path)`` and stops just
after the first step separator that follows some non-whitespace text (:func:`step_stop_rule`), or at the
task's own end of a completion (the answer line) if that comes first, or at EOS, or at its sampler's
``max_new_tokens`` (the budget of *one* step). The piece is split with ``task.split_steps``; a piece with no
step (whitespace, an immediate EOS) is discarded. Candidates of one node whose steps are the same text
(lower-cased, white space collapsed) are merged into the first; the node counts the merged ones.

**Finished paths.** A path is finished, a leaf, when its last piece ended with EOS (``"eos"``), when the task
finds the completion finished (``task.completion_end``: the answer line is written; ``"stop"``, as every
sampler of the library calls it), or when it is ``max_depth`` expansions deep (``"max_depth"``). The stop
rule ends a piece at its first separator, so for a task that splits on its separator (every math task) each
expansion adds exactly one step and a leaf has at most ``max_depth`` steps; a task that splits a piece
further (code: lines of the program) can have more steps than expansions, and ``max_depth`` bounds the
expansions. Leaves are :class:`~sapo.data.trajectory.Trajectory` objects checked by the task in the round
they appear, deduplicated per question by ``task.dedup_key``; their ``meta`` holds ``search`` (``"beam"`` or
``"mcts"``), ``finish_reason``, ``depth`` (expansions), ``generated_tokens`` (of the pieces on the path) and,
one entry per step, ``step_scores`` (the verifier's scores of the whole path), ``proposers`` (the name of
the proposer that wrote each step) and ``step_duplicates`` (identical candidates merged into it).

**Batching and cost.** Every round (one depth of beam search, one simulation of MCTS) makes one
``sampler.generate`` call per proposer for all the nodes it expands, across all questions, and one
``scorer.score`` call for all the new paths. :attr:`StepTreeSearch.last_cost` is the same
:class:`~sapo.data.trajectory.Cost` record as every rollout's: the sum of what each proposer's sampler spent
during the call (discarded and merged candidates included: they were generated), ``verifier_passes`` = the
partial paths scored, ``seconds`` = the wall time of the whole call; :attr:`StepTreeSearch.cost` is the
running total.

**Determinism.** Each sampler derives a fresh seed for every call from its own seed, and a search makes the
same calls in the same order for the same questions, so two searches whose samplers have the same seeds
(and a deterministic scorer) return the same leaves: a caller resumes a stopped run by chunks of questions.
A sampler's seed for a call depends on how many calls it made before, so such a caller gives each chunk
fresh samplers seeded from the chunk (as :func:`~sapo.rollout.generate.derive_seed` does), not one sampler
carried over from the chunks before.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from sapo.data.tasks.base import Question, Task
from sapo.data.trajectory import Cost, Trajectory
from sapo.rollout.generate import Generation, StopRule
from sapo.rollout.sampler import Sampler, deduplicate
from sapo.supervision.protocols import StepScorer

__all__ = [
    "SearchNode",
    "SearchRound",
    "StepBeamSearch",
    "StepMCTS",
    "StepProposer",
    "StepTreeSearch",
    "step_stop_rule",
]


@dataclass
class StepProposer:
    """Who proposes candidate next steps at a node, and how many.

    Args:
        sampler: the model's :class:`~sapo.rollout.sampler.Sampler`: its temperature and top_p are the
            proposal's (SPHERE: 0.8 for the reasoner), its ``max_new_tokens`` is the budget of ONE step, its
            seed makes the search reproducible.
        candidates: candidate steps sampled per node (SPHERE: about 5 from the reasoner, about 10 from the
            diversity model).
        name: recorded for every step it wrote in the leaves' ``meta["proposers"]`` ("reasoner",
            "diversity" for SPHERE's second model); the names of one search's proposers must differ.
    """

    sampler: Sampler
    candidates: int = 5
    name: str = "reasoner"

    def __post_init__(self) -> None:
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or self.candidates < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {self.candidates!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")


def step_stop_rule(task: Task) -> StopRule:
    """Where one proposed step ends: just after the first occurrence of ``task.separator`` that follows some
    non-whitespace text, or where ``task.completion_end`` ends the text (the answer line), whichever comes
    first. Leading separators are skipped, so a model that opens with a blank line still writes a step."""
    separator = task.separator
    ends_early = type(task).completion_end is not Task.completion_end

    def end(text: str) -> int | None:
        start = len(text) - len(text.lstrip())
        found = text.find(separator, start) if start < len(text) else -1
        step_end = None if found < 0 else found + len(separator)
        task_end = task.completion_end(text) if ends_early else None
        ends = [e for e in (step_end, task_end) if e is not None]
        return min(ends) if ends else None

    # A token that completes the separator contains its last character, so that is the trigger; the task's
    # own rule is checked at newlines, so a separator ending in anything else is checked after every token.
    trigger = separator[-1] if not ends_early or separator.endswith("\n") else None
    return StopRule(end, trigger)


@dataclass(eq=False)
class SearchNode:
    """One node of a search tree: a partial solution (its path of steps from the question).

    Attributes:
        question: the question the path answers.
        steps: every step of the path, from the first.
        proposers: per step, the name of the proposer that wrote it.
        step_scores: the verifier's scores of the path, one per step (empty at the root).
        step_duplicates: per step, the identical candidates merged into it under its parent (counted on
            the last step of a piece that split into several).
        depth: expansions from the root (0 at the root).
        generated_tokens: tokens generated for the pieces on the path.
        finish_reason: ``None`` while the path goes on; ``"stop"``, ``"eos"`` or ``"max_depth"`` at a leaf.
        trajectory: the checked leaf (finished nodes only).
        reward: what MCTS backs up for it: the outcome (1.0 right, 0.0 wrong) of a finished path under
            ``use_outcome``, else its verifier value (beam search sets it too, and ranks by :attr:`value`).
            ``None`` at the root.
        children: the candidates kept under it, in order (proposers in order, then samples).
        expansions: how often it was expanded (MCTS expands a node again only when it got no child).
        empty_pieces: candidates sampled under it that brought no step (discarded).
        duplicates: candidates merged into this node (the same steps as it, under the same parent).
        cut_children: candidates dropped by MCTS's ``width`` cap.
        pruned: beam search dropped this unfinished node (not among the ``width`` best of its depth).
        visits: MCTS visit count N.
        value_sum: the sum of the values backed up through it (its mean is :attr:`mean_value`).
        ended_here: MCTS simulations that ended at it (expanded it or evaluated it as a leaf); so
            ``visits == ended_here + sum(child.visits)``.
    """

    question: Question
    steps: list[str] = field(default_factory=list)
    proposers: list[str] = field(default_factory=list)
    step_scores: list[float] = field(default_factory=list)
    step_duplicates: list[int] = field(default_factory=list)
    depth: int = 0
    generated_tokens: int = 0
    finish_reason: str | None = None
    trajectory: Trajectory | None = None
    reward: float | None = None
    children: list[SearchNode] = field(default_factory=list)
    expansions: int = 0
    empty_pieces: int = 0
    duplicates: int = 0
    cut_children: int = 0
    pruned: bool = False
    visits: int = 0
    value_sum: float = 0.0
    ended_here: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def value(self) -> float | None:
        """The verifier's score of the path's last step (``None`` at the root)."""
        return self.step_scores[-1] if self.step_scores else None

    @property
    def mean_value(self) -> float:
        """The mean value backed up through the node (0 before its first visit)."""
        return self.value_sum / self.visits if self.visits else 0.0

    def path(self, **meta: object) -> Trajectory:
        """The path as an unchecked trajectory with ``meta``."""
        q = self.question
        return Trajectory(q.id, q.question, list(self.steps), gold_answer=q.answer, meta=dict(meta))

    def walk(self) -> Iterator[SearchNode]:
        """The node and everything under it, depth first, children in order."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass
class SearchRound:
    """What one round did (one depth of beam search, one simulation of MCTS), summed over the questions.

    Attributes:
        number: the depth (beam search) or the simulation (MCTS), from 1.
        expanded: nodes expanded (each got every proposer's candidates); completions: those, by proposer.
        children: new nodes after merging identical candidates (each scored by the verifier once).
        empty, duplicates: candidates discarded for bringing no step, merged into an identical sibling.
        finished: new nodes that are finished paths (before MCTS's width cap).
        kept: beam search: unfinished new nodes kept as beams; MCTS: new nodes kept under the width cap.
        dropped: beam search: unfinished new nodes pruned; MCTS: new nodes cut by the width cap.
    """

    number: int
    expanded: int = 0
    completions: dict[str, int] = field(default_factory=dict)
    children: int = 0
    empty: int = 0
    duplicates: int = 0
    finished: int = 0
    kept: int = 0
    dropped: int = 0


class StepTreeSearch:
    """The shared part of the step-level searches: validation, node expansion, scoring, leaves and cost.

    Subclasses decide which nodes to expand (:meth:`_search`); :meth:`search` returns the checked leaves.

    Args:
        task: builds prompts, splits and joins steps, says when a completion is finished, checks answers.
        proposers: who proposes candidate steps at every node (the reasoner first; SPHERE's diversity
            induction adds a smaller model). Their tokenizers may differ: they exchange text.
        scorer: the verifier (a :class:`~sapo.supervision.protocols.StepScorer`): one score in [0, 1] per
            step of every partial path. A node's value is the score of its last step. It must score a
            partial solution as a prefix, as a PRM does; :class:`~sapo.supervision.oracle_scorer.OracleScorer`
            judges whole solutions (it reads a partial path's last step as its final answer, so it scores
            that step wrong) and is no prefix scorer.
        max_depth: expansions along a path at most (for math: steps); a path this deep is a leaf
            (``finish_reason="max_depth"``).
        dedup_key: when two leaves of one question are the same solution; default ``task.dedup_key``.
        questions: questions known beforehand, by id or as a list (as :class:`~sapo.rollout.TaskRolloutSampler`
            takes them); optional, since those given to :meth:`search` are always known to the task's check.

    Attributes:
        cost: what every search so far cost (see the module docstring).
        last_cost: what the last :meth:`search` call cost.
        last_roots: the trees of the last call, by question id (for inspection and logs).
        last_rounds: what each round of the last call did.
    """

    #: ``meta["search"]`` of the leaves
    search_name = "tree"

    def __init__(
        self,
        task: Task,
        proposers: Sequence[StepProposer],
        scorer: StepScorer,
        *,
        max_depth: int = 8,
        dedup_key: Callable[[Trajectory], Hashable] | None = None,
        questions: Mapping[str, Question] | Sequence[Question] = (),
    ) -> None:
        proposers = list(proposers)
        if not proposers:
            raise ValueError("proposers must hold at least one StepProposer, got none")
        for i, proposer in enumerate(proposers):
            if not isinstance(proposer, StepProposer):
                raise TypeError(f"proposers[{i}] must be a StepProposer, got {type(proposer).__name__}")
        names = [p.name for p in proposers]
        if len(set(names)) < len(names):
            raise ValueError(f"proposers must have different names (they label the steps), got {names}")
        _check_positive("max_depth", max_depth)
        self.task = task
        self.proposers = proposers
        self.scorer = scorer
        self.max_depth = max_depth
        self.dedup_key = dedup_key or task.dedup_key
        self.questions = dict(questions) if isinstance(questions, Mapping) else {q.id: q for q in questions}
        self.stop = step_stop_rule(task)
        self.cost = Cost()
        self.last_cost = Cost()
        self.last_roots: dict[str, SearchNode] = {}
        self.last_rounds: list[SearchRound] = []
        self._questions: dict[str, Question] = {}
        self._prompts: dict[tuple[int, str], str] = {}
        self._verifier_passes = 0

    def search(self, questions: Sequence[Question]) -> list[Trajectory]:
        """The leaves of every question's tree, checked by the task and deduplicated per question by
        ``dedup_key``: questions in order, each one's leaves depth first in the tree's order."""
        questions = list(questions)
        ids = [q.id for q in questions]
        if len(set(ids)) < len(ids):
            raise ValueError(f"questions must have different ids, got {len(ids) - len(set(ids))} repeated")
        started = time.perf_counter()
        samplers = list({id(p.sampler): p.sampler for p in self.proposers}.values())  # a shared one once
        before = [replace(s.cost) for s in samplers]
        self._questions = {**self.questions, **{q.id: q for q in questions}}
        self._prompts = {}
        self._verifier_passes = 0
        self.last_rounds = []
        roots = self._search(questions) if questions else []
        self.last_roots = {q.id: root for q, root in zip(questions, roots, strict=True)}
        leaves = [node.trajectory for root in roots for node in root.walk() if node.trajectory is not None]
        kept = deduplicate(leaves, self.dedup_key)
        cost = Cost()
        for sampler, cost_before in zip(samplers, before, strict=True):
            cost.add(sampler.cost - cost_before)
        cost.verifier_passes += self._verifier_passes
        cost.seconds = time.perf_counter() - started
        self.last_cost = cost
        self.cost.add(cost)
        return kept

    def _search(self, questions: list[Question]) -> list[SearchNode]:
        """Grow one tree per question (in order); returns their roots."""
        raise NotImplementedError

    # --- expansion ---------------------------------------------------------------------------------------------
    def _expand(self, nodes: Sequence[SearchNode], record: SearchRound, description: str) -> list[SearchNode]:
        """Give every node its children: one ``generate`` call per proposer for all the nodes, identical
        candidates of a node merged, every new path scored in one verifier call, the finished ones checked
        in one task call. Returns the new children, node by node, in order."""
        record.expanded += len(nodes)
        proposals: list[list[list[Generation]]] = []
        for index, proposer in enumerate(self.proposers):
            prompts = [self._prompt(index, node) for node in nodes]
            named = f"{description} ({proposer.name})"
            proposals.append(
                proposer.sampler.generate(prompts, proposer.candidates, stop=self.stop, description=named)
            )
            record.completions[proposer.name] = len(nodes) * proposer.candidates  # one expansion per round
        new: list[SearchNode] = []
        for i, node in enumerate(nodes):
            node.expansions += 1
            by_steps: dict[tuple[str, ...], SearchNode] = {}
            for proposer, generations in zip(self.proposers, proposals, strict=True):
                for generation in generations[i]:
                    child = self._child(node, proposer, generation)
                    if child is None:
                        node.empty_pieces += 1
                        record.empty += 1
                        continue
                    key = tuple(" ".join(s.lower().split()) for s in child.steps[len(node.steps) :])
                    first = by_steps.setdefault(key, child)
                    if first is not child:
                        first.duplicates += 1
                        first.step_duplicates[-1] += 1
                        record.duplicates += 1
            node.children.extend(by_steps.values())
            new.extend(by_steps.values())
        record.children += len(new)
        self._score(new)
        self._check([c for c in new if c.finished])
        record.finished += sum(c.finished for c in new)
        return new

    def _prompt(self, proposer_index: int, node: SearchNode) -> str:
        key = (proposer_index, node.question.id)
        if key not in self._prompts:  # a few-shot or chat prompt is built once per question and proposer
            tokenizer = self.proposers[proposer_index].sampler.tokenizer
            self._prompts[key] = self.task.prompt(node.question, tokenizer)
        return self._prompts[key] + self.task.completion_text(node.steps)

    def _child(self, parent: SearchNode, proposer: StepProposer, generation: Generation) -> SearchNode | None:
        """The node ``generation`` makes under ``parent``, or ``None`` when it brings no step."""
        piece = self.task.split_steps(generation.text)
        if not piece:
            return None
        before = self.task.completion_text(parent.steps)
        text = before + self.task.completion_text(piece)
        end = self.task.completion_end(text)
        if end is not None:
            # the stop rule already ends the piece at the answer line; this also covers a piece that ended
            # for another reason (the step budget) but whose text, once joined, reads as finished
            piece = self.task.split_steps(text[len(before) : end]) or piece
            reason: str | None = "stop"
        elif generation.finish_reason == "eos":
            reason = "eos"
        else:
            reason = "max_depth" if parent.depth + 1 >= self.max_depth else None
        return SearchNode(
            question=parent.question,
            steps=[*parent.steps, *piece],
            proposers=[*parent.proposers, *[proposer.name] * len(piece)],
            step_duplicates=[*parent.step_duplicates, *[0] * len(piece)],
            depth=parent.depth + 1,
            generated_tokens=parent.generated_tokens + generation.num_tokens,
            finish_reason=reason,
        )

    def _score(self, nodes: Sequence[SearchNode]) -> None:
        """Score every node's path in one verifier call (a pass each)."""
        if not nodes:
            return
        paths = [n.path() for n in nodes]
        scores = self.scorer.score(paths)
        self._verifier_passes += len(paths)
        if len(scores) != len(paths):
            raise ValueError(f"the scorer returned {len(scores)} score lists for {len(paths)} paths")
        for i, (node, node_scores) in enumerate(zip(nodes, scores, strict=True)):
            if len(node_scores) != len(node.steps):
                raise ValueError(
                    f"the scorer returned {len(node_scores)} scores for path {i} of question "
                    f"{node.question.id!r}, which has {len(node.steps)} steps"
                )
            node.step_scores = [float(v) for v in node_scores]
            node.reward = node.value

    def _check(self, nodes: Sequence[SearchNode]) -> None:
        """Build the leaves of finished nodes and check them with the task, in one batch."""
        if not nodes:
            return
        leaves = [
            n.path(
                search=self.search_name,
                finish_reason=n.finish_reason,
                depth=n.depth,
                generated_tokens=n.generated_tokens,
                step_scores=list(n.step_scores),
                proposers=list(n.proposers),
                step_duplicates=list(n.step_duplicates),
            )
            for n in nodes
        ]
        self.task.check(leaves, self._questions)
        for node, leaf in zip(nodes, leaves, strict=True):
            node.trajectory = leaf


class StepBeamSearch(StepTreeSearch):
    """Step-level beam search: expand every beam, keep the ``width`` best unfinished children per question.

    At each depth every beam of every question is expanded (one ``generate`` call per proposer, one verifier
    call), the new finished paths become leaves, and of each question's new unfinished paths the ``width``
    with the highest verifier value (the score of their last step) stay as beams; ties go to the earlier one
    (beams in order, proposers in order, samples in order), so the search is deterministic. The others are
    pruned (``node.pruned``). It ends when no beam is left or at ``max_depth``, where every path is a leaf.
    So depth ``d`` samples ``beams(d) * sum(candidates)`` steps, ``beams(d) <= width`` per question.

    Args:
        width: beams kept per question after each depth (default 4).
        The rest as :class:`StepTreeSearch`.
    """

    search_name = "beam"

    def __init__(
        self,
        task: Task,
        proposers: Sequence[StepProposer],
        scorer: StepScorer,
        *,
        width: int = 4,
        max_depth: int = 8,
        dedup_key: Callable[[Trajectory], Hashable] | None = None,
        questions: Mapping[str, Question] | Sequence[Question] = (),
    ) -> None:
        _check_positive("width", width)
        super().__init__(
            task, proposers, scorer, max_depth=max_depth, dedup_key=dedup_key, questions=questions
        )
        self.width = width

    def _search(self, questions: list[Question]) -> list[SearchNode]:
        roots = [SearchNode(q) for q in questions]
        beams = [[root] for root in roots]
        for depth in range(1, self.max_depth + 1):
            active = [node for question_beams in beams for node in question_beams]
            if not active:
                break
            record = SearchRound(depth)
            self.last_rounds.append(record)
            self._expand(active, record, f"tree search depth {depth}")
            for q, question_beams in enumerate(beams):
                unfinished = [c for node in question_beams for c in node.children if not c.finished]
                ranked = sorted(unfinished, key=lambda c: -c.value)  # stable: ties keep their order
                for pruned in ranked[self.width :]:
                    pruned.pruned = True
                beams[q] = ranked[: self.width]
                record.kept += len(beams[q])
                record.dropped += len(ranked) - len(beams[q])
        return roots


class StepMCTS(StepTreeSearch):
    """Step-level Monte Carlo tree search guided by the verifier.

    Each of ``simulations`` rounds, for every question at once: **select** a node from the root, going to
    an unvisited child first (the one with the highest verifier value, the earlier on ties), else the child
    with the highest UCT score ``mean backed-up value + exploration * sqrt(ln N_parent / N_child)``, until
    a node without children or a finished one; **expand** it (one ``generate`` call per proposer for all the
    questions' selected nodes, one verifier call for all their children; a node that got no child stays
    unexpanded and is expanded again when selected); **back up** one value along the path (every node's
    visits + 1, value sum + value). The value backed up after an expansion is the best child's reward (the
    best continuation found: the search follows the verifier's greedy preference, as SPHERE's pruning
    does), the node's own when it got no child; at a finished node it is that node's reward again.

    A finished path's reward is its outcome, 1.0 right and 0.0 wrong, under ``use_outcome`` (the default:
    self-generation runs on training questions, whose gold answers are known, and the true value of a
    finished solution is whether it is right); without it, and for every unfinished path, the reward is the
    verifier's score of its last step. The leaves are all the finished paths in the trees.

    Args:
        simulations: rounds (selections, each expanding or re-evaluating one node per question).
        exploration: the UCT constant c (0: greedy on the backed-up means); 1.0 by default (the textbook
            UCT value is sqrt(2) for rewards in [0, 1]).
        width: children kept per expanded node, the best by reward (the earlier on ties); ``None`` (the
            default) keeps every candidate left after merging identical ones.
        use_outcome: back up the outcome of a finished path instead of its verifier score (see above).
        The rest as :class:`StepTreeSearch`.
    """

    search_name = "mcts"

    def __init__(
        self,
        task: Task,
        proposers: Sequence[StepProposer],
        scorer: StepScorer,
        *,
        simulations: int = 16,
        exploration: float = 1.0,
        width: int | None = None,
        use_outcome: bool = True,
        max_depth: int = 8,
        dedup_key: Callable[[Trajectory], Hashable] | None = None,
        questions: Mapping[str, Question] | Sequence[Question] = (),
    ) -> None:
        _check_positive("simulations", simulations)
        if isinstance(exploration, bool) or not isinstance(exploration, (int, float)) or not exploration >= 0:
            raise ValueError(f"exploration must be a number >= 0, got {exploration!r}")
        if width is not None:
            _check_positive("width", width)
        super().__init__(
            task, proposers, scorer, max_depth=max_depth, dedup_key=dedup_key, questions=questions
        )
        self.simulations = simulations
        self.exploration = float(exploration)
        self.width = width
        self.use_outcome = use_outcome

    def _search(self, questions: list[Question]) -> list[SearchNode]:
        roots = [SearchNode(q) for q in questions]
        for number in range(1, self.simulations + 1):
            record = SearchRound(number)
            self.last_rounds.append(record)
            paths = [self._select(root) for root in roots]
            to_expand = [path[-1] for path in paths if not path[-1].finished]
            if to_expand:
                self._expand(to_expand, record, f"tree search round {number}/{self.simulations}")
                for node in to_expand:
                    self._cap(node, record)
            for path in paths:
                end = path[-1]
                if end.children and not end.finished:
                    value = max(child.reward for child in end.children)  # type: ignore[type-var]
                else:
                    value = end.reward if end.reward is not None else 0.0
                end.ended_here += 1
                for node in path:
                    node.visits += 1
                    node.value_sum += value
        return roots

    def _select(self, root: SearchNode) -> list[SearchNode]:
        node, path = root, [root]
        while node.children and not node.finished:
            unvisited = [c for c in node.children if c.visits == 0]
            if unvisited:
                node = max(unvisited, key=lambda c: c.value)  # max keeps the first of equals
            else:
                log_visits = math.log(node.visits)
                node = max(
                    node.children,
                    key=lambda c: c.mean_value + self.exploration * math.sqrt(log_visits / c.visits),
                )
            path.append(node)
        return path

    def _check(self, nodes: Sequence[SearchNode]) -> None:
        super()._check(nodes)
        if self.use_outcome:
            for node in nodes:
                node.reward = 1.0 if node.trajectory.outcome else 0.0  # type: ignore[union-attr]

    def _cap(self, node: SearchNode, record: SearchRound) -> None:
        """Keep the node's ``width`` best children by reward (the earlier on ties), in their order."""
        if self.width is not None and len(node.children) > self.width:
            best = set(map(id, sorted(node.children, key=lambda c: -c.reward)[: self.width]))  # type: ignore[operator]
            node.cut_children += len(node.children) - self.width
            record.dropped += len(node.children) - self.width
            node.children = [c for c in node.children if id(c) in best]
        record.kept += len(node.children)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
