"""HumanEval (Chen et al. 2021), for out-of-domain evaluation of code reasoners.

Each question is a function signature with its docstring (``prompt``); the answer completes it. Two kinds
of completion are accepted: the function's body (a base model continuing the prompt), run as
``prompt + body``; or the whole function, in a fenced block or bare (a chat model), run after the prompt
so that the prompt's imports and helper functions are there and the new definition replaces the stub.
The row's ``test`` defines ``check(candidate)``; the program passes when its asserts hold for the entry
point. Where ``check`` is only asserts (158 of 164 rows), each runs as a test of its own, which the
sandbox's parent decides on the values the program sends back (:mod:`sapo.sandbox.verdict`); otherwise
``check(entry_point)`` runs to its end inside the sandbox (its asserts under the plain-value rule).
"""

from __future__ import annotations

import ast
import os
import re

from sapo.data.tasks.base import Question
from sapo.data.tasks.loading import InvalidRows, Row, load_questions, require_field
from sapo.data.tasks.mbpp import CodeTask, code_lines

__all__ = ["HumanEvalTask", "humaneval_program", "inline_check"]


def humaneval_program(prompt: str, code: str, entry_point: str) -> str:
    """The program to run: ``prompt`` followed by the completion's code (a body continues the prompt; a
    whole function, which defines ``entry_point`` at the top level, follows it on a new line)."""
    defines = re.search(rf"^(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE)
    return prompt.rstrip("\n") + "\n\n" + code if defines else prompt + code


class HumanEvalTask(CodeTask):
    """HumanEval from the hub (``openai/openai_humaneval``, split ``test``) or a local file
    (``HumanEval.jsonl.gz``).

    Args:
        source: a hub dataset id, a folder laid out like it, or a file.
        split: the hub split (HumanEval has only ``test``); ignored for a file.
        start, stop: a Python slice of the questions.
        skip_invalid: skip malformed rows, counting them in :attr:`skipped` (and in one warning), instead
            of raising an error naming the file, line and field. A source that yields no question always
            raises :class:`~sapo.data.tasks.loading.EmptyDataError` naming the file.
        timeout, memory_mb, workers, isolation, use_chat_template: see :class:`~sapo.data.tasks.mbpp.CodeTask`.

    Question ids are ``humaneval/{n}``; ``question`` is the prompt (signature and docstring), ``solution``
    the canonical body, and ``meta`` holds ``prompt``, ``entry_point``, ``test`` and ``where``.
    """

    name = "humaneval"
    instruction = (
        "Complete the following Python function. Answer with the whole function in a code block.\n\n"
    )
    prompt_template = "{question}"

    def __init__(
        self,
        source: str = "openai/openai_humaneval",
        split: str = "test",
        start: int | None = None,
        stop: int | None = None,
        skip_invalid: bool = False,
        timeout: float = 10.0,
        memory_mb: int = 512,
        workers: int | None = None,
        isolation: str = "auto",
        use_chat_template: bool = True,
    ) -> None:
        super().__init__(
            timeout=timeout,
            memory_mb=memory_mb,
            workers=workers,
            isolation=isolation,
            use_chat_template=use_chat_template,
        )
        self.source = os.fspath(source)
        self.split = split
        self.start = start
        self.stop = stop
        #: rows left out by ``skip_invalid`` in the last :meth:`load`, with the reasons
        self.skipped = InvalidRows(skip=skip_invalid)
        self._questions: list[Question] | None = None

    def load(self) -> list[Question]:
        """The questions, sliced ``[start:stop]`` (read once, then cached)."""
        if self._questions is None:
            self._questions = load_questions(
                self.source,
                self.split,
                self.question_from_row,
                self.skipped,
                start=self.start,
                stop=self.stop,
            )
        return list(self._questions)

    def question_from_row(self, row: Row) -> Question:
        task_id = require_field(row, "task_id", str)
        prompt = require_field(row, "prompt", str)
        entry_point = require_field(row, "entry_point", str).strip()
        test = require_field(row, "test", str)
        solution = row.data.get("canonical_solution")
        return Question(
            id=f"{self.name}/{task_id.rsplit('/', 1)[-1]}",
            question=prompt,
            solution=self.completion_text(code_lines(solution)) if isinstance(solution, str) else None,
            tests=[f"check({entry_point})"],
            meta={"prompt": prompt, "entry_point": entry_point, "test": test, "where": row.where},
        )

    def user_message(self, question: Question) -> str:
        return f"{self.instruction}```python\n{question.question}```"

    def job(self, code: str, question: Question) -> tuple[str, list[str], str | None]:
        """``(prompt + completion, tests, setup)``: the asserts of ``check`` one by one, with ``candidate``
        replaced by the entry point and no setup, when ``check`` holds nothing else (158 of the 164 rows),
        so the sandbox's parent decides them (:mod:`sapo.sandbox.verdict`); otherwise
        ``["check(entry_point)"]`` after the row's test code, decided inside the sandbox."""
        entry_point = question.meta["entry_point"]
        program = humaneval_program(question.meta["prompt"], code, entry_point)
        inlined = inline_check(question.meta["test"], entry_point)
        if inlined is not None:
            return program, inlined, None
        return program, list(question.tests or []), question.meta["test"]


def inline_check(test: str, entry_point: str) -> list[str] | None:
    """The asserts of a HumanEval ``check(candidate)`` as separate tests of ``entry_point``, or ``None`` when
    the test code holds more than ``METADATA`` and a ``check`` of asserts (imports, loops, assignments)."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return None
    checks = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "check"]
    rest = [node for node in tree.body if node not in checks and not _is_metadata(node)]
    if len(checks) != 1 or rest or [a.arg for a in checks[0].args.args] != ["candidate"]:
        return None
    body = [s for s in checks[0].body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if not body or not all(isinstance(s, ast.Assert) for s in body):
        return None
    inlined = []
    for statement in body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and node.id == "candidate":
                node.id = entry_point
        inlined.append(ast.unparse(statement))
    return inlined


def _is_metadata(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id == "METADATA"
    )
