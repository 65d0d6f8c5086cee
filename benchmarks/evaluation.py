"""Reasoner evaluation on a CPU: GSM8K and HumanEval for SmolLM2-135M-Instruct, and for an SFT checkpoint.

The results table of ``docs/evaluation.md``. Rows:

- **base**: the model as released (``--model``, the packaged SmolLM2-135M-Instruct), GSM8K with few-shot
  chain-of-thought prompts (``--fewshot`` worked examples from the GSM8K train file, as earlier chat turns);
- **SFT**: a checkpoint folder (``--sft``, for instance ``runs/sft_gsm8k/reasoner`` from
  ``sapo fit --config configs/sft_gsm8k.yaml``, or a loop run's ``runs/<run>/sft/reasoner``), GSM8K with
  ``--sft-fewshot`` examples (0: it was trained on the answer format). Without ``--sft`` the row is omitted.

Columns, every one greedy with one sample per question (:func:`sapo.eval.reasoner.evaluate_reasoner`):

- **GSM8K strict / flexible**: a fixed subset of the test file, its first ``--gsm8k-questions`` questions
  (200), in file order; an answer counts when the stated answer ("The answer is N", "#### N",
  ``\\boxed{N}``; strict) or the last number of the completion (flexible) equals the gold one exactly;
- **HumanEval pass@1**: the share of the 164 problems whose greedy completion passes ``check()`` in the
  sandbox.

The data are local files (``../shared/data`` beside the checkout by default; ``--gsm8k``,
``--gsm8k-train`` and ``--humaneval`` name others). The script prints a markdown table and the command;
it writes the table (``--out``), a JSON file of every figure next to it, and per row and task the items and
summary files of the evaluation (``<out folder>/<row>/gsm8k_items.jsonl``, ``humaneval_items.jsonl``, ...).
The same evaluations run by configuration: ``sapo test --config configs/eval/gsm8k.yaml`` (see
``docs/evaluation.md``).

    python benchmarks/evaluation.py                                        # the base row
    python benchmarks/evaluation.py --sft runs/sft_gsm8k/reasoner          # base and SFT rows
    python benchmarks/evaluation.py --quick --model tiny-random            # seconds (the test's)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sapo.data.tasks.gsm8k import GSM8KTask
from sapo.data.tasks.humaneval import HumanEvalTask
from sapo.eval.reasoner import EvalResult, evaluate_reasoner
from sapo.models import PACKAGED_SMOLLM2, load_backbone

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # beside the checkout
TASKS = ("gsm8k", "humaneval")

#: sizes of ``--quick``: a run that only checks the script works (explicit flags still win)
QUICK = {
    "gsm8k_questions": 2,
    "humaneval_questions": 2,
    "fewshot": 1,
    "gsm8k_max_new_tokens": 16,
    "humaneval_max_new_tokens": 16,
    "batch_size": 4,
    "humaneval_batch_size": 2,
}


@dataclass
class Score:
    """One task's figures for one row: what was counted, out of how many, and what it cost."""

    task: str
    questions: int
    correct: int
    strict: int | None
    flexible: int | None
    prompt: str
    generated_tokens: int
    seconds: float
    items: str

    def share(self, count: int | None) -> str:
        return "–" if count is None else f"{100 * count / self.questions:.1f}% ({count}/{self.questions})"


@dataclass
class RowReport:
    """One line of the table: a model and its scores."""

    row: str
    model: str
    scores: dict[str, Score]

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "model": self.model,
            "scores": {k: asdict(v) for k, v in self.scores.items()},
        }


def gsm8k_task(args: argparse.Namespace, fewshot: int) -> GSM8KTask:
    """The fixed subset: the first ``--gsm8k-questions`` rows of the test file (examples: the train file)."""
    return GSM8KTask(
        source=args.gsm8k,
        split="test",
        start=0,
        stop=args.gsm8k_questions,
        num_fewshot=fewshot,
        fewshot_source=args.gsm8k_train,
    )


def humaneval_task(args: argparse.Namespace) -> HumanEvalTask:
    return HumanEvalTask(source=args.humaneval, stop=args.humaneval_questions)


def count(result: EvalResult, flags: str) -> int:
    """How many questions' (single, greedy) sample has a true ``flags`` entry."""
    return sum(bool(item[flags][0]) for item in result.items)


def evaluate_row(row: str, model_name: str, fewshot: int, args: argparse.Namespace) -> RowReport:
    """Load ``model_name`` once and evaluate it on every task of ``--tasks``."""
    model, tokenizer = load_backbone(model_name, dtype=args.dtype, cache_dir=args.cache_dir)
    folder = Path(args.out).parent / row
    scores: dict[str, Score] = {}
    for name in args.tasks:
        if name == "gsm8k":
            task, max_new_tokens, batch_size = (
                gsm8k_task(args, fewshot),
                args.gsm8k_max_new_tokens,
                args.batch_size,
            )
            prompt = f"{fewshot}-shot CoT" if fewshot else "0-shot"
        else:
            task, max_new_tokens = humaneval_task(args), args.humaneval_max_new_tokens
            batch_size, prompt = args.humaneval_batch_size, "0-shot"
        started = time.perf_counter()
        result = evaluate_reasoner(
            model,
            tokenizer,
            task,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=args.seed,
            out_dir=folder,
            progress=not args.no_progress,
        )
        seconds = time.perf_counter() - started
        math_task = result.strict_accuracy is not None
        scores[name] = Score(
            task=name,
            questions=result.num_questions,
            correct=count(result, "correct"),
            strict=count(result, "strict_correct") if math_task else None,
            flexible=count(result, "flexible_correct") if math_task else None,
            prompt=prompt,
            generated_tokens=result.generated_tokens,
            seconds=seconds,
            items=str(result.items_path),
        )
        print(f"[{row}] {name}: {scores[name].share(scores[name].correct)} correct in {seconds:.0f} s")
    del model
    return RowReport(row=row, model=model_name, scores=scores)


HEADER = ["model", "GSM8K prompt", "GSM8K strict", "GSM8K flexible", "HumanEval pass@1", "minutes"]


def table_cells(report: RowReport) -> list[str]:
    gsm8k, humaneval = report.scores.get("gsm8k"), report.scores.get("humaneval")
    minutes = sum(s.seconds for s in report.scores.values()) / 60
    return [
        f"{report.row}: `{report.model}`",
        gsm8k.prompt if gsm8k else "–",
        gsm8k.share(gsm8k.strict) if gsm8k else "–",
        gsm8k.share(gsm8k.flexible) if gsm8k else "–",
        humaneval.share(humaneval.correct) if humaneval else "–",
        f"{minutes:.1f}",
    ]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def settings_line(args: argparse.Namespace) -> str:
    problems = "all" if args.humaneval_questions is None else f"the first {args.humaneval_questions}"
    machine = platform.processor() or platform.machine()
    return (
        f"GSM8K: the first {args.gsm8k_questions} questions of {args.gsm8k} (a fixed subset of the test "
        f"file), examples from {args.gsm8k_train}, max_new_tokens {args.gsm8k_max_new_tokens}; HumanEval: "
        f"{problems} problems of {args.humaneval}, max_new_tokens {args.humaneval_max_new_tokens}; greedy, "
        f"one sample per question, dtype {args.dtype}, batch {args.batch_size} (HumanEval "
        f"{args.humaneval_batch_size}), seed {args.seed}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {machine}"
    )


def write_report(reports: Sequence[RowReport], args: argparse.Namespace, argv: Sequence[str]) -> str:
    """The markdown table with its command and settings (``--out``) and the JSON figures next to it."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/evaluation.py " + " ".join(shlex.quote(a) for a in argv)
    text = "\n\n".join(
        [
            markdown_table(HEADER, [table_cells(r) for r in reports]),
            f"`{command}`",
            settings_line(args) + ".",
            'Strict: the stated answer ("The answer is N", "#### N", \\boxed{N}); flexible: the last number '
            "of the completion. Per-item files: "
            + ", ".join(f"`{r.row}/`" for r in reports)
            + f" in {out.parent}.",
        ]
    )
    out.write_text(text + "\n", encoding="utf-8")
    figures = {"command": command, "settings": vars(args), "rows": [r.to_dict() for r in reports]}
    out.with_suffix(".json").write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--quick", action="store_true", help=f"tiny sizes that check the script works: {QUICK}")
    add("--model", default=PACKAGED_SMOLLM2, help="the base model (a known name, a folder or a hub id)")
    add("--sft", default=None, help="an SFT checkpoint folder for the second row (omitted without it)")
    add("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    add("--gsm8k", default=str(SHARED_DATA / "gsm8k" / "test.jsonl"), help="the GSM8K test file")
    add("--gsm8k-train", default=str(SHARED_DATA / "gsm8k" / "train.jsonl"), help="few-shot examples' file")
    add(
        "--humaneval",
        default=str(SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz"),
        help="the HumanEval file",
    )
    add("--gsm8k-questions", type=int, default=200, help="the fixed subset: the first N test questions")
    add("--humaneval-questions", type=int, default=None, help="the first N problems (default: all 164)")
    add("--fewshot", type=int, default=4, help="GSM8K examples in the base model's prompts")
    add("--sft-fewshot", type=int, default=0, help="GSM8K examples in the SFT model's prompts")
    add("--gsm8k-max-new-tokens", type=int, default=256)
    add("--humaneval-max-new-tokens", type=int, default=512)
    add("--batch-size", type=int, default=32, help="rows per generate call (GSM8K)")
    add("--humaneval-batch-size", type=int, default=16, help="rows per generate call (HumanEval)")
    add("--dtype", default="bfloat16", help="weights' dtype for generation")
    add(
        "--out",
        default="runs/evaluation/evaluation.md",
        help="the table; JSON and per-item files go beside it",
    )
    add("--cache-dir", default=None, help="sapo model cache (default: $SAPO_CACHE or ~/.cache/sapo)")
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments; with ``--quick`` the :data:`QUICK` sizes replace the defaults (explicit flags win)."""
    p = parser()
    if p.parse_args(argv).quick:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    files = {"gsm8k": [args.gsm8k] + ([args.gsm8k_train] if args.fewshot or args.sft_fewshot else [])}
    files["humaneval"] = [args.humaneval]
    for task in args.tasks:
        for path in files[task]:
            if not Path(path).is_file():
                p.error(f"{path}: no such file (name another, or leave {task} out with --tasks)")
    for name in ("gsm8k_questions", "humaneval_questions"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.sft is not None and not Path(args.sft).is_dir():
        p.error(f"--sft {args.sft}: not a checkpoint folder")
    return args


def main(argv: Sequence[str] | None = None) -> list[RowReport]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its thread pool fights torch's on few cores
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    reports = [evaluate_row("base", args.model, args.fewshot, args)]
    if args.sft:
        reports.append(evaluate_row("sft", args.sft, args.sft_fewshot, args))
    print("\n" + write_report(reports, args, argv))
    print(f"\nwrote {args.out} (and .json) in {(time.perf_counter() - started) / 60:.1f} min")
    return reports


if __name__ == "__main__":
    main()
