"""The lexer of the step oracle: the numbers a step writes and the tokens the equation parser reads.

:class:`Number` is a number as written in a step ("1,250", "20%", "1 1/2"), with its exact value;
``_tokens`` cuts a step into numbers, operators (a word such as "of" or a letter ``x`` is classified by its
neighbours), parentheses, ``=``, currency signs, unknowns and words. The regular expressions here are also
used by :func:`~sapo.data.tasks.math.numbers.question_numbers` and by the parser in
:mod:`sapo.data.tasks.math.equations`.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import NamedTuple

__all__ = ["Number"]


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
