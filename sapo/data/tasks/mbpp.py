"""MBPP (Austin et al. 2021): write a short Python function that passes three asserts.

Code tasks share :class:`CodeTask`: a completion's program is extracted (:func:`extract_code`: a fenced
block, or bare code), its steps are the program's non-empty lines (SIPF's rule for code), and its outcome
is whether the question's tests pass in the :class:`~sapo.sandbox.Sandbox`, which never lets the
model's code run outside it. :meth:`CodeTask.check` sends a whole batch to the sandbox at once.

MBPP's splits are ranges of task ids (from the dataset's README): few-shot prompts 1-10 (the hub calls
that split ``prompt``), test 11-510, validation 511-600, train 601-974. A local file holding all 974 rows is
cut by those ranges; a hub split or a hub-layout folder is checked against them too.

The prompt is the MBPP paper's: "You are an expert Python programmer, and here is your task: {text} Your
code should pass these tests:\\n\\n{tests}". The gold solution (for SFT) is the row's ``code``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from sapo.data.tasks.base import Question, Task
from sapo.data.tasks.loading import (
    EmptyDataError,
    InvalidRowError,
    InvalidRows,
    Row,
    check_loaded,
    load_rows,
    require_field,
)
from sapo.data.trajectory import Trajectory
from sapo.sandbox import Sandbox, SandboxResult

__all__ = ["CodeTask", "MBPPTask", "MBPP_SPLITS", "extract_code", "code_lines"]

#: MBPP's splits as inclusive ranges of task ids
MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}

#: a Markdown fence line, with its language tag (possibly empty)
_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*$", re.MULTILINE)
_PYTHON_TAGS = ("", "python", "python3", "py", "py3")


def extract_code(completion: str) -> str | None:
    """The program in a completion, or ``None`` when there is none.

    In order: the first fenced block tagged Python or untagged (an unclosed block runs to the end: the
    completion was cut by the token limit); the text before a closing fence that has no opening one (the
    prompt opened the block); the text between MBPP's few-shot markers ``[BEGIN]`` and ``[DONE]``; else the
    whole completion. Leading and trailing blank lines are dropped, indentation never is (a HumanEval
    completion is an indented function body).
    """
    fences = list(_FENCE_RE.finditer(completion))
    code = _fenced_block(completion, fences) if fences else _between_markers(completion)
    if code is None or not code.strip():
        return None
    lines = code.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"


def _fenced_block(completion: str, fences: list[re.Match[str]]) -> str | None:
    """The first Python block among fences taken as opener/closer pairs (see :func:`extract_code`)."""
    first = fences[0]
    before = completion[: first.start()]
    if not first.group(1) and before.strip() and _looks_like_code(before):
        return before
    for opener, closer in zip(fences[::2], [*fences[1::2], None], strict=False):
        if opener.group(1).lower() in _PYTHON_TAGS:
            return completion[opener.end() + 1 : closer.start() if closer else len(completion)]
    return None


def _between_markers(completion: str) -> str:
    """The text between ``[BEGIN]`` and ``[DONE]`` (either may be missing)."""
    if "[BEGIN]" in completion:
        completion = completion.split("[BEGIN]", 1)[1]
    return completion.split("[DONE]", 1)[0]


def _looks_like_code(text: str) -> bool:
    """Whether ``text`` compiles as Python (prose before a fence does not)."""
    try:
        compile(text, "<completion>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def code_lines(code: str) -> list[str]:
    """The steps of a program: its non-empty lines, indentation kept, trailing blanks dropped."""
    return [line.rstrip() for line in code.splitlines() if line.strip()]


class CodeTask(Task):
    """A Python programming task: completions are programs, checked by running tests in the sandbox.

    Subclasses load questions (:meth:`load`) and say what to run for an answer (:meth:`job`).

    Args:
        timeout: wall-clock seconds per program in the sandbox.
        memory_mb: the program's address-space limit.
        workers: programs run at once (default: the number of CPUs).
        isolation: the sandbox's isolation layer (``"auto"``, ``"bwrap"``, ``"landlock"``, ``"none"``).
        use_chat_template: build prompts with the tokenizer's chat template when it has one.
    """

    def __init__(
        self,
        timeout: float = 10.0,
        memory_mb: int = 512,
        workers: int | None = None,
        isolation: str = "auto",
        use_chat_template: bool = True,
    ) -> None:
        super().__init__(separator="\n", use_chat_template=use_chat_template)
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.workers = workers
        self.isolation = isolation
        self._sandbox: Sandbox | None = None

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox, made on first use (making it probes the isolation layers once per process)."""
        if self._sandbox is None:
            self._sandbox = Sandbox(
                timeout=self.timeout, memory_mb=self.memory_mb, workers=self.workers, isolation=self.isolation
            )
        return self._sandbox

    def job(self, code: str, question: Question) -> tuple[str, list[str], str | None]:
        """What the sandbox runs for ``code``: ``(program, tests, setup)``."""
        return code, list(question.tests or []), question.meta.get("setup") or None

    # --- completions ----------------------------------------------------------------------------------------
    def split_steps(self, completion: str) -> list[str]:
        """One step per non-empty line of the completion's program (of the completion, if it has none)."""
        code = extract_code(completion)
        return code_lines(code if code is not None else completion)

    def completion_text(self, steps: Sequence[str]) -> str:
        return "".join(step + "\n" for step in steps)

    def extract_answer(self, completion: str) -> str | None:
        """The program (see :func:`extract_code`)."""
        return extract_code(completion)

    def is_correct(self, answer: str | None, question: Question) -> bool:
        """Whether the program passes every test of ``question`` in the sandbox."""
        return answer is not None and self.run(answer, question).passed

    def run(self, code: str, question: Question) -> SandboxResult:
        """The sandbox's full result for ``code`` on ``question`` (reason, output, time)."""
        return self.sandbox.run(*self.job(code, question))

    def check(self, trajectories: Sequence[Trajectory], questions: dict[str, Question]) -> list[Trajectory]:
        """Fill ``final_answer`` (the program) and ``outcome`` of each trajectory, running all programs as one
        parallel batch; ``meta["check"]`` keeps the sandbox's verdict (kind, reason, and who decided it)."""
        pending: list[tuple[Trajectory, tuple[str, list[str], str | None]]] = []
        for trajectory in trajectories:
            if trajectory.question_id not in questions:
                raise KeyError(f"trajectory for unknown question id {trajectory.question_id!r}")
            question = questions[trajectory.question_id]
            code = self.extract_answer(self.completion_text(trajectory.steps))
            trajectory.final_answer = code
            trajectory.gold_answer = question.answer
            if code is None:
                trajectory.outcome = False
                trajectory.meta["check"] = {"kind": "no_code", "reason": "the completion has no program"}
            else:
                pending.append((trajectory, self.job(code, question)))
        results = self.sandbox.run_many([job for _, job in pending])
        for (trajectory, _), result in zip(pending, results, strict=True):
            trajectory.outcome = result.passed
            trajectory.meta["check"] = {
                "kind": result.kind,
                "reason": result.reason,
                "verdict": result.verdict,
            }
        return list(trajectories)

    def gold_trajectory(self, question: Question) -> Trajectory:
        """The reference program as an all-correct trajectory (its ``final_answer`` is the program)."""
        trajectory = super().gold_trajectory(question)
        trajectory.final_answer = self.completion_text(trajectory.steps)
        return trajectory


class MBPPTask(CodeTask):
    """MBPP from the hub, a hub-layout folder, or a local file (``mbpp.jsonl``: all rows, cut by task id).

    Args:
        source: a hub dataset id (``google-research-datasets/mbpp``), a folder laid out like it, or a file.
        split: ``train`` (task ids 601-974), ``validation`` (511-600), ``test`` (11-510) or ``prompt``
            (1-10, the few-shot examples).
        config_name: the hub configuration (``full``; ``sanitized`` has other fields and is not supported).
        start, stop: a Python slice of the split's questions (in task-id order).
        use_challenge_tests: also run the row's ``challenge_test_list`` (extra asserts, for 11 rows).
        skip_invalid: skip rows without tests (or otherwise malformed), counting them in :attr:`skipped`
            (and in one warning), instead of raising an :class:`~sapo.data.tasks.loading.InvalidRowError`
            naming the file, line and field. A source that yields no question of the split (empty, no row in
            the split's range, sliced to nothing, every row skipped) always raises
            :class:`~sapo.data.tasks.loading.EmptyDataError` naming the file.
        timeout, memory_mb, workers, isolation, use_chat_template: see :class:`CodeTask`.

    Question ids are ``mbpp/{task_id}``; ``tests`` are the row's asserts, ``solution`` its reference code,
    and ``meta`` holds ``setup`` (``test_setup_code``), ``task_id``, ``challenge_tests`` and ``where``.
    """

    name = "mbpp"
    instruction = "You are an expert Python programmer, and here is your task: "
    prompt_template = "You are an expert Python programmer, and here is your task: {question}\n"

    def __init__(
        self,
        source: str = "google-research-datasets/mbpp",
        split: str = "train",
        config_name: str | None = "full",
        start: int | None = None,
        stop: int | None = None,
        use_challenge_tests: bool = False,
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
        if split not in MBPP_SPLITS:
            raise ValueError(f"MBPP split must be one of {sorted(MBPP_SPLITS)}, got {split!r}")
        self.source = os.fspath(source)
        self.split = split
        self.config_name = config_name
        self.start = start
        self.stop = stop
        self.use_challenge_tests = use_challenge_tests
        #: rows left out by ``skip_invalid`` in the last :meth:`load`, with the reasons
        self.skipped = InvalidRows(skip=skip_invalid)
        self._questions: list[Question] | None = None

    def load(self) -> list[Question]:
        """The split's questions in task-id order, sliced ``[start:stop]`` (read once, then cached)."""
        if self._questions is None:
            self.skipped.clear()
            rows = load_rows(
                self.source,
                self.split,
                name=self.config_name,
                invalid=self.skipped,
                allow_empty=False,
                argument="source",
            )
            in_split = sorted(self._rows_in_split(rows), key=lambda row: row.data["task_id"])
            selected = in_split[self.start : self.stop]
            if not selected:
                raise self._nothing_selected(len(rows), len(in_split))
            questions = self.skipped.convert(selected, self.question_from_row)
            self._questions = check_loaded(
                questions, self.source, self.skipped, start=self.start, stop=self.stop
            )
        return list(self._questions)

    def _nothing_selected(self, read: int, in_split: int) -> EmptyDataError:
        """Why no row is left: none lies in the split's task-id range, or the slice leaves none."""
        label = str(Path(self.source).expanduser())
        first, last = MBPP_SPLITS[self.split]
        if in_split == 0:
            skipped = ""
            if self.skipped.reasons:
                skipped = (
                    f" ({len(self.skipped)} invalid rows were skipped; the first: "
                    f"{self.skipped.first_reasons(label)})"
                )
            rows = f"{read} row" if read == 1 else f"{read} rows"
            return EmptyDataError(
                f"{label}: no row lies in MBPP split {self.split!r} (task ids {first}-{last}); "
                f"it has {rows}{skipped}"
            )
        selection = ", ".join(
            f"{key}={value}"
            for key, value in (("start", self.start), ("stop", self.stop))
            if value is not None
        )
        return EmptyDataError(
            f"{label}: {selection} selects no question of the {in_split} in MBPP split {self.split!r}"
        )

    def _rows_in_split(self, rows: list[Row]) -> list[Row]:
        """The rows whose task id lies in the split's range (a row without a usable id is invalid)."""
        first, last = MBPP_SPLITS[self.split]
        kept = []
        for row in rows:
            try:
                task_id = require_field(row, "task_id", int)
            except InvalidRowError as error:
                self.skipped.handle(error)
                continue
            if first <= task_id <= last:
                kept.append(row)
        return kept

    def question_from_row(self, row: Row) -> Question:
        """A :class:`Question` from an MBPP row; the question text carries the tests, as in the paper."""
        task_id = require_field(row, "task_id", int)
        text = require_field(row, "text", str).strip()
        tests = _string_list(row, "test_list")
        challenge = _string_list(row, "challenge_test_list", allow_empty=True)
        setup = row.data.get("test_setup_code") or ""
        if not isinstance(setup, str):
            raise row.error(f"must be a string, got {type(setup).__name__}", "test_setup_code")
        reference = require_field(row, "code", str)
        shown = "\n".join(tests)
        return Question(
            id=f"{self.name}/{task_id}",
            question=f"{text} Your code should pass these tests:\n\n{shown}",
            solution=self.completion_text(code_lines(reference)),
            tests=tests + challenge if self.use_challenge_tests else tests,
            meta={"setup": setup, "task_id": task_id, "challenge_tests": challenge, "where": row.where},
        )


def _string_list(row: Row, field: str, allow_empty: bool = False) -> list[str]:
    """A list-of-strings field (a missing optional field is an empty list)."""
    if allow_empty and row.data.get(field) is None:
        return []
    values = require_field(row, field, list, allow_empty=allow_empty)
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise row.error(f"item {index} must be a non-empty string, got {value!r:.60}", field)
    return list(values)
