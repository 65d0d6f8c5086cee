"""How well the approximate GSM8K step oracle accepts GSM8K's own reference solutions.

For every row of a GSM8K file, the reference solution is converted to the SFT format (one step per line,
"The answer is N" last), its answer is extracted, and the approximate step oracle judges its steps. A
reference that the oracle does not call all-correct is a failure; failures are grouped by the rule the
first wrong step breaks, with examples.

    python benchmarks/gsm8k_oracle.py                          # the training file
    python benchmarks/gsm8k_oracle.py --data ../shared/data/gsm8k/test.jsonl --examples 5
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from pathlib import Path

from sapo.data.tasks.gsm8k import GSM8KTask

#: the shared data beside the checkout (developers and CI have it)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

DEFAULT_DATA = str(SHARED_DATA / "gsm8k" / "train.jsonl")

#: failure kinds, by the first words of the oracle's reason
KINDS = {
    "false equation": "false equation (the reference's arithmetic is wrong, or a unit/notation the parser misreads)",
    "uses": "operand neither given nor computed (a count read from the question's words)",
    "computes": "result off the gold computation",
    "states": "stated number neither given nor computed",
    "final answer": "wrong final answer",
    "divides by zero": "division by zero",
    "no final answer": "no final answer",
}


def failure_kind(reason: str) -> str:
    return next((label for prefix, label in KINDS.items() if reason.startswith(prefix)), reason)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help="a GSM8K file or folder (default: %(default)s)")
    parser.add_argument("--examples", type=int, default=3, help="examples shown per failure kind")
    args = parser.parse_args()

    started = time.perf_counter()
    task = GSM8KTask(source=args.data)
    questions = task.load()
    loaded = time.perf_counter()
    extracted = 0
    all_correct = 0
    kinds: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    for question in questions:
        trajectory = task.gold_trajectory(question)
        if task.is_correct(task.extract_answer(question.solution or ""), question):
            extracted += 1
        result = task.judge(trajectory, question)
        if result.all_correct:
            all_correct += 1
            continue
        step = result.first_error
        kind = failure_kind(result.verdicts[step].reasons[0])
        kinds[kind] += 1
        if len(examples[kind]) < args.examples:
            examples[kind].append(
                f"{question.id} step {step}: {trajectory.steps[step]!r}\n      -> {result.verdicts[step].reasons[0]}"
            )
    finished = time.perf_counter()

    n = len(questions)
    print(f"data: {args.data} ({n} references)")
    print(
        f"answer extraction: {extracted}/{n} = {extracted / n:.2%} of reference solutions give their own answer"
    )
    print(f"approximate oracle: {all_correct}/{n} = {all_correct / n:.2%} of reference solutions all-correct")
    print(f"time: load {loaded - started:.1f} s, extract and judge {finished - loaded:.1f} s")
    print(f"failures by the first wrong step's rule ({n - all_correct}):")
    for kind, count in kinds.most_common():
        print(f"  {count:4d}  {kind}")
        for example in examples[kind]:
            print(f"      {example}")


if __name__ == "__main__":
    main()
