"""GSM8K (Cobbe et al. 2021): grade-school math word problems with worked, calculator-annotated solutions.

Rows have a ``question`` and an ``answer``: a worked solution whose lines carry calculator annotations
(``48/2 = <<48/2=24>>24``) and end with ``#### N``. From each row the task builds:

- the gold answer ``N`` (canonical: no thousands separators; a non-numeric ``N`` is an invalid row);
- a gold solution for SFT (:func:`gold_solution`): one step per line, annotations removed; where an
  annotation was the only statement of its computation it is written out as a plain equation
  ("48/2 = 24"), so the model learns to write every computation as an equation; a last line
  "The answer is N.".

**The approximate step oracle** is the synthetic task's (:func:`~sapo.data.tasks.math.judge_steps`)
with the reference solution as the gold computation: the values its calculator annotations compute, plus the
values of the true equations written in its text without an annotation (GSM8K's annotations are
incomplete). Given numbers are the question's numbers, the constants the reference brings in, and
:data:`WORLD_CONSTANTS`. It is **approximate**:

- a correct solution that takes another path (computes a value the reference never computes, or uses a
  number that is neither in the question nor in the reference) is marked wrong at the step that leaves the
  reference's path;
- numbers stated outside equations are not judged (references state numbers read from the question's
  words, "on Monday, Wednesday and Friday", which no parser can check); a wrong one is caught where an
  equation uses it, because the result leaves the gold computation; equations with unknowns ("x = 5") are
  not judged either.

On the 7,473 training references, every answer extracts to itself and the oracle calls 99.2% of them
all-correct; the failures are mostly references whose arithmetic is wrong ("192*100=$1920") and
notation the parser misreads (``benchmarks/gsm8k_oracle.py`` lists them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from sapo.data.steps import DEFAULT_SEPARATOR
from sapo.data.tasks.base import Question
from sapo.data.tasks.loading import InvalidRows, Row, load_questions, load_rows, require_field
from sapo.data.tasks.math import (
    Equation,
    GoldComputation,
    MathTask,
    StepParts,
    find_equations,
    format_number,
    gold_from_parsed,
    parse_equation,
    parse_number,
    question_numbers,
)

__all__ = [
    "WORLD_CONSTANTS",
    "GSM8KTask",
    "gold_solution",
    "gsm8k_gold_equations",
    "parse_gsm8k_answer",
    "ANNOTATION_RE",
]

#: a calculator annotation ``<<expression=result>>``
ANNOTATION_RE = re.compile(r"<<([^<>]*)>>")
_FINAL_LINE_RE = re.compile(r"^\s*####\s*(?P<answer>.*?)\s*$", re.MULTILINE)
#: numbers GSM8K references use from everyday knowledge: one, pairs and halves, feet in a yard, quarters and
#: weeks in a month, days in a week, dimes, a dozen, hours in a day, days in a month, weeks in a year,
#: minutes in an hour, percent and cents, days in a year, grams in a kilogram
WORLD_CONSTANTS = (1, 2, 3, 4, 7, 10, 12, 24, 30, 52, 60, 100, 365, 1000)
_OPERATOR_RE = re.compile(r"\d\s*[-+*/x×÷]\s*[-(.\d]")


def parse_gsm8k_answer(row: Row, field: str = "answer") -> tuple[str, str | None]:
    """The gold answer (canonical number text) and the worked solution (``None`` when the field is just a
    number) of a GSM8K row; an :class:`~sapo.data.tasks.loading.InvalidRowError` names the row and field
    when the field has no ``#### N`` line and is not a number, or when ``N`` is not a number."""
    text = require_field(row, field, str)
    finals = list(_FINAL_LINE_RE.finditer(text))
    if not finals:
        value = parse_number(text)
        if value is None:
            raise row.error(f"has no final '#### N' line and is not a number: {text[:60]!r}", field)
        return format_number(value), None
    answer = finals[-1].group("answer")
    value = parse_number(answer)
    if value is None:
        raise row.error(f"has a final answer {answer!r} that is not a number", field)
    return format_number(value), text[: finals[-1].start()]


def gsm8k_gold_equations(
    reference: str,
    solution_steps: list[str] | None = None,
    parse: Callable[[str], StepParts] = find_equations,
) -> list[Equation]:
    """The gold computation of a reference solution, as parsed equations in order.

    The calculator annotations (those not written out verbatim in the text), then the true equations
    written in the solution's text, annotated or not: GSM8K's annotations are incomplete (about a tenth of references compute values in plain
    text only, "8+4=12 wheels"), and such a value is as much a part of the reference's computation.
    ``solution_steps`` are the steps of :func:`gold_solution` (computed when not given). Annotations that the
    equation parser cannot read are left out (there are none in GSM8K's train and test files). ``parse``
    reads a step (a task passes its memoised :meth:`~sapo.data.tasks.math.MathTask.parse_step`).
    """
    if solution_steps is None:
        solution_steps = gold_solution(reference, "0")[:-1]
    written = [e for step in solution_steps for e in parse(step).equations if e.is_true]
    written_text = {_compact(e.expression) for e in written}
    equations = []
    for match in ANNOTATION_RE.finditer(reference):
        text = match.group(1)
        if (
            "=" in text
            and _compact(text) not in written_text
            and (equation := parse_equation(text)) is not None
        ):
            equations.append(equation)
    return equations + written


def _compact(equation: str) -> str:
    """An equation's text without spaces, for spotting an annotation written out verbatim."""
    return "".join(equation.split())


def gold_solution(reference: str, answer: str) -> list[str]:
    """The steps of a reference solution for SFT: one per non-empty line, then "The answer is N".

    An annotation that follows its own written equation ("48/2 = <<48/2=24>>24") is removed. One that is the
    only statement of its computation ("so he has <<5*2=10>>10 apples") becomes a plain equation before its
    result ("so he has 5*2 = 10 apples"), so every computed value appears with its equation. An annotation
    without an operator ("<<12=12>>") is removed. The ``#### N`` line is replaced by "The answer is N".
    """
    steps = []
    for line in reference.splitlines():
        if _FINAL_LINE_RE.match(line):
            continue
        text = _rewrite_annotations(line)
        text = re.sub(r"[ \t]+", " ", text).strip()
        if text:
            steps.append(text)
    steps.append(f"The answer is {answer}.")
    return steps


def _rewrite_annotations(line: str) -> str:
    """A line with each annotation removed or written out as an equation (see :func:`gold_solution`)."""
    pieces = []
    cursor = 0
    for match in ANNOTATION_RE.finditer(line):
        before = line[cursor : match.start()]
        pieces.append(before)
        expression, _, _ = match.group(1).rpartition("=")
        written = "".join(pieces).rstrip(" $€£")
        if not written.endswith("=") and _OPERATOR_RE.search(expression):
            pieces.append(f"{expression.strip()} = ")
        cursor = match.end()
    pieces.append(line[cursor:])
    return "".join(pieces)


class GSM8KTask(MathTask):
    """GSM8K from the hub, a local hub-layout folder, or a local file (``.jsonl``, ``.json``, ``.parquet``).

    Args:
        source: a hub dataset id (``openai/gsm8k``), a folder laid out like it
            (``folder/main/train-00000-of-00001.parquet``, or ``folder/train.jsonl``), or a file.
        split: the split to read (``train``, ``test``). For a file source (a file is one split) it only names
            the split in question ids; ``None`` takes the file's name (``test.jsonl`` -> ``test``), else
            ``train``.
        config_name: the hub configuration (``main``; ``socratic``), or the sub-folder of a local folder.
            Ignored for files.
        start, stop: a Python slice of the split's rows (ids keep the row's position in the split).
        num_fewshot: gold examples prepended to each prompt.
        fewshot_source: where few-shot examples come from (default: ``source``), read from ``fewshot_split``;
            the first rows that are not the question itself are used.
        fewshot_split: the split of ``fewshot_source`` (ignored when it is a file).
        skip_invalid: skip rows without a question or a numeric answer, counting them in :attr:`skipped`
            (and in one warning), instead of raising an error naming the file, line and field. A source
            that yields no question (empty, sliced to nothing, every row skipped) always raises
            :class:`~sapo.data.tasks.loading.EmptyDataError` naming the file.
        oracle_constants: numbers every step may use without computing them (default
            :data:`WORLD_CONSTANTS`: 1 and the usual unit conversions).
        separator: the step separator.
        use_chat_template: build prompts with the tokenizer's chat template when it has one.

    Question ids are ``gsm8k/{split}/{row}``. ``question.meta`` holds ``reference`` (the worked solution
    without its ``#### N`` line, calculator annotations included) and ``where`` (file and line).
    """

    name = "gsm8k"
    approximate_oracle = True

    def __init__(
        self,
        source: str = "openai/gsm8k",
        split: str | None = None,
        config_name: str | None = "main",
        start: int | None = None,
        stop: int | None = None,
        num_fewshot: int = 0,
        fewshot_source: str | None = None,
        fewshot_split: str = "train",
        skip_invalid: bool = False,
        oracle_constants: list[int] | None = None,
        separator: str = DEFAULT_SEPARATOR,
        use_chat_template: bool = True,
    ) -> None:
        super().__init__(num_fewshot=num_fewshot, separator=separator, use_chat_template=use_chat_template)
        self.source = os.fspath(source)
        self.split = split
        self.config_name = config_name
        self.start = start
        self.stop = stop
        self.fewshot_source = fewshot_source
        self.fewshot_split = fewshot_split
        self.oracle_constants = list(WORLD_CONSTANTS if oracle_constants is None else oracle_constants)
        #: rows left out by ``skip_invalid`` in the last :meth:`load`, with the reasons
        self.skipped = InvalidRows(skip=skip_invalid)
        self._questions: list[Question] | None = None
        self._gold: dict[str, tuple[tuple[str, str], GoldComputation]] = {}

    @property
    def split_name(self) -> str:
        """The split named in ids: ``split``, else a file source's name, else ``train``."""
        if self.split is not None:
            return self.split
        path = Path(self.source)
        if path.is_file():
            return path.name.split(".")[0]
        return "train"

    def load(self) -> list[Question]:
        """The questions of the configured source, split and slice (read once, then cached)."""
        if self._questions is None:
            self._questions = load_questions(
                self.source,
                self.split_name,
                self.question_from_row,
                self.skipped,
                name=self.config_name,
                start=self.start,
                stop=self.stop,
            )
        return list(self._questions)

    def question_from_row(self, row: Row, split: str | None = None) -> Question:
        """A :class:`Question` from a GSM8K row (``question``, ``answer`` with ``#### N``); ``meta`` holds
        ``reference`` (the original worked solution, annotations included) and ``where`` (file and line)."""
        question = require_field(row, "question", str).strip()
        answer, reference = parse_gsm8k_answer(row)
        index = row.index if row.index is not None else 0
        steps = gold_solution(reference, answer) if reference is not None else None
        return Question(
            id=f"{self.name}/{split or self.split_name}/{index}",
            question=question,
            answer=answer,
            solution=self.completion_text(steps) if steps is not None else None,
            meta={"reference": reference, "where": row.where},
        )

    def fewshot_pool(self) -> list[Question]:
        """The first rows of ``fewshot_source`` (default ``source``) in ``fewshot_split`` (enough of them for
        ``num_fewshot`` examples even when one is the question asked)."""
        source = self.fewshot_source or self.source
        argument = "fewshot_source" if self.fewshot_source else "source"
        rows = load_rows(
            source,
            self.fewshot_split,
            name=self.config_name,
            stop=self.num_fewshot + 1,
            allow_empty=False,
            argument=argument,
        )
        return [self.question_from_row(row, split=self.fewshot_split) for row in rows]

    def gold_equations(self, question: Question) -> list[Equation]:
        """The reference's computation as equations (see :func:`gsm8k_gold_equations`); none without a
        reference."""
        reference = question.meta.get("reference")
        if not reference:
            return []
        steps = self.split_steps(question.solution or "")[:-1]  # the last step is "The answer is N."
        return gsm8k_gold_equations(reference, steps, parse=self.parse_step)

    def gold_computation(self, question: Question) -> GoldComputation:
        """The reference's computation (:meth:`gold_equations`), the question's numbers and
        :attr:`oracle_constants`; computed on first use and remembered by question id."""
        if question.answer is None:
            raise ValueError(f"question {question.id!r} has no gold answer")
        cached = self._gold.get(question.id)
        if cached is not None and cached[0] == (question.question, question.answer):
            return cached[1]
        gold = gold_from_parsed(
            question_numbers(question.question),
            self.gold_equations(question),
            Fraction(question.answer),
            constants=self.oracle_constants,
        )
        self._gold[question.id] = ((question.question, question.answer), gold)
        return gold
