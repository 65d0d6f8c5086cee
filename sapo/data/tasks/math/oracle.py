"""The gold computation and the step oracle of the math tasks.

A :class:`GoldComputation` holds the numbers a question gives, the values its gold solution computes and
the gold answer (:func:`gold_from_equations`, :func:`gold_from_parsed`). :func:`judge_steps` judges every
step of a solution against it: a step is wrong when one of its equations is false or when it uses a value
that is neither given in the question nor computed by an earlier correct step (the rules are made precise
in :func:`judge_steps`). An :class:`OracleResult` holds a :class:`StepVerdict` per step and the first-error
labels: 1.0 for the steps before the first wrong step, 0.0 from it on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from sapo.data.tasks.math.equations import Equation, StepParts, _sides_equal, find_equations, parse_equation
from sapo.data.tasks.math.numbers import extract_answers, format_number, parse_number, question_numbers
from sapo.data.tasks.math.tokens import _STEP_MARKER_RE, Number
from sapo.data.trajectory import NO_ERROR, first_error_of, prefix_labels

__all__ = [
    "GoldComputation",
    "OracleResult",
    "StepVerdict",
    "gold_from_equations",
    "gold_from_parsed",
    "judge_steps",
]


@dataclass(frozen=True)
class GoldComputation:
    """What the step oracle compares a solution with.

    Attributes:
        answer: the gold final answer.
        values: the values the gold solution computes (each intermediate result and the answer).
        given: the numbers a step may use without computing them: the question's numbers, plus any
            constants the gold solution brings in (60 minutes, 7 days, 100 for a percentage).
    """

    answer: Fraction
    values: frozenset[Fraction]
    given: frozenset[Fraction]


def gold_from_equations(
    question: str, equations: Sequence[str], answer: str | Fraction, constants: Iterable[Fraction | int] = ()
) -> GoldComputation:
    """The gold computation of a question whose gold solution is ``equations`` (``"48/2=24"``, in order);
    see :func:`gold_from_parsed`. A gold equation that cannot be parsed raises ``ValueError``."""
    parsed = []
    for text in equations:
        equation = parse_equation(text)
        if equation is None:
            raise ValueError(f"gold equation {text!r} cannot be parsed")
        parsed.append(equation)
    gold_answer = answer if isinstance(answer, Fraction) else parse_number(answer)
    if gold_answer is None:
        raise ValueError(f"gold answer {answer!r} is not a number")
    return gold_from_parsed(question_numbers(question), parsed, gold_answer, constants)


def gold_from_parsed(
    given: Iterable[Fraction],
    equations: Iterable[Equation],
    answer: Fraction,
    constants: Iterable[Fraction | int] = (),
) -> GoldComputation:
    """The gold computation of parsed gold equations, in order.

    ``values`` are the equations' results (every side after the first that is a single number or a
    fraction, and the value of a last side that is a computation) and the answer. ``given`` are ``given``
    (the question's numbers), every operand of a gold equation that is not the result of an earlier one
    (the constants the solution brings in) and ``constants``.
    """
    values: set[Fraction] = {answer}
    known: set[Fraction] = set(given) | {Fraction(c) for c in constants}
    for equation in equations:
        for position, side in enumerate(equation.sides):
            if position > 0 and side.result is not None:
                values.update(side.result.usable)
                continue
            for number in side.numbers:
                if values.isdisjoint(number.usable):
                    known.update(number.usable)
        last = equation.sides[-1]
        if last.result is None and last.value is not None:
            values.add(last.value)
    return GoldComputation(answer=answer, values=frozenset(values), given=frozenset(known))


@dataclass
class StepVerdict:
    """The oracle's judgement of one step: correct or not, and why not (empty when correct)."""

    correct: bool
    reasons: list[str] = field(default_factory=list)
    equations: int = 0
    is_answer_step: bool = False


@dataclass
class OracleResult:
    """Per-step correctness of a solution and its first error.

    Attributes:
        verdicts: one :class:`StepVerdict` per step.
        answer: the final answer extracted from the whole solution (strict, else flexible), or ``None``.
        answer_step: the index of the step that states it, or -1.
    """

    verdicts: list[StepVerdict]
    answer: str | None
    answer_step: int

    @property
    def step_correct(self) -> list[bool]:
        """Each step judged on its own (against the values of earlier *correct* steps)."""
        return [v.correct for v in self.verdicts]

    @property
    def first_error(self) -> int:
        """Index of the first incorrect step, or :data:`~sapo.data.trajectory.NO_ERROR` (-1) when every step
        is correct."""
        return first_error_of([float(correct) for correct in self.step_correct])

    @property
    def all_correct(self) -> bool:
        return self.first_error == NO_ERROR

    def prefix_labels(self) -> list[float]:
        """The first-error labels: 1.0 for the steps before the first wrong step, 0.0 from it on."""
        return prefix_labels(len(self.verdicts), self.first_error)


def judge_steps(
    steps: Sequence[str],
    gold: GoldComputation,
    approximate: bool = False,
    parse: Callable[[str], StepParts] = find_equations,
) -> OracleResult:
    """Judge every step of a solution against a gold computation.

    A value is *known* at a step when the question gives it (``gold.given``) or an earlier *correct* step
    computed it. Rules (each broken rule is a reason in the step's verdict):

    1. Every equation (see :func:`find_equations`) must be true (a stated decimal may be rounded).
    2. Its operands (the numbers of its first side, and of any later side that is not a single number) must
       be known, or computed by an earlier equation of the same step, or (in a later side) be the value of
       a part of an earlier side ("8*2 + 4*5 = 16 + 20 = 36").
    3. Its result (each later side that is a single number or a fraction "1/5") must be a value of the gold computation, or an
       already known value (restating a known number is harmless).
    4. Every number the step states outside an equation must be known or computed in the step: a claim
       without its computation is a skipped step. So a prose step is correct iff all its numbers are known,
       and a step without numbers ("Let's think.") is correct: it introduces nothing wrong.
    5. The answer step, the one stating the final answer (extracted from the whole solution as the outcome
       is: strict, else the last number), must state the gold answer; its answer number is exempt from 4, its
       other numbers and equations are judged as in any step. A solution without any answer has its last
       step wrong ("no final answer"), so the oracle never calls a wrong-outcome solution all-correct.
    6. Equations with unknowns ("8p = 5p + 3000", "x = 5") cannot be checked as arithmetic: their numbers
       are judged as stated numbers (rule 4).

    With ``approximate`` (the GSM8K oracle) rules 4 and 6 are relaxed, because GSM8K references state
    numbers that come from reading the question ("on Monday, Wednesday and Friday" is 3 days) or from
    everyday knowledge, which no parser can check: a stated number is not judged and becomes known (a wrong
    one is caught where an equation computes with it, because the result leaves the gold computation), and
    of the numbers in algebra those on the gold computation become known and the rest are not judged.

    ``parse`` reads a step (:func:`find_equations`; a task passes a memoised one).

    Steps after an error are still judged (their operands must come from correct steps), so
    :attr:`OracleResult.step_correct` tells each step's own correctness, and
    :meth:`OracleResult.prefix_labels` gives the first-error labels.
    """
    steps = list(steps)
    answer_step, answer = _answer_step(steps)
    known: set[Fraction] = set(gold.given)
    verdicts = []
    for index, step in enumerate(steps):
        is_answer = index == answer_step
        verdict, computed = _judge_step(
            step,
            known,
            gold,
            answer_span=answer[1] if is_answer else None,
            approximate=approximate,
            parse=parse,
        )
        if is_answer:
            verdict.is_answer_step = True
            value = parse_number(answer[0])
            if value != gold.answer:
                verdict.correct = False
                verdict.reasons.append(
                    f"final answer {answer[0]} is not the gold answer {format_number(gold.answer)}"
                )
        if answer_step == -1 and index == len(steps) - 1:
            verdict.correct = False
            verdict.reasons.append("no final answer")
        if verdict.correct:
            known.update(computed)
        verdicts.append(verdict)
    return OracleResult(
        verdicts=verdicts, answer=answer[0] if answer_step >= 0 else None, answer_step=answer_step
    )


def _answer_step(steps: list[str]) -> tuple[int, tuple[str | None, tuple[int, int] | None]]:
    """The index of the step that states the final answer, and the answer with its span inside that step.

    The final answer is extracted from the solution as a whole (strict, else flexible), so the oracle agrees
    with the outcome; the step is the one holding the extracted number (-1 when there is none).
    """
    extraction = extract_answers("\n".join(steps))
    span = extraction.final_span
    if span is None:
        return -1, (None, None)
    offset = 0
    for index, step in enumerate(steps):
        if span[0] < offset + len(step):
            return index, (extraction.final, (span[0] - offset, span[1] - offset))
        offset += len(step) + 1
    return len(steps) - 1, (extraction.final, None)  # pragma: no cover - the span lies in some step


def _judge_step(
    step: str,
    known: set[Fraction],
    gold: GoldComputation,
    answer_span: tuple[int, int] | None,
    approximate: bool,
    parse: Callable[[str], StepParts] = find_equations,
) -> tuple[StepVerdict, set[Fraction]]:
    """Rules 1-4 and 6 of :func:`judge_steps` for one step; returns the verdict and the values it computed."""
    marker = _STEP_MARKER_RE.match(step)
    shift = marker.end() if marker else 0
    parts = parse(step)
    computed: set[Fraction] = set()
    reasons: list[str] = []
    if approximate:  # stated numbers are known to the step's equations ("To paint 3 walls, ... 3 * 4 = 12")
        for number in parts.stated:
            computed.update(number.usable)
    for equation in parts.equations:
        reasons.extend(_judge_equation(equation, known | computed, gold, computed))
    stated = list(parts.stated)
    if approximate:
        for number in parts.algebra:
            if not gold.values.isdisjoint(number.usable):
                computed.update(number.usable)
    else:
        stated.extend(parts.algebra)
    for number in stated:
        if answer_span is not None and answer_span[0] <= number.start + shift < answer_span[1]:
            continue
        if not known.isdisjoint(number.usable) or not computed.isdisjoint(number.usable):
            continue
        if approximate:
            computed.update(number.usable)
            continue
        reasons.append(f"states {number.text}, which is neither given nor computed before")
    return StepVerdict(correct=not reasons, reasons=reasons, equations=len(parts.equations)), computed


def _judge_equation(
    equation: Equation, available: set[Fraction], gold: GoldComputation, computed: set[Fraction]
) -> list[str]:
    """Rules 1-3 for one equation; its results are added to ``computed`` when it is correct."""
    reasons = []
    sides = equation.sides
    for left, right in zip(sides, sides[1:], strict=False):
        if left.value is None or right.value is None:
            reasons.append(f"divides by zero: {equation.text}")
        elif not _sides_equal(left, right):
            reasons.append(
                f"false equation: {left.text} = {right.text} (the left side is {format_number(left.value)})"
            )
    results: list[Number] = []
    partials: set[Fraction] = set()  # values computed inside earlier sides ("8*2 + 4*5 = 16 + 20")
    for position, side in enumerate(sides):
        if position > 0 and side.result is not None:
            results.append(side.result)
            continue
        for number in side.numbers:
            if available.isdisjoint(number.usable) and partials.isdisjoint(number.usable):
                reasons.append(
                    f"uses {number.text}, which is neither given nor computed before ({equation.text})"
                )
        partials.update(side.partials)
        if side.value is not None:
            partials.add(side.value)
    for number in results:
        if gold.values.isdisjoint(number.usable) and available.isdisjoint(number.usable):
            reasons.append(f"computes {number.text}, which is not on the gold computation ({equation.text})")
    if not reasons:
        for number in results:
            computed.update(number.usable)
            available.update(number.usable)
    return reasons
