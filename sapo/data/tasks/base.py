"""The Task protocol: where questions come from, how prompts look, how completions are checked.

A task knows its domain (math word problems, Python functions) and nothing of models or training: it turns
data rows into :class:`Question` records, builds prompts, splits completions into steps, extracts and checks
final answers, and, where the domain allows, labels steps with an oracle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sapo.data.steps import DEFAULT_SEPARATOR, join_steps, normalised_steps, split_steps
from sapo.data.trajectory import Trajectory

__all__ = ["Question", "Task"]


@dataclass
class Question:
    """One problem of a task.

    Attributes:
        id: stable identifier (``"gsm8k/train/12"``, ``"mbpp/601"``, ``"arith/seed0/3"``).
        question: the problem statement shown to the model.
        answer: the gold final answer (math), or ``None`` (code: the tests decide).
        solution: a gold step-by-step solution, one step per line, where the data has one.
        tests: assertion lines for code tasks.
        meta: anything task-specific (gold intermediate values, a test set-up, an entry point).
    """

    id: str
    question: str
    answer: str | None = None
    solution: str | None = None
    tests: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """A reasoning task. Subclasses load questions and check answers; the rest has sensible defaults.

    Args:
        separator: the step separator of completions (``"\\n"``; ``"\\n\\n"`` for paragraph data).
        use_chat_template: build prompts with the tokenizer's chat template when it has one; otherwise (or
            when False) use :attr:`prompt_template`.
    """

    #: a short name used in ids, file names and logs
    name: str = "task"
    #: the plain prompt, used without a chat template; ``{question}`` is replaced
    prompt_template: str = "Question: {question}\nAnswer:\n"
    #: the instruction given before the question with a chat template
    instruction: str = ""

    def __init__(self, separator: str = DEFAULT_SEPARATOR, use_chat_template: bool = True) -> None:
        self.separator = separator
        self.use_chat_template = use_chat_template

    # --- data -------------------------------------------------------------------------------------------
    @abstractmethod
    def load(self) -> list[Question]:
        """The task's questions for its configured source, split and slice."""

    # --- prompts ----------------------------------------------------------------------------------------
    def user_message(self, question: Question) -> str:
        """The text of the user turn for ``question`` (instruction and question)."""
        return f"{self.instruction}{question.question}" if self.instruction else question.question

    def prompt(self, question: Question, tokenizer: Any = None) -> str:
        """The prompt text for ``question``: the tokenizer's chat template when there is one, else the template."""
        if self.use_chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": self.user_message(question)}],
                tokenize=False,
                add_generation_prompt=True,
            )
        return self.prompt_template.format(question=question.question)

    # --- completions ------------------------------------------------------------------------------------
    def split_steps(self, completion: str) -> list[str]:
        """The steps of a completion (split on :attr:`separator`, empty pieces dropped)."""
        return split_steps(completion, self.separator)

    def completion_text(self, steps: Sequence[str]) -> str:
        return join_steps(steps, self.separator)

    def completion_end(self, completion: str) -> int | None:
        """Where a finished completion ends (characters to keep), or ``None`` while it goes on.

        Samplers check it after each generated token that contains a newline, so generation stops right
        after the answer step; EOS and the token budget always apply. Default: never (EOS only).
        """
        return None

    def dedup_key(self, trajectory: Trajectory) -> Hashable:
        """Samples of one question with equal keys are one solution; default: the steps, lower-cased, with
        white space collapsed (:func:`~sapo.data.steps.normalised_steps`)."""
        return normalised_steps(trajectory)

    @abstractmethod
    def extract_answer(self, completion: str) -> str | None:
        """The final answer stated in a completion, or ``None``."""

    @abstractmethod
    def is_correct(self, answer: str | None, question: Question) -> bool:
        """Whether an extracted answer (or program) solves ``question``."""

    def answer_forms(self, completion: str) -> dict[str, str | None]:
        """Other readings of a completion's final answer, by name, each judged with :meth:`is_correct` on its
        own; the evaluation reports one accuracy per name (``<name>_accuracy``) beside the outcome's.

        Give the same names for every completion (``None`` where a reading finds no answer). Default: none;
        math tasks give their ``strict`` and ``flexible`` answers.
        """
        return {}

    def new_trajectory(self, question: Question, completion: str, **meta: Any) -> Trajectory:
        """An unchecked trajectory from a raw completion (steps only; :meth:`check` fills the outcome)."""
        return Trajectory(
            question_id=question.id,
            question=question.question,
            steps=self.split_steps(completion),
            gold_answer=question.answer,
            meta=dict(meta),
        )

    def trajectory(self, question: Question, completion: str, **meta: Any) -> Trajectory:
        """A checked trajectory from a raw completion (many at once: :meth:`new_trajectory` then :meth:`check`)."""
        return self.check([self.new_trajectory(question, completion, **meta)], {question.id: question})[0]

    def check(self, trajectories: Sequence[Trajectory], questions: dict[str, Question]) -> list[Trajectory]:
        """Fill ``final_answer`` and ``outcome`` of each trajectory (in place; also returned).

        Tasks whose checks are expensive (running programs) override this to batch them.
        """
        for t in trajectories:
            if t.question_id not in questions:
                raise KeyError(f"trajectory for unknown question id {t.question_id!r}")
            q = questions[t.question_id]
            t.final_answer = self.extract_answer(self.completion_text(t.steps))
            t.outcome = self.is_correct(t.final_answer, q)
            t.gold_answer = q.answer
        return list(trajectories)

    def gold_trajectory(self, question: Question) -> Trajectory:
        """The reference solution as an all-correct trajectory (for SFT); needs ``question.solution``."""
        if question.solution is None:
            raise ValueError(f"question {question.id!r} of task {self.name!r} has no reference solution")
        steps = self.split_steps(question.solution)
        return Trajectory(
            question_id=question.id,
            question=question.question,
            steps=steps,
            final_answer=question.answer,
            outcome=True,
            labels=[1.0] * len(steps),
            label_source="gold",
            gold_answer=question.answer,
        )

    # --- the step oracle --------------------------------------------------------------------------------
    @property
    def has_oracle(self) -> bool:
        return False

    def oracle_labels(self, trajectory: Trajectory, question: Question) -> list[float]:
        """True per-step correctness (1.0 / 0.0), for tasks that have an oracle."""
        raise NotImplementedError(f"task {self.name!r} has no step oracle")
