"""Synthetic multi-step arithmetic word problems: the embedded default task, with an exact step oracle.

A problem is a story about one quantity (apples in a basket, money in a jar, pages read) that changes step by
step: items are added, taken away, multiplied ("twice as many"), divided ("shares them equally among 4 and
keeps one share"), or added or taken away in groups ("buys 3 packs of 6", which takes two steps). Every
intermediate value is a whole number between 1 and ``max_value``. The gold solution has one equation per
line ("12 + 5 = 17") and ends with "The answer is N".

**Splits.** Question ``i`` of a split is drawn from its own random stream, seeded by ``(seed, index)`` where
``index = SPLIT_OFFSETS[split] + i``; the offsets are a million apart (train 0, validation 1,000,000, test
2,000,000, few-shot examples 3,000,000), so the splits come from disjoint streams and a question does not
depend on how many others are generated. Two streams could only produce the same text by drawing the same
story, names and numbers; the tests check that the first thousands of train and test questions share none.

**Oracle.** :func:`~sapo.data.tasks.math.judge_steps` with the problem's own computation as the gold
computation and the numbers of the question as the given numbers, in exact mode: every number a step uses
or states must come from the question or from an earlier correct step, and every value it computes must be
one the gold solution computes. The rule is that a step is wrong when its equation is false or uses a value
that is neither given in the question nor computed by an earlier step, and here the values a step may
compute are the gold solution's, so a correct but different order of operations (adding two increases
first) is marked wrong.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

from sapo.data.steps import DEFAULT_SEPARATOR
from sapo.data.tasks.base import Question
from sapo.data.tasks.math import GoldComputation, MathTask, question_numbers

__all__ = ["ArithmeticTask", "ArithmeticProblem", "Scenario", "SCENARIOS", "generate_problem"]

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


@dataclass(frozen=True)
class Scenario:
    """A story template: what is counted and how each kind of change is told.

    Placeholders: ``{name}``, ``{He}``/``{he}``, ``{His}``/``{his}``, ``{him}``, ``{friend}``, ``{items}``
    (plural noun), ``{n}`` (the operand), and for group steps ``{groups}`` and ``{size}``.
    """

    items: str
    start: tuple[str, ...]
    add: tuple[str, ...]
    sub: tuple[str, ...]
    mul: tuple[str, ...]
    div: tuple[str, ...]
    add_groups: tuple[str, ...]
    sub_groups: tuple[str, ...]
    ask: tuple[str, ...]


#: the twelve stories; each kind of change has several phrasings, chosen at random
SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        items="apples",
        start=("{name} picks {n} apples at the orchard.", "{name} has a basket with {n} apples."),
        add=("{He} picks {n} more apples.", "{friend} gives {him} another {n} apples."),
        sub=("{He} eats {n} of the apples.", "{He} gives {n} apples to {friend}."),
        mul=("By evening {he} has {n} times as many apples as before.",),
        div=("{He} sorts the apples into {n} equal piles and keeps only one pile.",),
        add_groups=("{He} buys {groups} bags with {size} apples in each bag.",),
        sub_groups=("{He} bakes {groups} pies that use {size} apples each.",),
        ask=("How many apples does {name} have now?", "How many apples are left in the basket?"),
    ),
    Scenario(
        items="marbles",
        start=("{name} owns {n} marbles.", "There are {n} marbles in {name}'s jar."),
        add=("{He} wins {n} marbles in a game.", "{friend} adds {n} marbles to the jar."),
        sub=("{He} loses {n} marbles at school.", "{He} trades away {n} marbles."),
        mul=("After a lucky week {his} collection is {n} times as big.",),
        div=("{He} splits the marbles evenly among {n} jars and keeps one jar.",),
        add_groups=("{He} gets {groups} boxes of {size} marbles.",),
        sub_groups=("{He} gives {groups} friends {size} marbles each.",),
        ask=("How many marbles does {name} have at the end?", "How many marbles are in the jar now?"),
    ),
    Scenario(
        items="stickers",
        start=("{name} starts with {n} stickers.", "{name}'s album holds {n} stickers."),
        add=("{He} buys {n} new stickers.", "{friend} sends {him} {n} stickers."),
        sub=("{He} puts {n} stickers on {his} notebook.", "{He} gives away {n} stickers."),
        mul=("A sticker sale lets {him} end up with {n} times as many stickers.",),
        div=("{He} divides the stickers equally among {n} pages and counts the stickers on one page.",),
        add_groups=("{He} collects {groups} sheets with {size} stickers on each sheet.",),
        sub_groups=("{He} decorates {groups} cards with {size} stickers per card.",),
        ask=("How many stickers does {name} have now?", "How many stickers are there at the end?"),
    ),
    Scenario(
        items="books",
        start=("A small library has {n} books.", "{name}'s bookshelf holds {n} books."),
        add=("{friend} donates {n} books.", "{name} buys {n} more books."),
        sub=("{n} books are lent out.", "{name} gives {n} books to a school."),
        mul=("After a big donation there are {n} times as many books.",),
        div=("The books are shared equally among {n} classrooms, and one classroom's share stays.",),
        add_groups=("{name} receives {groups} boxes holding {size} books each.",),
        sub_groups=("{groups} students each borrow {size} books.",),
        ask=("How many books are there now?", "How many books remain?"),
    ),
    Scenario(
        items="dollars",
        start=("{name} has ${n} in {his} wallet.", "{name} saves ${n}."),
        add=("{He} earns ${n} mowing lawns.", "{friend} pays {him} back ${n}."),
        sub=("{He} spends ${n} on lunch.", "{He} pays ${n} for a ticket."),
        mul=("An investment makes {his} money grow to {n} times as much.",),
        div=("{He} splits {his} money equally into {n} envelopes and keeps one envelope.",),
        add_groups=("{He} works {groups} hours at ${size} per hour.",),
        sub_groups=("{He} buys {groups} notebooks that cost ${size} each.",),
        ask=("How many dollars does {name} have now?", "How much money, in dollars, does {name} have left?"),
    ),
    Scenario(
        items="cookies",
        start=("{name} bakes {n} cookies.", "A plate holds {n} cookies."),
        add=("{He} bakes {n} more cookies.", "{friend} brings {n} cookies."),
        sub=("The children eat {n} cookies.", "{name} gives {n} cookies to the neighbours."),
        mul=("For the party {he} makes {n} times as many cookies.",),
        div=("{He} packs the cookies equally into {n} tins and keeps one tin.",),
        add_groups=("{He} bakes {groups} more trays of {size} cookies.",),
        sub_groups=("{groups} guests each take {size} cookies.",),
        ask=("How many cookies are there now?", "How many cookies does {name} have at the end?"),
    ),
    Scenario(
        items="pages",
        start=("{name} reads {n} pages of a novel.", "On Monday {name} reads {n} pages."),
        add=("On Tuesday {he} reads {n} more pages.", "{He} reads another {n} pages before bed."),
        sub=("{He} realises {he} skipped {n} pages and does not count them.",),
        mul=("Over the weekend {his} total grows to {n} times as many pages.",),
        div=("{He} decides to count only one of {n} equal parts of the pages read so far.",),
        add_groups=("{He} reads {groups} short stories of {size} pages each.",),
        sub_groups=("{He} tears out {groups} chapters of {size} pages each.",),
        ask=("How many pages has {name} counted?", "What is {name}'s page count now?"),
    ),
    Scenario(
        items="seashells",
        start=("{name} finds {n} seashells on the beach.", "{name}'s bucket has {n} seashells."),
        add=("{He} finds {n} more seashells.", "{friend} drops {n} seashells into the bucket."),
        sub=("{n} seashells break.", "{He} throws {n} seashells back into the sea."),
        mul=("By the end of the holiday {he} has {n} times as many seashells.",),
        div=(
            "{He} shares the seashells equally among {n} cousins, including {him}self, and counts {his} share.",
        ),
        add_groups=("{He} fills {groups} cups with {size} seashells each and adds them.",),
        sub_groups=("{He} makes {groups} necklaces using {size} seashells each.",),
        ask=("How many seashells does {name} have now?", "How many seashells are in the bucket at the end?"),
    ),
    Scenario(
        items="cards",
        start=("{name} collects {n} trading cards.", "{name} has {n} cards in a binder."),
        add=("{He} opens a pack with {n} cards.", "{friend} trades {him} {n} cards for a comic."),
        sub=("{He} sells {n} cards.", "{n} cards get lost."),
        mul=("After a tournament {his} collection is {n} times the size.",),
        div=("{He} divides the cards equally into {n} binders and looks at one binder.",),
        add_groups=("{He} buys {groups} packs of {size} cards.",),
        sub_groups=("{He} gives {groups} players {size} cards each.",),
        ask=("How many cards does {name} have now?", "How many cards are in the collection at the end?"),
    ),
    Scenario(
        items="pencils",
        start=("A classroom has {n} pencils.", "{name} keeps {n} pencils in a drawer."),
        add=("The teacher brings {n} new pencils.", "{name} finds {n} pencils under the desk."),
        sub=("{n} pencils are broken and thrown away.", "{name} lends {n} pencils to classmates."),
        mul=("A delivery leaves the class with {n} times as many pencils.",),
        div=("The pencils are split equally among {n} tables, and only one table's pencils stay.",),
        add_groups=("{name} opens {groups} boxes of {size} pencils.",),
        sub_groups=("{groups} pupils each take {size} pencils home.",),
        ask=("How many pencils are there now?", "How many pencils does the class have at the end?"),
    ),
    Scenario(
        items="eggs",
        start=("{name}'s hens lay {n} eggs.", "A farm basket holds {n} eggs."),
        add=("The hens lay {n} more eggs.", "{friend} brings {n} eggs from the barn."),
        sub=("{name} uses {n} eggs for breakfast.", "{n} eggs crack."),
        mul=("By market day there are {n} times as many eggs.",),
        div=("{name} packs the eggs equally into {n} crates and keeps one crate.",),
        add_groups=("{He} collects {groups} trays of {size} eggs.",),
        sub_groups=("{He} sells {groups} cartons of {size} eggs.",),
        ask=("How many eggs are there now?", "How many eggs does {name} have left?"),
    ),
    Scenario(
        items="toy cars",
        start=("{name} has {n} toy cars.", "{name}'s toy box contains {n} toy cars."),
        add=("{He} gets {n} toy cars for {his} birthday.", "{friend} gives {him} {n} toy cars."),
        sub=("{He} donates {n} toy cars.", "{n} toy cars are left at the park."),
        mul=("After visiting a collector {he} has {n} times as many toy cars.",),
        div=("{He} lines the toy cars up in {n} equal rows and counts one row.",),
        add_groups=("{He} buys {groups} sets of {size} toy cars.",),
        sub_groups=("{He} gives {groups} friends {size} toy cars each.",),
        ask=("How many toy cars does {name} have now?", "How many toy cars are in the toy box at the end?"),
    ),
)

#: names with their pronouns (He, he, His, his, him)
_PEOPLE = (
    ("Ava", "She", "she", "Her", "her", "her"),
    ("Ben", "He", "he", "His", "his", "him"),
    ("Chloe", "She", "she", "Her", "her", "her"),
    ("Diego", "He", "he", "His", "his", "him"),
    ("Emma", "She", "she", "Her", "her", "her"),
    ("Farid", "He", "he", "His", "his", "him"),
    ("Grace", "She", "she", "Her", "her", "her"),
    ("Hiro", "He", "he", "His", "his", "him"),
    ("Imani", "She", "she", "Her", "her", "her"),
    ("Jonas", "He", "he", "His", "his", "him"),
    ("Keiko", "She", "she", "Her", "her", "her"),
    ("Liam", "He", "he", "His", "his", "him"),
    ("Maya", "She", "she", "Her", "her", "her"),
    ("Noah", "He", "he", "His", "his", "him"),
    ("Olga", "She", "she", "Her", "her", "her"),
    ("Pablo", "He", "he", "His", "his", "him"),
)
_FRIENDS = (
    "a neighbour",
    "a cousin",
    "a classmate",
    "an aunt",
    "a friend",
    "a teammate",
    "grandpa",
    "grandma",
)


@dataclass(frozen=True)
class ArithmeticProblem:
    """A generated problem: its text, its steps ``(a, op, b, result)`` in order, and the answer."""

    question: str
    steps: tuple[tuple[int, str, int, int], ...]
    answer: int

    @property
    def equations(self) -> list[str]:
        """The gold equations, one per step: ``"12 + 5 = 17"``."""
        return [f"{a} {op} {b} = {c}" for a, op, b, c in self.steps]

    @property
    def solution_steps(self) -> list[str]:
        """The gold solution: one equation per step, then "The answer is N."."""
        return [*self.equations, f"The answer is {self.answer}."]


def generate_problem(
    rng: random.Random, min_steps: int = 2, max_steps: int = 6, max_value: int = 1000
) -> ArithmeticProblem:
    """A word problem of ``min_steps`` to ``max_steps`` equations, drawn with ``rng``.

    The story starts from a number in [5, 60]; each change is chosen among those that keep every value a
    whole number in [1, ``max_value``]: add 2-40, take away 1-40, multiply by 2-5, divide by 2-6 (only when
    it divides evenly), or add or take away ``groups * size`` (2-6 groups of 2-12; two equations).
    """
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps} and {max_steps}")
    if max_value < 100:
        raise ValueError(f"max_value must be at least 100, got {max_value}")
    scenario = rng.choice(SCENARIOS)
    name, He, he, His, his, him = rng.choice(_PEOPLE)
    words = {"name": name, "He": He, "he": he, "His": His, "his": his, "him": him, "items": scenario.items}
    words["friend"] = rng.choice(_FRIENDS)
    value = rng.randint(5, 60)
    used: set[str] = set()

    def phrase(templates: tuple[str, ...]) -> str:  # a phrasing not used yet in this problem, where possible
        template = rng.choice([t for t in templates if t not in used] or templates)
        used.add(template)
        return template

    sentences = [phrase(scenario.start).format(n=value, **words)]
    steps: list[tuple[int, str, int, int]] = []
    target = rng.randint(min_steps, max_steps)
    while len(steps) < target:
        kind, operands = _choose_change(rng, value, target - len(steps), max_value)
        if kind in ("add_groups", "sub_groups"):
            groups, size = operands
            total = groups * size
            steps.append((groups, "*", size, total))
            op = "+" if kind == "add_groups" else "-"
            sentence = phrase(getattr(scenario, kind)).format(groups=groups, size=size, **words)
            steps.append((value, op, total, _OPS[op](value, total)))
        else:
            (n,) = operands
            op = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[kind]
            sentence = phrase(getattr(scenario, kind)).format(n=n, **words)
            steps.append((value, op, n, _OPS[op](value, n)))
        sentences.append(sentence)
        value = steps[-1][3]
    sentences.append(phrase(scenario.ask).format(**words))
    question = " ".join(_capitalise(s) for s in sentences)
    return ArithmeticProblem(question=question, steps=tuple(steps), answer=value)


def _choose_change(
    rng: random.Random, value: int, steps_left: int, max_value: int
) -> tuple[str, tuple[int, ...]]:
    """A change that keeps the value a whole number in [1, max_value], with its operands."""
    options: list[tuple[str, tuple[int, ...]]] = []
    if value + 2 <= max_value:
        options.append(("add", (rng.randint(2, min(40, max_value - value)),)))
    if value >= 2:
        options.append(("sub", (rng.randint(1, min(40, value - 1)),)))
    factors = [f for f in range(2, 6) if value * f <= max_value]
    if factors:
        options.append(("mul", (rng.choice(factors),)))
    divisors = [d for d in range(2, 7) if value % d == 0 and value // d >= 1]
    if divisors:
        options.append(("div", (rng.choice(divisors),)))
    if steps_left >= 2:
        groups, size = rng.randint(2, 6), rng.randint(2, 12)
        if value + groups * size <= max_value:
            options.append(("add_groups", (groups, size)))
        if value - groups * size >= 1:
            options.append(("sub_groups", (groups, size)))
    return rng.choice(options)


def _capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


class ArithmeticTask(MathTask):
    """Seeded multi-step arithmetic word problems (no download) with an exact step oracle.

    Args:
        split: ``train``, ``validation`` or ``test`` (disjoint streams of questions, see the module).
        num_questions: how many questions :meth:`load` gives (at least 1).
        seed: the generator's seed (the same seed and split always give the same questions).
        min_steps, max_steps: the number of equations of a gold solution.
        max_value: the largest value any step may reach.
        start: the index of the first question within the split (to take a later slice).
        num_fewshot: gold examples prepended to each prompt (drawn from a separate few-shot stream).
        separator: the step separator.
        use_chat_template: build prompts with the tokenizer's chat template when it has one.

    Question ids are ``arithmetic/{split}/seed{seed}/{i}``; ``question.meta`` holds ``gold_equations``
    (``"12 + 5 = 17"``) and ``gold_values`` (the values the solution computes).
    """

    name = "arithmetic"
    #: where each split's questions start in the generator's index space (a million apart)
    SPLIT_OFFSETS = {"train": 0, "validation": 1_000_000, "test": 2_000_000, "fewshot": 3_000_000}
    SPLIT_SIZE = 1_000_000

    def __init__(
        self,
        split: str = "train",
        num_questions: int = 1000,
        seed: int = 0,
        min_steps: int = 2,
        max_steps: int = 6,
        max_value: int = 1000,
        start: int = 0,
        num_fewshot: int = 0,
        separator: str = DEFAULT_SEPARATOR,
        use_chat_template: bool = True,
    ) -> None:
        super().__init__(num_fewshot=num_fewshot, separator=separator, use_chat_template=use_chat_template)
        if split not in self.SPLIT_OFFSETS:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(self.SPLIT_OFFSETS)}")
        if num_questions < 1:
            raise ValueError(
                f"num_questions must be >= 1, got {num_questions}: the task would have no question"
            )
        if start < 0 or start + num_questions > self.SPLIT_SIZE:
            raise ValueError(
                f"start ({start}) + num_questions ({num_questions}) must lie in [0, {self.SPLIT_SIZE}]"
            )
        generate_problem(random.Random(0), min_steps, max_steps, max_value)  # validates the settings
        self.split = split
        self.num_questions = num_questions
        self.seed = seed
        self.min_steps = min_steps
        self.max_steps = max_steps
        self.max_value = max_value
        self.start = start
        self._questions: list[Question] | None = None

    def question(self, i: int, split: str | None = None) -> Question:
        """Question ``i`` of ``split`` (default: the task's split), generated on its own random stream."""
        split = split or self.split
        index = self.SPLIT_OFFSETS[split] + i
        rng = random.Random(f"sapo-arithmetic/{self.seed}/{index}")
        problem = generate_problem(rng, self.min_steps, self.max_steps, self.max_value)
        return Question(
            id=f"{self.name}/{split}/seed{self.seed}/{i}",
            question=problem.question,
            answer=str(problem.answer),
            solution=self.completion_text(problem.solution_steps),
            meta={
                "gold_equations": problem.equations,
                "gold_values": [str(step[3]) for step in problem.steps],
            },
        )

    def load(self) -> list[Question]:
        """Questions ``start .. start + num_questions - 1`` of the split (generated once, then cached)."""
        if self._questions is None:
            self._questions = [self.question(i) for i in range(self.start, self.start + self.num_questions)]
        return list(self._questions)

    def fewshot_pool(self) -> list[Question]:
        return [self.question(i, split="fewshot") for i in range(self.num_fewshot + 1)]

    def gold_computation(self, question: Question) -> GoldComputation:
        """The values of the gold steps; the question's numbers (digits and number words) are given."""
        if question.answer is None:
            raise ValueError(f"question {question.id!r} has no gold answer")
        answer = Fraction(question.answer)
        values = {Fraction(v) for v in question.meta.get("gold_values", [])} | {answer}
        return GoldComputation(
            answer=answer, values=frozenset(values), given=question_numbers(question.question)
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, num_questions={self.num_questions}, seed={self.seed}, "
            f"min_steps={self.min_steps}, max_steps={self.max_steps}, max_value={self.max_value})"
        )
