"""A GSM8K verifier's ProcessBench-style scores on GSM8K test solutions labelled by the approximate oracle.

Reads a finished run of ``configs/verifier_gsm8k.yaml`` (or any loop run on GSM8K): its verifier
``verifier_<t>`` and the greedy answers ``heldout_<t>.jsonl`` of the same iteration. Three sets of the same
held-out test questions, every step labelled by the task's approximate step oracle (``task.oracle_labels``):

* ``answers``: the reasoner's greedy answers (mostly wrong for a 135M model: the rows with an error);
* ``references``: the questions' reference solutions in the SFT format, those the oracle calls all-correct
  (the rows without an error; the others are counted and left out);
* ``answers + references``: both, the ProcessBench-shaped set (rows with and without an error).

τ is chosen by best F1 on the ``answers + references`` rows of the first half of the questions and applied
unchanged to the second half (ProcessBench's protocol: τ from a validation split); the run's own τ (the
recipe's ``verifier.threshold``) is reported on all the questions too. The verifier reads each solution
with the prompt the reasoner was sampled with (the task's), as in the loop.

Writes ``--out``: ``gsm8k_verifier.json`` (settings, τ, per set the scores with every row's label and
prediction), ``gsm8k_verifier.md`` (the tables) and ``processbench_rows.jsonl`` (the oracle-labelled rows,
ProcessBench's format, with ``generator`` "reasoner" or "reference").

    python benchmarks/gsm8k_verifier.py --run runs/verifier_gsm8k \\
        --test ../shared/data/gsm8k/test.jsonl --out docs/benchmarks/gsm8k_verifier
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from sapo.data.tasks.gsm8k import GSM8KTask
from sapo.data.trajectory import NO_ERROR, read_jsonl, to_processbench
from sapo.eval.processbench import FirstErrorScores, first_error_scores, score_trajectories
from sapo.evolution.data import TaskPrompts
from sapo.models.backbone import load_tokenizer
from sapo.models.verifier import PRMVerifier
from sapo.models.verifier_metrics import choose_threshold

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SETS = ("answers", "references", "answers + references")


def oracle_labelled(task: GSM8KTask, trajectories: list, by_id: dict) -> list:
    """Copies labelled by the task's oracle (the rows' first errors)."""
    return [
        dataclasses.replace(t, labels=task.oracle_labels(t, by_id[t.question_id]), label_source="oracle")
        for t in trajectories
    ]


def scores_row(name: str, scores: Any) -> str:
    auroc = "–" if scores.step_auroc is None else f"{scores.step_auroc:.3f}"
    return (
        f"| {name} | {scores.num_error} / {scores.num_correct} | {scores.f1:.3f} | {scores.error_accuracy:.3f} "
        f"| {scores.correct_accuracy:.3f} | {auroc} | {scores.detection_accuracy:.3f} "
        f"| {scores.random_step_accuracy:.3f} |"
    )


HEADER = (
    "| set | rows with an error / without | F1 | error acc. | correct acc. | step AUROC | detection "
    "| random step |\n|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="runs/verifier_gsm8k", help="the loop run directory")
    parser.add_argument("--iteration", type=int, default=0, help="t of verifier_<t> and heldout_<t>.jsonl")
    parser.add_argument(
        "--test",
        default=str(SHARED_DATA / "gsm8k" / "test.jsonl"),
        help="the GSM8K test file the run's held-out questions came from (default: %(default)s)",
    )
    parser.add_argument("--dtype", default="bfloat16", help="the verifier's dtype for scoring")
    parser.add_argument("--out", default="docs/benchmarks/gsm8k_verifier")
    args = parser.parse_args()

    started = time.perf_counter()
    run = Path(args.run)
    manifest = json.loads((run / "manifest.json").read_text())
    settings = manifest["settings"]["model"]["init_args"]
    threshold = float(settings["verifier"]["threshold"])
    heldout = read_jsonl(run / f"heldout_{args.iteration}.jsonl")
    task = GSM8KTask(source=args.test, split="test")
    by_id = {q.id: q for q in task.load()}
    missing = [t.question_id for t in heldout if t.question_id not in by_id]
    if missing:
        raise SystemExit(f"--test {args.test}: held-out question {missing[0]!r} is not in it")
    order = list(dict.fromkeys(t.question_id for t in heldout))
    questions = [by_id[i] for i in order]
    answers = [t for t in heldout if t.steps]  # an answer without steps has nothing to score

    answers = oracle_labelled(task, answers, by_id)
    labelled = oracle_labelled(task, [task.gold_trajectory(q) for q in questions], by_id)
    # a reference the oracle misjudges would be a wrong "no error" row: left out, counted
    references = [r for r in labelled if r.first_error == NO_ERROR]
    rejected = len(labelled) - len(references)

    reasoner = settings["reasoner"]
    tokenizer = load_tokenizer(reasoner["name_or_path"], cache_dir=reasoner.get("cache_dir"))
    prompts = TaskPrompts(tokenizer, [(task, questions)])
    verifier = PRMVerifier.from_pretrained(
        run / f"verifier_{args.iteration}", backbone_options={"dtype": args.dtype}, prompt=prompts
    )
    verifier.eval()

    half = set(order[: len(order) // 2])
    sets = {"answers": answers, "references": references, "answers + references": answers + references}
    dev = [t for t in sets["answers + references"] if t.question_id in half]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
        scored = answers + references  # every row scored once; each set and τ reads these scores
        scores = dict(zip(map(id, scored), score_trajectories(verifier, scored, "rows"), strict=True))

    def evaluate(name: str, rows: list, tau: float) -> FirstErrorScores:
        return first_error_scores(name, rows, [scores[id(t)] for t in rows], tau)

    chosen_tau, _ = choose_threshold([scores[id(t)] for t in dev], [t.first_error for t in dev])
    results: dict[str, dict[str, FirstErrorScores]] = {
        "chosen": {
            n: evaluate(n, [t for t in r if t.question_id not in half], chosen_tau) for n, r in sets.items()
        },
        "run_threshold": {n: evaluate(n, r, threshold) for n, r in sets.items()},
    }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "processbench_rows.jsonl").open("w") as f:
        for generator, rows in (("reasoner", answers), ("reference", references)):
            for t in rows:
                row = {**to_processbench(t), "id": f"{t.question_id}/{generator}", "generator": generator}
                f.write(json.dumps(row) + "\n")

    summary = {
        "date": date.today().isoformat(),
        "command": "python benchmarks/gsm8k_verifier.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "machine": {"processor": platform.processor() or platform.machine(), "torch": torch.__version__},
        "run": str(run),
        "verifier": str(run / f"verifier_{args.iteration}"),
        "questions": len(questions),
        "answers": len(answers),
        "answers_without_steps": len(heldout) - len(answers),
        "references": len(references),
        "references_rejected_by_oracle": rejected,
        "threshold_chosen": {
            "tau": float(chosen_tau),
            "chosen_on": f"answers + references of the first {len(half)} questions",
            "chosen_on_questions": order[: len(half)],
            "evaluated_on": f"the other {len(order) - len(half)} questions",
            "sets": {name: scores.to_dict() for name, scores in results["chosen"].items()},
        },
        "threshold_of_the_run": {
            "tau": threshold,
            "evaluated_on": f"all {len(order)} questions",
            "sets": {name: scores.to_dict() for name, scores in results["run_threshold"].items()},
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "gsm8k_verifier.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [
        f"# GSM8K verifier: {summary['verifier']} on GSM8K test solutions (approximate oracle)",
        "",
        f"{len(questions)} held-out test questions; {len(answers)} greedy answers of the reasoner; "
        f"{len(references)} reference solutions the oracle calls all-correct ({rejected} it does not, left "
        f"out). {summary['date']}, {summary['machine']['processor']}, torch {summary['machine']['torch']}.",
        "",
        f"τ = {chosen_tau:.3f}, chosen by best F1 on {summary['threshold_chosen']['chosen_on']}; scores "
        f"on {summary['threshold_chosen']['evaluated_on']}:",
        "",
        HEADER,
        *(scores_row(name, scores) for name, scores in results["chosen"].items()),
        "",
        f"τ = {threshold} (the run's), all {len(order)} questions:",
        "",
        HEADER,
        *(scores_row(name, scores) for name, scores in results["run_threshold"].items()),
        "",
        f"Command: `{summary['command']}` ({summary['seconds']} s).",
    ]
    (out / "gsm8k_verifier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
