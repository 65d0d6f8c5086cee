"""Numbers, final answers and the equation step oracle shared by the math tasks.

Three things live here:

- **Numbers and answers**: :func:`parse_number` reads ``"$1,250.50."``, ``"7.0"``, ``"3/4"`` or ``"50%"`` as an
  exact :class:`~fractions.Fraction`; :func:`extract_answers` finds the strict answer (``The answer is N``,
  ``#### N``, ``\\boxed{N}``) and the flexible one (the last number); :func:`answers_equal` compares exactly.
- **The step oracle** (:func:`judge_steps`): given a :class:`GoldComputation` (the numbers a question gives,
  the values its gold solution computes, the gold answer) it says which steps of any completion are correct,
  by the rules of ``ALGORITHM.md`` made precise in :func:`judge_steps`.
- :class:`MathTask`: the part of a math word-problem task that does not depend on where questions come from:
  few-shot prompts, answer extraction and checking, and oracle labels.

No function keeps state between calls; a :class:`MathTask` remembers the steps it has parsed (samples of
one question share many steps) and, for GSM8K, each question's gold computation.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NamedTuple

from sapo.data.steps import DEFAULT_SEPARATOR, join_steps
from sapo.data.tasks.base import Question, Task
from sapo.data.trajectory import Trajectory

__all__ = [
    "ANSWER_LINE_RE",
    "AnswerExtraction",
    "Equation",
    "GoldComputation",
    "MathTask",
    "OracleResult",
    "StepParts",
    "StepVerdict",
    "answers_equal",
    "extract_answers",
    "extract_final_answer",
    "find_equations",
    "format_number",
    "gold_from_equations",
    "gold_from_parsed",
    "judge_steps",
    "parse_equation",
    "parse_number",
    "question_numbers",
]

# --- numbers --------------------------------------------------------------------------------------------------

#: a number as written in text: thousands separators, decimals, an optional simple fraction
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|-?\.\d+"
#: what may surround a number that is a whole answer: currency before; units, %, a period after
_ANSWER_TEXT_RE = re.compile(rf"^\s*[-+]?\s*[$€£¥]?\s*(?P<number>{_NUMBER})\s*%?\s*[^\d]*$")

#: a finished answer line: the answer phrase, a number, and the newline that ends the line
ANSWER_LINE_RE = re.compile(r"(?:\banswer\s*(?:is|:)|####|\\boxed\{)[^\n]*\d[^\n]*\n", re.IGNORECASE)


def parse_number(text: str | None) -> Fraction | None:
    """The exact value of a number written as an answer, or ``None`` when ``text`` is not one.

    Accepted: an optional sign and currency sign (``$ € £ ¥``), a number with optional thousands separators
    (``1,250``), decimals (``7.0``, ``.5``) or a simple fraction (``3/4``), then anything without digits (a
    unit, ``%``, a trailing period). ``"-$5"`` and ``"$-5"`` are both -5. ``"50%"`` is 50: answers are
    compared as written, so a question asking for a percentage is answered by the number before ``%``.
    """
    if text is None:
        return None
    match = _ANSWER_TEXT_RE.match(str(text))
    if match is None:
        return None
    negative = str(text).lstrip().startswith("-")
    value = _number_value(match.group("number"))
    if value is None:
        return None
    return -value if negative and value > 0 else value


def _number_value(literal: str) -> Fraction | None:
    """The value of a literal matched by ``_NUMBER`` (commas and spaces removed; ``a/b`` divided)."""
    literal = literal.replace(",", "").replace(" ", "")
    negative = literal.startswith("-")
    literal = literal.lstrip("-")
    numerator, _, denominator = literal.partition("/")
    value = Fraction(numerator)
    if denominator:
        if Fraction(denominator) == 0:
            return None
        value /= Fraction(denominator)
    return -value if negative else value


def format_number(value: Fraction) -> str:
    """The canonical text of a value: ``"72"``, ``"-3"``, ``"0.25"`` (a finite decimal, written exactly),
    else ``"1/3"``."""
    if value.denominator == 1:
        return str(value.numerator)
    exact = _exact_decimal(value)
    return exact if exact is not None else f"{value.numerator}/{value.denominator}"


def _exact_decimal(value: Fraction) -> str | None:
    """``value`` (a finite decimal) written without rounding."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    whole, remainder = divmod(value.numerator, value.denominator)
    digits = []
    for _ in range(64):
        if remainder == 0:
            break
        remainder *= 10
        digit, remainder = divmod(remainder, value.denominator)
        digits.append(str(digit))
    if remainder:
        return None
    return f"{sign}{whole}.{''.join(digits)}"


def answers_equal(answer: str | None, gold: str | None) -> bool:
    """Whether two answers are the same number, exactly (``"7.0"`` equals ``"7"``, ``"$1,000."`` equals
    ``"1000"``, ``"0.5"`` equals ``"1/2"``). ``None`` or a non-number never equals anything."""
    a, b = parse_number(answer), parse_number(gold)
    return a is not None and b is not None and a == b


# --- final answers ----------------------------------------------------------------------------------------------

_STRICT_ANSWER_RE = re.compile(
    rf"(?:\b(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?\s*|####\s*)"
    rf"(?P<sign>-)?\s*[$€£¥]?\s*(?P<number>{_NUMBER})(?!\d)",
    re.IGNORECASE,
)
_BOXED_RE = re.compile(r"\\boxed\s*\{")
_LATEX_FRACTION_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FLEXIBLE_NUMBER_RE = re.compile(rf"(?<![\w.])(?P<number>{_NUMBER})")


@dataclass(frozen=True)
class AnswerExtraction:
    """The answers found in a completion, as canonical number strings (see :func:`format_number`).

    Attributes:
        strict: from the last ``The answer is N`` (also ``Final answer: N``), ``#### N`` or ``\\boxed{N}``.
        flexible: the last number of the completion.
        strict_span / flexible_span: character ranges of the two numbers in the completion.
    """

    strict: str | None
    flexible: str | None
    strict_span: tuple[int, int] | None = None
    flexible_span: tuple[int, int] | None = None

    @property
    def final(self) -> str | None:
        """The answer used for the outcome: the strict one, else the flexible one."""
        return self.strict if self.strict is not None else self.flexible

    @property
    def final_span(self) -> tuple[int, int] | None:
        return self.strict_span if self.strict is not None else self.flexible_span


def extract_answers(text: str) -> AnswerExtraction:
    """The strict and the flexible answer of ``text``.

    Strict: of all ``The answer is N`` / ``Final answer: N`` / ``#### N`` / ``\\boxed{N}`` statements, the one
    that ends last (a model that corrects itself states its last answer last). Flexible: the last number in
    the text (``"... 3 + 4 = 7 apples."`` gives 7), the lm-eval-harness "flexible-extract" rule.
    """
    candidates: list[tuple[int, int, Fraction]] = []
    for match in _STRICT_ANSWER_RE.finditer(text):
        value = _number_value(match.group("number"))
        if value is not None:
            if match.group("sign"):
                value = -value
            candidates.append((match.start("number"), match.end("number"), value))
    for start, end, value in _boxed_values(text):
        candidates.append((start, end, value))
    strict = max(candidates, key=lambda c: c[1]) if candidates else None
    flexible = None
    for match in reversed(list(_FLEXIBLE_NUMBER_RE.finditer(text))):
        value = _number_value(match.group("number"))
        if value is not None:
            flexible = (match.start("number"), match.end("number"), value)
            break
    return AnswerExtraction(
        strict=None if strict is None else format_number(strict[2]),
        flexible=None if flexible is None else format_number(flexible[2]),
        strict_span=None if strict is None else (strict[0], strict[1]),
        flexible_span=None if flexible is None else (flexible[0], flexible[1]),
    )


def extract_final_answer(text: str) -> str | None:
    """The answer used for the outcome: strict when the text states one, else flexible (the last number)."""
    return extract_answers(text).final


def _boxed_values(text: str) -> Iterable[tuple[int, int, Fraction]]:
    """``(start, end, value)`` of every ``\\boxed{...}`` whose content is a number (LaTeX fractions,
    ``\\text{}`` units, ``\\$`` and ``\\%`` allowed)."""
    for match in _BOXED_RE.finditer(text):
        depth, end = 1, match.end()
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        if depth:
            continue
        content = text[match.end() : end - 1]
        content = _LATEX_FRACTION_RE.sub(r"\1/\2", content)
        content = re.sub(r"\\(?:text|mathrm|textbf)\s*\{[^{}]*\}", "", content)
        content = content.replace("\\$", "$").replace("\\%", "%").replace("\\!", "").replace("{,}", ",")
        value = parse_number(content)
        if value is not None:
            yield match.start(), end, value


# --- the numbers a question gives ------------------------------------------------------------------------------

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40,
    "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 1_000_000, "dozen": 12, "dozens": 12, "pair": 2, "pairs": 2, "twice": 2, "double": 2,
    "doubles": 2, "doubled": 2, "triple": 3, "triples": 3, "tripled": 3, "thrice": 3, "quadruple": 4,
    "quadruples": 4, "half": 2, "halves": 2, "halved": 2, "third": 3, "thirds": 3, "quarter": 4,
    "quarters": 4, "fourth": 4, "fourths": 4, "fifth": 5, "fifths": 5, "sixth": 6, "tenth": 10,
}  # fmt: skip
_WORD_RE = re.compile(r"[a-z]+")
_PLAIN_NUMBER_RE = re.compile(r"(?<![\d.])\d+(?:\.\d+)?")
_FRACTION_RE = re.compile(r"(?<![\w.,])(\d+)\s*/\s*(\d+)(?![\w.,]|\.\d)")
_PERCENT_WORD_RE = re.compile(r"\bper\s*cent", re.IGNORECASE)
_FRACTION_WORDS = {"half": Fraction(1, 2), "halves": Fraction(1, 2), "quarter": Fraction(1, 4)}


def question_numbers(text: str) -> frozenset[Fraction]:
    """The numbers a question gives: every number written in digits (a percentage ``p%`` gives ``p`` and
    ``p/100``; a fraction ``a/b`` gives ``a``, ``b`` and ``a/b``; ``3 1/2`` gives 3, 1, 2 and 7/2), every
    number word (``three``, ``dozen``, ``twice`` = 2, ``half`` = 2 and 1/2, ``quarter`` = 4 and 1/4), and 100
    when the question speaks of percent. These are the numbers a step may use without computing them.
    (Whole values are held as ``int``, which equals and hashes like the ``Fraction``.)"""
    numbers: set[Fraction | int] = {_key(_decimal(m.group())) for m in _PLAIN_NUMBER_RE.finditer(text)}
    for match in _NUMBER_TOKEN_RE.finditer(text):
        kind = match.lastgroup
        if kind in ("num", "mixed") and (number := _number(kind, match.group(kind), match.start(kind))):
            numbers.update(number.usable)
    if "/" in text:
        for fraction in _FRACTION_RE.finditer(text):
            if int(fraction.group(2)):
                numbers.add(_key(Fraction(int(fraction.group(1)), int(fraction.group(2)))))
    for word in _WORD_RE.findall(text.lower()):
        if word in _NUMBER_WORDS:
            numbers.add(_NUMBER_WORDS[word])
            if word in _FRACTION_WORDS:
                numbers.add(_FRACTION_WORDS[word])
    if "%" in text or _PERCENT_WORD_RE.search(text):
        numbers.add(100)
    return frozenset(numbers)


# --- tokens and equations ----------------------------------------------------------------------------------------


class Number(NamedTuple):
    """A number written in a step: its literal value (``20`` for ``20%``) and whether it is a percentage.

    Values are exact: an ``int`` when whole (fewer objects, quicker to hash), else a ``Fraction``; the two
    compare and hash alike, so sets of values may mix them.
    """

    literal: Fraction | int
    percent: bool
    text: str
    start: int

    @property
    def value(self) -> Fraction | int:
        """The value it has in arithmetic (``20%`` is 1/5)."""
        return _key(Fraction(self.literal, 100)) if self.percent else self.literal

    @property
    def usable(self) -> tuple[Fraction | int, ...]:
        """The values under which it can be known: the literal and, for a percentage, its value (whole
        values as ``int``, which equal and hash like the ``Fraction`` but hash faster)."""
        return (self.literal, self.value) if self.percent else (self.literal,)


def _key(value: Fraction | int) -> Fraction | int:
    """``value`` as an ``int`` when it is whole (equal, same hash, quicker to hash), else itself."""
    return value.numerator if value.denominator == 1 else value


class _Token(NamedTuple):
    kind: str  # num, op, lp, rp, eq, cur, var, word, other, skip
    text: str
    start: int
    end: int
    number: Number | None = None


#: a word of two letters or more that is not an operator word ("of", "plus", "minus")
_PLAIN_WORD = r"(?!(?i:of|plus|minus)\b|[^\W\d_]\b)[^\W\d_]+(?:['’][^\W\d_]+)*"
_TOKEN_RE = re.compile(  # spaces before a token are part of its match, so there are fewer matches
    r"\s*(?:(?P<skip><<[^<>]*>>|\b(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?\b(?!\s*[-+*/=])|(?<=[^\W\d_xX])\d+|\b\d+(?:st|nd|rd|th)\b)"
    r"|(?P<mixed>\d+\s+(?:and\s+)?\d+/\d+(?![\d/.]))"
    r"|(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d{1,3}(?:[ \u00a0]\d{3})*[ \u00a0]000(?![\d/])|(?<=[$€£¥])\d{1,3}(?:[ \u00a0]\d{3})+(?![\d/])|\d+)(?:\.\d+)?(?:\.{3}|…)?(?:\s?%)?"
    r"|\.\d+(?:\s?%)?)"
    r"|(?P<op>[+\-−–*×·/÷]|(?<=[\d\s)])[xX](?=[\s\d($]))"
    r"|(?P<lp>\()|(?P<rp>\))|(?P<eq>=)|(?P<cur>[$€£¥])"
    # a run of plain words (two letters or more, not "of", "plus", "minus") is one token: fewer matches
    r"|(?P<word>" + _PLAIN_WORD + r"(?:[ \t]+" + _PLAIN_WORD + r")*|[^\W\d_]+(?:['’][^\W\d_]+)*)"
    r"|(?P<other>.)|(?P<end>$))",
    re.DOTALL,
)
#: numbers only (the first alternatives of _TOKEN_RE, without its leading spaces), found fast by a lookahead
_NUMBER_TOKEN_RE = re.compile("(?=[\\d.<])" + _TOKEN_RE.pattern.split("|(?P<op>")[0][3:] + ")")
_OPERATORS = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "×": "*", "·": "*", "x": "*", "X": "*"}
_OPERATORS.update({"/": "/", "÷": "/"})
#: words that are operators between two numbers ("20% of 50"); not "times" ("20 times 2 people came")
_OPERATOR_WORDS = {"of": "*", "plus": "+", "minus": "-"}
#: single letters that are words, not unknowns
_LETTER_WORDS = {"I"}
#: the most words that may stand inside an expression in a row (see :func:`_filler_words`)
_MAX_FILLER_WORDS = 10
_DIGIT_RE = re.compile(r"\d")
#: what a number token may hold besides digits and its decimal point
_NOT_DIGITS = str.maketrans("", "", ", \t\u00a0%…")
#: a list marker or step number at the start of a step ("Step 2:", "2.", "- ", "* ")
_STEP_MARKER_RE = re.compile(r"^\s*(?:step\s*\d+\s*[:.)-]?|\d+\s*[.)](?=\s)|[-*•]\s)\s*", re.IGNORECASE)


def _tokens(text: str) -> list[_Token]:
    """The tokens of ``text`` without spaces; operator words and unknowns are classified in context."""
    tokens = []
    for match in _TOKEN_RE.finditer(text):
        kind = match.lastgroup or "end"
        if kind == "end":
            continue
        start = match.start(kind)
        piece = match.group(kind)
        number = None
        if kind in ("num", "mixed"):
            number = _number(kind, piece, start)
            if number is None:
                continue
            kind = "num"
        tokens.append(_Token(kind, piece, start, match.end(), number))
    tokens = [_classify(tokens, i) if t.kind in ("op", "word") else t for i, t in enumerate(tokens)]
    return _group_divided_fractions(tokens) if "/" in text else tokens


def _number(kind: str, piece: str, start: int) -> Number | None:
    """The number a ``num`` or ``mixed`` token writes ("1,250", "80 000", "16.66...%", "20 %", "1 1/2",
    "5 and 2/3"); ``None`` for a mixed number over zero."""
    if kind == "mixed":
        whole, fraction = piece.replace("and", " ").split(maxsplit=1)
        numerator, denominator = fraction.split("/")
        if int(denominator) == 0:
            return None
        literal = _key(int(whole) + Fraction(int(numerator), int(denominator)))
        return Number(literal=literal, percent=False, text=piece, start=start)
    if piece.isdigit():
        return Number(literal=int(piece), percent=False, text=piece, start=start)
    digits = piece.translate(_NOT_DIGITS).rstrip(".")
    return Number(literal=_decimal(digits), percent=piece.endswith("%"), text=piece, start=start)


def _decimal(digits: str) -> Fraction | int:
    """The exact value of ``"12"``, ``"12.5"`` or ``".5"`` (quicker than ``Fraction(str)``; whole values as
    ``int``)."""
    whole, _, decimals = digits.partition(".")
    return _key(Fraction(int(whole + decimals or "0"), 10 ** len(decimals))) if decimals else int(whole)


def _group_divided_fractions(tokens: list[_Token]) -> list[_Token]:
    """Parenthesise a fraction written without spaces after a spaced division: "2 / 1/5" is 2 / (1/5)."""
    out: list[_Token] = []
    i = 0
    while i < len(tokens):
        if (
            _is_glued_fraction(tokens, i)
            and i >= 1
            and tokens[i - 1].kind == "op"
            and tokens[i - 1].text == "/"
        ):
            slash = tokens[i - 1]
            spaced = i < 2 or tokens[i - 2].end != slash.start or slash.end != tokens[i].start
            if spaced:
                a, c = tokens[i], tokens[i + 2]
                out += [
                    _Token("lp", "(", a.start, a.start),
                    a,
                    tokens[i + 1],
                    c,
                    _Token("rp", ")", c.end, c.end),
                ]
                i += 3
                continue
        out.append(tokens[i])
        i += 1
    return out


def _is_glued_fraction(tokens: list[_Token], i: int) -> bool:
    """Whether ``tokens[i:i+3]`` is ``a/b`` with no spaces and whole numbers (not percentages)."""
    if i + 2 >= len(tokens):
        return False
    a, slash, b = tokens[i : i + 3]
    return (
        a.number is not None
        and b.number is not None
        and slash.kind == "op"
        and slash.text == "/"
        and a.end == slash.start
        and slash.end == b.start
        and not a.number.percent
        and not b.number.percent
        and a.number.literal.denominator == 1
        and b.number.literal.denominator == 1
    )


def _classify(tokens: list[_Token], i: int) -> _Token:
    """``tokens[i]`` with its kind decided by its neighbours.

    - ``x`` is multiplication between operands ("3 x 4"), or after a unit and before an operand ("8 games
      x 2 hours"); elsewhere it is an unknown ("x = 5", "4x").
    - A hyphen glued to a word of two letters or more is part of a compound word ("8-hour", "t-shirts"),
      not a minus ("X-2" is a minus).
    - "of", "plus", "minus" between a number (or ``)``) and a number (or ``(``, a currency sign)
      are operators ("20% of 50").
    - A single letter is an unknown when it is glued to a number ("2S", "4x"), or next to an operator, or
      before ``=`` ("p = 1000", "A + 2A"); "I" is a word.
    """
    token = tokens[i]
    before = tokens[i - 1] if i > 0 else None
    after = tokens[i + 1] if i + 1 < len(tokens) else None
    operand_before = before is not None and before.kind in ("num", "rp")
    operand_after = after is not None and after.kind in ("num", "lp", "cur")
    if token.kind == "op":
        word_before = before is not None and before.kind == "word" and before.end == token.start
        word_after = after is not None and after.kind == "word" and after.start == token.end
        glued_to_word = word_before and len(before.text) > 1 or word_after and len(after.text) > 1
        if token.text in "-–" and glued_to_word:
            return _Token("other", token.text, token.start, token.end)
        spaced_after_word = before is not None and before.kind == "word" and before.end < token.start
        if token.text in "xX" and not (operand_after and (operand_before or spaced_after_word)):
            return _Token("var", token.text, token.start, token.end)
        return _Token("op", _OPERATORS[token.text], token.start, token.end)
    if token.kind != "word" or " " in token.text or "\t" in token.text:
        return token
    if token.text.lower() in _OPERATOR_WORDS and operand_before and operand_after:
        return _Token("op", _OPERATOR_WORDS[token.text.lower()], token.start, token.end)
    glued = before is not None and before.kind == "num" and before.end == token.start
    if len(token.text) == 1 and token.text not in _LETTER_WORDS:
        beside_operator = (after is not None and after.kind in ("op", "eq")) or (
            before is not None and before.kind == "op"
        )
        if glued or beside_operator:
            return _Token("var", token.text, token.start, token.end)
    return token


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


# --- the gold computation and the oracle -----------------------------------------------------------------------


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
        """Index of the first incorrect step, or -1 when every step is correct."""
        return next((i for i, v in enumerate(self.verdicts) if not v.correct), -1)

    @property
    def all_correct(self) -> bool:
        return self.first_error == -1

    def prefix_labels(self) -> list[float]:
        """ALGORITHM.md's labels: 1.0 before the first error, 0.0 from it on."""
        first = self.first_error
        n = len(self.verdicts)
        return [1.0 if first == -1 or i < first else 0.0 for i in range(n)]


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


# --- the math task base -----------------------------------------------------------------------------------------


class MathTask(Task):
    """A math word-problem task: few-shot prompts, answer extraction and checking, and oracle labels.

    Subclasses load questions (:meth:`load`), give few-shot examples (:meth:`fewshot_pool`) and the gold
    computation of a question (:meth:`gold_computation`).

    Args:
        num_fewshot: number of gold examples prepended to every prompt (0: none). With a chat template they
            are earlier user/assistant turns; without, ``prompt_template`` + solution blocks before the
            question. A question is never its own example.
        separator: the step separator of completions.
        use_chat_template: use the tokenizer's chat template when it has one.
    """

    prompt_template = "Question: {question}\nAnswer:\n"
    #: relax the oracle where the gold computation is incomplete (``approximate`` in :func:`judge_steps`)
    approximate_oracle: bool = False
    #: how many parsed steps :meth:`parse_step` remembers
    max_parsed_steps: int = 200_000
    instruction = (
        "Solve the problem step by step. Write one step per line, each with its equation, "
        "and end with 'The answer is N'.\n\n"
    )

    def completion_end(self, completion: str) -> int | None:
        """A math completion is finished after its first complete answer line ("The answer is N", "#### N",
        ``\\boxed{N}``, followed by a newline)."""
        match = ANSWER_LINE_RE.search(completion)
        return match.end() if match else None

    def __init__(
        self, num_fewshot: int = 0, separator: str = DEFAULT_SEPARATOR, use_chat_template: bool = True
    ) -> None:
        super().__init__(separator=separator, use_chat_template=use_chat_template)
        if num_fewshot < 0:
            raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
        self.num_fewshot = num_fewshot
        self._fewshot_cache: list[Question] | None = None
        self._parsed_steps: dict[str, StepParts] = {}

    # --- few-shot prompts ---------------------------------------------------------------------------------
    @abstractmethod
    def fewshot_pool(self) -> list[Question]:
        """Questions with gold solutions to draw few-shot examples from (the first ones are used)."""

    def fewshot_examples(self, question: Question) -> list[Question]:
        """The ``num_fewshot`` examples for ``question``: the first questions of :meth:`fewshot_pool` that
        have a solution and are not ``question`` itself (same id or same text)."""
        if self.num_fewshot == 0:
            return []
        if self._fewshot_cache is None:
            self._fewshot_cache = [q for q in self.fewshot_pool() if q.solution is not None]
        examples = [
            q
            for q in self._fewshot_cache
            if q.id != question.id and q.question.strip() != question.question.strip()
        ]
        if len(examples) < self.num_fewshot:
            raise ValueError(
                f"task {self.name!r}: only {len(examples)} few-shot examples for {self.num_fewshot}"
            )
        return examples[: self.num_fewshot]

    def prompt(self, question: Question, tokenizer: Any = None) -> str:
        """The prompt, with the few-shot examples before the question (see the class docstring)."""
        examples = self.fewshot_examples(question)
        if not examples:
            return super().prompt(question, tokenizer)
        if self.use_chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
            messages = []
            for example in examples:
                messages.append({"role": "user", "content": self.user_message(example)})
                messages.append({"role": "assistant", "content": self._solution_text(example)})
            messages.append({"role": "user", "content": self.user_message(question)})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        shots = "".join(
            self.prompt_template.format(question=e.question) + self._solution_text(e) + "\n" for e in examples
        )
        return shots + self.prompt_template.format(question=question.question)

    def _solution_text(self, question: Question) -> str:
        return join_steps(self.split_steps(question.solution or ""), self.separator)

    # --- answers ------------------------------------------------------------------------------------------
    def extract_answers(self, completion: str) -> AnswerExtraction:
        """The strict and the flexible answer (see :func:`extract_answers`)."""
        return extract_answers(completion)

    def extract_answer(self, completion: str) -> str | None:
        """The answer used for the outcome: strict ("The answer is N", "#### N", ``\\boxed{N}``; the last
        one stated), else flexible (the last number of the completion)."""
        return extract_final_answer(completion)

    def is_correct(self, answer: str | None, question: Question) -> bool:
        """Exact numeric equality with the gold answer (see :func:`answers_equal`)."""
        return answers_equal(answer, question.answer)

    # --- the oracle ---------------------------------------------------------------------------------------
    @abstractmethod
    def gold_computation(self, question: Question) -> GoldComputation:
        """What the oracle compares solutions of ``question`` with."""

    @property
    def has_oracle(self) -> bool:
        return True

    def parse_step(self, step: str) -> StepParts:
        """:func:`find_equations` of a step, remembered: samples of one question share many steps. The
        memory holds at most :attr:`max_parsed_steps` steps and is emptied when full."""
        parts = self._parsed_steps.get(step)
        if parts is None:
            if len(self._parsed_steps) >= self.max_parsed_steps:
                self._parsed_steps.clear()
            parts = self._parsed_steps[step] = find_equations(step)
        return parts

    def judge(self, steps: Sequence[str] | Trajectory, question: Question) -> OracleResult:
        """Per-step correctness and the first error of a solution (see :func:`judge_steps`)."""
        if isinstance(steps, Trajectory):
            steps = steps.steps
        gold = self.gold_computation(question)
        return judge_steps(steps, gold, approximate=self.approximate_oracle, parse=self.parse_step)

    def oracle_labels(self, trajectory: Trajectory, question: Question) -> list[float]:
        """1.0 for the steps before the oracle's first error, 0.0 from it on."""
        return self.judge(trajectory, question).prefix_labels()
