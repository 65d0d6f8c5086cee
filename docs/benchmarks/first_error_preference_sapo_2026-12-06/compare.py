"""SAPO with each rejected side seen from its first wrong step by the learned verifier, beside RFT begun from
the same run after ``samples_1`` (two rounds each, 1,000 held-out questions).

The arm's run is ``runs/fe/sapo_first_error``, RFT's ``runs/fe/rft``. The SFT start is also set beside the one
of 2026-12-05 (``docs/benchmarks/two_rounds_2026-12-05``, trained with the same recipe and seed): the script
counts the questions on which the two answer differently, since only where that count is 0 could this arm be
paired with that day's arms.

    .venv/bin/python docs/benchmarks/first_error_preference_sapo_2026-12-06/compare.py \
        docs/benchmarks/first_error_preference_sapo_2026-12-06
"""

import json
import sys
from pathlib import Path

from sapo.data.preference import PreferencePair
from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.trajectory import Trajectory
from sapo.evolution.compare import Arm, compare_arms, heldout_outcomes, write_comparison
from sapo.supervision.oracle_scorer import OracleScorer

run, rft = Path("runs/fe/sapo_first_error"), Path("runs/fe/rft")
before = Path("docs/benchmarks/two_rounds_2026-12-05")
out = Path(sys.argv[1])

sft = Arm("SFT", run, 0)
rounds = [t for t in (1, 2) if (run / f"heldout_{t}.jsonl").is_file()]
method = {t: Arm(f"SAPO from the first error {t}", run, t) for t in rounds}
rows = [sft]
for t in rounds:
    rows.append(method[t])
    if (rft / f"heldout_{t}.jsonl").is_file():
        rows.append(Arm(f"RFT {t}", rft, t))
table = write_comparison(
    compare_arms(rows, reference=sft, method=method),
    out,
    reference="SFT",
    method="SAPO from the first error (same round)",
    title="SAPO, rejected sides from the learned verifier's first wrong step, beside RFT, on 1,000 held-out questions",
)
lines = [table.read_text(), "## The SFT start against the one of 2026-12-05", ""]
ours_sft = heldout_outcomes(run, 0)
rows_then = [json.loads(line) for line in (before / "heldout_sft.jsonl").read_text().splitlines() if line]
their_sft = {r["question_id"]: bool(r.get("outcome")) for r in rows_then}
differ = sum(ours_sft[q] != their_sft[q] for q in their_sft)
lines.append(
    f"{differ} of {len(their_sft)} questions answered differently "
    f"({100 * sum(ours_sft.values()) / len(ours_sft):.1f}% here, "
    f"{100 * sum(their_sft.values()) / len(their_sft):.1f}% then)."
)
manifest = json.loads((run / "manifest.json").read_text())["phases"]
lines += ["", "## What each round's pairs held", ""]
lines += ["| round | pairs | with a rejected side | cut after right steps |", "|---|---|---|---|"]
for t in rounds:
    pairs = manifest.get(f"pairs_{t}", {})
    rejected = pairs.get("rejected_after_right_steps", {})
    lines.append(
        f"| {t} | {pairs.get('pairs', '')} | {json.dumps(pairs.get('with_rejected', ''))} | {json.dumps(rejected)} |"
    )
# where the learned verifier put each rejected side's first error, against the task's exact step oracle
task = ArithmeticTask(split="train", num_questions=2000, min_steps=2, max_steps=4)  # the recipe's task
oracle = OracleScorer(task)
lines += ["", "## The learned verifier's first errors against the exact oracle (rejected sides)", ""]
lines += [
    "| round | rejected sides with a first error | same step | too early | too late | no wrong step by the oracle | rejected sides with none (compared whole) |"
]
lines.append("|---|---|---|---|---|---|---|")
for t in rounds:
    counts = {"same": 0, "early": 0, "late": 0, "none": 0}
    pairs = [
        PreferencePair.from_dict(json.loads(x)) for x in (run / f"pairs_{t}.jsonl").read_text().splitlines()
    ]
    rejected = [p for p in pairs if p.rejected is not None and p.rejected_first_error is not None]
    whole = sum(p.rejected is not None and p.rejected_first_error is None for p in pairs)
    for p in rejected:
        scores = oracle.score_one(Trajectory(p.question_id, p.prompt, p.rejected))
        true = next((i for i, s in enumerate(scores) if s < 0.5), None)
        guess = p.rejected_first_error
        counts[
            "none" if true is None else "same" if guess == true else "early" if guess < true else "late"
        ] += 1
    lines.append(
        f"| {t} | {len(rejected)} | {counts['same']} | {counts['early']} | {counts['late']} | {counts['none']} "
        f"| {whole} |"
    )
text = "\n".join(lines) + "\n"
(out / "table.md").write_text(text)
print(text)
