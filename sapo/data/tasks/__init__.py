"""Tasks: questions, prompts, answer checking and step oracles."""

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.tasks.base import Question, Task
from sapo.data.tasks.gsm8k import GSM8KTask
from sapo.data.tasks.humaneval import HumanEvalTask
from sapo.data.tasks.loading import EmptyDataError, InvalidRowError, Row, load_rows
from sapo.data.tasks.math import MathTask
from sapo.data.tasks.mbpp import CodeTask, MBPPTask

__all__ = [
    "ArithmeticTask",
    "CodeTask",
    "EmptyDataError",
    "GSM8KTask",
    "HumanEvalTask",
    "InvalidRowError",
    "MBPPTask",
    "MathTask",
    "Question",
    "Row",
    "Task",
    "load_rows",
]
