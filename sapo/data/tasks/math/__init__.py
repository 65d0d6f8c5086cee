"""Numbers, final answers and the equation step oracle shared by the math tasks.

- :mod:`~sapo.data.tasks.math.numbers`: numbers and answers. :func:`parse_number` reads ``"$1,250.50."``,
  ``"7.0"``, ``"3/4"`` or ``"50%"`` as an exact :class:`~fractions.Fraction`; :func:`extract_answers` finds
  the strict answer (``The answer is N``, ``#### N``, ``\\boxed{N}``) and the flexible one (the last
  number); :func:`answers_equal` compares exactly; :func:`question_numbers` gives the numbers a question
  gives.
- :mod:`~sapo.data.tasks.math.tokens` and :mod:`~sapo.data.tasks.math.equations`: the equation parser
  (:func:`find_equations`), which reads what a step says.
- :mod:`~sapo.data.tasks.math.oracle`: the step oracle (:func:`judge_steps`). Given a
  :class:`GoldComputation` (the numbers a question gives, the values its gold solution computes, the gold
  answer) it says which steps of any completion are correct. A step is wrong when one of its equations is
  false or when it uses a value that is neither given in the question nor computed by an earlier correct
  step; the first-error labels are 1.0 for the steps before the first wrong step and 0.0 from it on.
- :mod:`~sapo.data.tasks.math.task`: :class:`MathTask`, the part of a math word-problem task that does not
  depend on where questions come from: few-shot prompts, answer extraction and checking, and oracle labels.

No function keeps state between calls; a :class:`MathTask` remembers the steps it has parsed (samples of
one question share many steps) and, for GSM8K, each question's gold computation.
"""

from sapo.data.tasks.math.equations import Equation, StepParts, find_equations, parse_equation
from sapo.data.tasks.math.numbers import (
    ANSWER_LINE_RE,
    AnswerExtraction,
    answers_equal,
    extract_answers,
    extract_final_answer,
    format_number,
    parse_number,
    question_numbers,
)
from sapo.data.tasks.math.oracle import (
    GoldComputation,
    OracleResult,
    StepVerdict,
    gold_from_equations,
    gold_from_parsed,
    judge_steps,
)
from sapo.data.tasks.math.task import MathTask

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
