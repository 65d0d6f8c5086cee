"""The math task base: :class:`MathTask`, the part of a math word-problem task that does not depend on where
its questions come from (few-shot prompts, answer extraction and checking, and oracle labels).

A :class:`MathTask` remembers the steps it has parsed (samples of one question share many steps); its
subclasses give the questions and each question's gold computation.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from sapo.data.steps import DEFAULT_SEPARATOR, join_steps
from sapo.data.tasks.base import Question, Task
from sapo.data.tasks.math.equations import StepParts, find_equations
from sapo.data.tasks.math.numbers import (
    ANSWER_LINE_RE,
    AnswerExtraction,
    answers_equal,
    extract_answers,
    extract_final_answer,
)
from sapo.data.tasks.math.oracle import GoldComputation, OracleResult, judge_steps
from sapo.data.trajectory import Trajectory

__all__ = ["MathTask"]


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

    def answer_forms(self, completion: str) -> dict[str, str | None]:
        """The strict answer (a stated one only) and the flexible one (the last number), each judged on
        its own by the evaluation (``strict_accuracy``, ``flexible_accuracy``)."""
        extraction = self.extract_answers(completion)
        return {"strict": extraction.strict, "flexible": extraction.flexible}

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
