"""The equation parser of the step oracle: what a step says, as the oracle reads it.

:func:`find_equations` reads a step into :class:`StepParts`: its arithmetic equations (:class:`Equation`,
a chain of :class:`Side`, each with its exact value), the numbers it states outside them, and the numbers
of its algebra (equations with unknowns). :func:`parse_equation` reads one gold annotation. Expressions
are parsed by a small recursive-descent parser over the tokens of :mod:`sapo.data.tasks.math.tokens`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

from sapo.data.tasks.math.tokens import (
    _DIGIT_RE,
    _MAX_FILLER_WORDS,
    _NOT_DIGITS,
    _NUMBER_TOKEN_RE,
    _STEP_MARKER_RE,
    Number,
    _key,
    _number,
    _Token,
    _tokens,
)

__all__ = ["Equation", "Side", "StepParts", "find_equations", "parse_equation"]


class Side(NamedTuple):
    """One side of an equation: its text, its numbers, its value (``None`` after a division by zero) and,
    when it is a single (possibly negative or parenthesised) number, that number: a stated result."""

    text: str
    numbers: tuple[Number, ...]
    value: Fraction | None
    literal: Number | None = None
    #: the number the side states when it is a result: a single number, or a fraction of two ("1/5")
    result: Number | None = None
    #: the side without words or currency signs ("3 + 4")
    expression: str = ""
    #: the value of every sub-expression ("8 * 2 + 4 * 5" has 16, 20 and 36)
    partials: tuple[Fraction | int, ...] = ()


class Equation(NamedTuple):
    """``sides[0] = sides[1] = ...`` found in a step (at least two sides)."""

    sides: tuple[Side, ...]

    @property
    def text(self) -> str:
        """The equation as written (with the words inside it)."""
        return " = ".join(side.text for side in self.sides)

    @property
    def expression(self) -> str:
        """The equation without words: ``"48 / 2 = 24"``."""
        return " = ".join(side.expression for side in self.sides)

    @property
    def is_true(self) -> bool:
        """Whether every two neighbouring sides are equal (see :func:`_sides_equal`)."""
        return all(_sides_equal(a, b) for a, b in zip(self.sides, self.sides[1:], strict=False))


class StepParts(NamedTuple):
    """What a step says, as the oracle reads it. (Parsed steps are kept in memory by tasks; being tuples of
    numbers and strings, they cost the garbage collector nothing once it has seen them.)

    Attributes:
        equations: the arithmetic equations, in order.
        stated: numbers outside any equation ("She has 12 apples").
        algebra: numbers in equations with unknowns ("8p = 5p + 3000", "x = 5"), which cannot be checked as
            arithmetic; coefficients glued to an unknown (the 8 of "8p") are left out.
    """

    equations: tuple[Equation, ...] = ()
    stated: tuple[Number, ...] = ()
    algebra: tuple[Number, ...] = ()


def find_equations(text: str) -> StepParts:
    """The equations of a step, the numbers it states outside them, and the numbers of its algebra.

    An expression is a run of numbers, operators (``+ - * x × · / ÷``, ``−`` and ``–`` as minus; "of",
    "plus", "minus" between numbers), parentheses and currency signs. Words may stand inside it (see
    :func:`_filler_words`): units after a number ("3 apples + 4 apples = 7 apples", also "/unit": "5
    snakes/jaguar * 6 jaguars") and words between ``=`` and the result ("= a total of 72"). A run with ``=``
    splits into sides; the first side is the longest expression that ends at the first ``=``, the last the
    longest that starts after the last ``=`` (so words around the equation are ignored; see
    :func:`_choose_ends` for the one exception). A sloppy chain "48/2 = 24 + 48 = 72", whose middle side
    starts with the value of the side before it, is read as two equations "48/2 = 24" and "24 + 48 = 72"
    (see :func:`_split_sloppy_chain`). A run with an unknown (see :func:`_classify`) is algebra. Calculator
    annotations ``<<...>>``, clock times, ordinals ("3rd") and a leading step marker ("Step 2:", "2.") are
    ignored. Every other number is stated outside an equation; in a step without ``=`` that is every number.
    """
    if _DIGIT_RE.search(text) is None:
        return StepParts()
    text = _STEP_MARKER_RE.sub("", text, count=1)
    equations: list[Equation] = []
    stated: list[Number] = []
    algebra: list[Number] = []
    if "=" not in text:  # no equation: every number is stated (the quick path of most prose steps)
        for match in _NUMBER_TOKEN_RE.finditer(text):
            kind = match.lastgroup
            if kind in ("num", "mixed") and (number := _number(kind, match.group(kind), match.start(kind))):
                stated.append(number)
        return StepParts(stated=tuple(stated))
    for run in _expression_runs(_tokens(text)):
        if any(t.kind == "var" for t in run):
            glued = {t.start for t in run if t.kind == "var"}
            algebra.extend(t.number for t in run if t.number is not None and t.end not in glued)
            continue
        found, left_over = _run_equations(text, run)
        equations.extend(found)
        stated.extend(left_over)
    stated.sort(key=lambda n: n.start)
    return StepParts(tuple(equations), tuple(stated), tuple(algebra))


def parse_equation(text: str) -> Equation | None:
    """The first equation found in ``text`` (a helper for gold annotations such as ``48/2=24``)."""
    equations = find_equations(text).equations
    return equations[0] if equations else None


def _expression_runs(tokens: list[_Token]) -> Iterable[list[_Token]]:
    """Maximal runs of expression tokens; filler words (see :func:`_filler_words`) are skipped inside, and
    so is a "/unit" after a number ("12 pages/day")."""
    expression_kinds = {"num", "op", "lp", "rp", "eq", "cur", "var"}
    run: list[_Token] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        per_unit = (
            token.kind == "op" and token.text == "/" and i + 1 < len(tokens) and tokens[i + 1].kind == "word"
        )
        if per_unit and run and run[-1].kind in ("num", "rp"):
            skip = _filler_words(tokens, i + 1, run[-1])
            if skip:
                i += 1 + skip
                continue
        if token.kind in expression_kinds and not per_unit:
            run.append(token)
            i += 1
            continue
        skip = _filler_words(tokens, i, run[-1]) if token.kind == "word" and run else 0
        if skip:
            i += skip
            continue
        if run:
            yield run
            run = []
        i += 1
    if run:
        yield run


def _filler_words(tokens: list[_Token], i: int, previous: _Token) -> int:
    """How many word tokens starting at ``tokens[i]`` are fillers inside an expression (0 when none are):
    up to ten words after a number or ``)`` followed by an operator, ``=`` or ``)`` (units: "6 tubs * 2
    tubes per tub = 12"); up to six after ``=`` and up to three after an operator, followed by a number,
    ``(`` or a currency sign ("= a total of 72", "7 gallons + Cynthia's 8 gallons")."""
    j, words = i, 0
    while j < len(tokens) and tokens[j].kind == "word":
        words += len(tokens[j].text.split())  # a token may hold a run of words
        j += 1
        if words > _MAX_FILLER_WORDS:
            return 0
    if j >= len(tokens):
        return 0
    following = tokens[j]
    if previous.kind in ("num", "rp") and following.kind in ("op", "eq", "rp"):
        return j - i
    if following.kind in ("num", "lp", "cur"):
        after_equals = previous.kind == "eq" and words <= 6
        after_operator = previous.kind == "op" and previous.text != "/" and words <= 3
        if after_equals or after_operator:
            return j - i
    return 0


def _run_equations(text: str, run: list[_Token]) -> tuple[list[Equation], list[Number]]:
    """The equations in one run of expression tokens, and the numbers of the run that are in none."""
    parts: list[list[_Token]] = [[]]
    for token in run:
        if token.kind == "eq":
            parts.append([])
        elif token.kind != "cur":
            parts[-1].append(token)
    loose: list[Number] = []
    if len(parts) == 1:
        return [], [t.number for t in run if t.number is not None]
    last = len(parts) - 1
    options = [
        _LazyList(_parse_options(text, part, from_end=True if i == 0 else False if i == last else None))
        for i, part in enumerate(parts)
    ]
    chosen = _choose_ends(options)
    sides: list[Side | None] = []
    for part, choice in zip(parts, chosen, strict=True):
        side, rest = choice if choice is not None else (None, part)
        loose.extend(t.number for t in rest if t.number is not None)
        sides.append(side)
    equations: list[Equation] = []
    chain: list[Side] = []
    for side in [*sides, None]:
        if side is not None:
            chain.append(side)
            continue
        if len(chain) >= 2:
            found, rest = _split_sloppy_chain(chain)
            equations.extend(found)
            loose.extend(rest)
        else:
            loose.extend(n for s in chain for n in s.numbers)
        chain = []
    return equations, loose


def _split_sloppy_chain(chain: list[Side]) -> tuple[list[Equation], list[Number]]:
    """Split a chain of sides where it is not one equation.

    - ``a = b + c = d`` where ``a``'s value is not ``b + c`` but is ``b`` ("48/2 = 24 + 48 = 72") is two
      equations, "48/2 = 24" and "24 + 48 = 72".
    - A single number followed by a side of another value is a unit conversion, a label or a left side cut
      short by notation the parser does not read, not an equation ("2 hours = 120 minutes", "60 kW would
      cost = $0.10*60 = $6", "√(144) = 12"): the chain breaks after the number, whose numbers then count
      as stated. So a reversed false equation "7 = 3 + 5" is not caught as false; its numbers are still
      judged as stated numbers, and nobody writes results first in the formats these tasks teach.

    A piece left with one side is no equation: its numbers are returned as stated.
    """
    pieces: list[list[Side]] = [[chain[0]]]
    for side in chain[1:]:
        previous = pieces[-1][-1]
        if previous.literal is not None and not _sides_equal(previous, side):
            pieces.append([side])
            continue
        first = side.numbers[0] if side.numbers else None
        sloppy = (
            side.literal is None
            and first is not None
            and side.text.lstrip("($€£¥ ").startswith(first.text)
            and not _sides_equal(previous, side)
            and previous.value is not None
            and _values_match(previous.value, first)
        )
        if sloppy:
            head = Side(first.text, (first,), first.value, literal=first, result=first, expression=first.text)
            pieces[-1].append(head)
            pieces.append([side])
        else:
            pieces[-1].append(side)
    equations = [Equation(tuple(piece)) for piece in pieces if len(piece) >= 2]
    loose = [n for piece in pieces if len(piece) == 1 for n in piece[0].numbers]
    return equations, loose


class _LazyList:
    """A list filled from an iterator as far as it is read (so the usual first choice parses little)."""

    def __init__(self, items: Iterator[Any]) -> None:
        self._items = items
        self._seen: list[Any] = []

    def get(self, index: int) -> Any:
        while len(self._seen) <= index:
            item = next(self._items, None)
            if item is None:
                return None
            self._seen.append(item)
        return self._seen[index]

    def __iter__(self) -> Iterator[Any]:
        index = 0
        while (item := self.get(index)) is not None:
            yield item
            index += 1


def _parse_options(
    text: str, part: list[_Token], from_end: bool | None
) -> Iterator[tuple[Side, list[_Token]]]:
    """The expressions ``part`` can give, longest first, each with the tokens it leaves out: those ending at
    its end (``from_end=True``: the first side), starting at its start (``False``: the last side), or only
    the whole (``None``: a middle side)."""
    n = len(part)
    if from_end is None:
        ranges = [(0, n)]
    elif from_end:
        ranges = [(start, n) for start in range(n)]
    else:
        ranges = [(0, stop) for stop in range(n, 0, -1)]
    for start, stop in ranges:
        tokens = part[start:stop]
        parsed = _Parser(tokens).parse()
        if parsed is not None:
            side = Side(
                text=text[tokens[0].start : tokens[-1].end],
                numbers=tuple(t.number for t in tokens if t.number is not None),
                value=parsed.value,
                literal=_single_number(tokens),
                result=_single_number(tokens) or _simple_fraction(tokens),
                expression=" ".join(t.number.text if t.number else t.text for t in tokens),
                partials=parsed.partials,
            )
            yield side, part[:start] + part[stop:]


def _choose_ends(options: list[_LazyList]) -> list[tuple[Side, list[_Token]] | None]:
    """One option per side: the longest. The last side alone may be cut shorter where what is cut off starts
    with an operator written as a word and the shorter side makes the equation true ("3/3 - 2/3 = 1/3 of
    $150": the last side is "1/3", not "1/3 of 150"). The first side is never cut to make an equation true
    (any "a / b = b" would become the true "b = b")."""
    chosen = [side_options.get(0) for side_options in options]
    previous, last = chosen[-2], chosen[-1]
    if previous is None or last is None or _sides_equal(previous[0], last[0]):
        return chosen
    for side, rest in options[-1]:  # a last side's option leaves out the tokens after it: rest[0] is the cut
        cut_at_word = bool(rest) and rest[0].kind == "op" and rest[0].end - rest[0].start > 1
        if cut_at_word and _sides_equal(previous[0], side):
            chosen[-1] = (side, rest)
            break
    return chosen


def _simple_fraction(tokens: list[_Token]) -> Number | None:
    """``a/b`` as one number (a result such as "12/60 = 1/5"), or ``None``."""
    core = [t for t in tokens if t.kind not in ("lp", "rp")]
    if len(core) != 3 or core[0].number is None or core[2].number is None or core[1].text != "/":
        return None
    a, b = core[0].number, core[2].number
    if a.percent or b.percent or b.literal == 0:
        return None
    text = f"{a.text}/{b.text}"
    return Number(literal=_key(Fraction(a.literal, b.literal)), percent=False, text=text, start=a.start)


def _single_number(tokens: list[_Token]) -> Number | None:
    """The number an expression consists of (``5``, ``(5)``, ``-5``), or ``None`` for a computation."""
    core = [t for t in tokens if t.kind not in ("lp", "rp")]
    if len(core) == 1 and core[0].number is not None:
        return core[0].number
    if len(core) == 2 and core[0].kind == "op" and core[0].text in "+-" and core[1].number is not None:
        number = core[1].number
        if core[0].text == "+":
            return number
        return Number(
            literal=-number.literal, percent=number.percent, text="-" + number.text, start=number.start
        )
    return None


@dataclass(frozen=True)
class _Parsed:
    value: Fraction | None  # None after a division by zero
    partials: tuple[Fraction | int, ...]  # the value of every sub-expression


class _Parser:
    """Recursive descent over ``expr := term (('+'|'-') term)*``, ``term := factor (('*'|'/') factor)*``,
    ``factor := ('-'|'+') factor | number | '(' expr ')'``; a factor followed by ``(`` multiplies
    ("44(.50)"). :meth:`parse` gives the value and every sub-expression's value when the tokens are exactly
    one expression, else ``None``."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.division_by_zero = False
        self.partials: list[Fraction | int] = []

    def parse(self) -> _Parsed | None:
        if not any(t.kind == "num" for t in self.tokens):
            return None
        value = self.expr()
        if value is None or self.i != len(self.tokens):
            return None
        return _Parsed(None if self.division_by_zero else value, tuple(self.partials))

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def expr(self) -> Fraction | None:
        value = self.term()
        while value is not None and (t := self.peek()) is not None and t.kind == "op" and t.text in "+-":
            self.i += 1
            right = self.term()
            if right is None:
                return None
            value = value + right if t.text == "+" else value - right
            self.partials.append(value)
        return value

    def term(self) -> Fraction | None:
        value = self.factor()
        while value is not None and (t := self.peek()) is not None:
            if t.kind == "op" and t.text in "*/":
                self.i += 1
            elif t.kind != "lp":
                break
            right = self.factor()
            if right is None:
                return None
            if t.kind == "lp" or t.text == "*":
                value = value * right
            elif right == 0:
                self.division_by_zero = True
                value = 0
            else:
                value = _key(Fraction(value, right))
            self.partials.append(value)
        return value

    def factor(self) -> Fraction | None:
        t = self.peek()
        if t is None:
            return None
        if t.kind == "op" and t.text in "+-":
            self.i += 1
            inner = self.factor()
            return None if inner is None else (-inner if t.text == "-" else inner)
        if t.kind == "num":
            self.i += 1
            return t.number.value
        if t.kind == "lp":
            self.i += 1
            inner = self.expr()
            closing = self.peek()
            if inner is None or closing is None or closing.kind != "rp":
                return None
            self.i += 1
            return inner
        return None


def _decimals(number: Number) -> int:
    """How many decimals a stated number has (``16.66...%`` has 2)."""
    if "." not in number.text:
        return 0
    return len(number.text.translate(_NOT_DIGITS).rstrip(".").partition(".")[2])


def _values_match(value: Fraction, stated: Number) -> bool:
    """Whether a computed value equals a stated number: exactly, or, when the number has ``d >= 1``
    decimals, within ``10^-d`` (rounded or cut to ``d`` decimals: "10/3 = 3.33")."""
    candidates = (stated.value, stated.literal) if stated.percent else (stated.value,)
    if value in candidates:
        return True
    d = _decimals(stated)
    return d >= 1 and any(abs(value - c) < Fraction(1, 10**d) for c in candidates)


def _sides_equal(a: Side, b: Side) -> bool:
    """Whether two sides of an equation are equal (a stated decimal may be rounded, see
    :func:`_values_match`). A side that multiplies by ``100%`` expresses a percentage, so "3 / 21 * 100% =
    14.28" is true (the right side is read as 14.28%)."""
    if a.value is None or b.value is None:
        return False
    if b.literal is not None:
        as_percent = any(n.percent and n.literal == 100 for n in a.numbers) and not b.literal.percent
        return _values_match(a.value, b.literal) or as_percent and _values_match(a.value * 100, b.literal)
    if a.literal is not None:
        return _values_match(b.value, a.literal)
    return a.value == b.value
