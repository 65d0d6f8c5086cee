"""Numbers and final answers of the math tasks, and the numbers a question gives.

- :func:`parse_number` reads ``"$1,250.50."``, ``"7.0"``, ``"3/4"`` or ``"50%"`` as an exact
  :class:`~fractions.Fraction`; :func:`format_number` writes a value canonically; :func:`answers_equal`
  compares two answers exactly.
- :func:`extract_answers` finds the strict answer (``The answer is N``, ``#### N``, ``\\boxed{N}``) and the
  flexible one (the last number) of a completion; :data:`ANSWER_LINE_RE` finds a finished answer line.
- :func:`question_numbers`: the numbers a question gives, which a step may use without computing them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from sapo.data.tasks.math.tokens import _NUMBER_TOKEN_RE, _decimal, _key, _number

__all__ = [
    "ANSWER_LINE_RE",
    "AnswerExtraction",
    "answers_equal",
    "extract_answers",
    "extract_final_answer",
    "format_number",
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
