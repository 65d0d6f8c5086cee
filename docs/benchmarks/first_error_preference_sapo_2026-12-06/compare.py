"""SAPO with each rejected side seen from its first wrong step by the learned verifier, beside the arms of
2026-12-05 on the AMD machine (SFT continued, RFT and SAPO with whole rejected sides, two rounds each).

The new arm's run is ``runs/fe/sapo_first_error``; the earlier arms are their committed per-question files
(``docs/benchmarks/two_rounds_2026-12-05``), answered on the same 1,000 held-out questions. The SFT starts
were trained separately with one recipe and seed, so the script first counts the questions on which they
differ: only where that count is 0 are the pairings across the two days exact.

    .venv/bin/python docs/benchmarks/first_error_preference_sapo_2026-12-06/compare.py \
        docs/benchmarks/first_error_preference_sapo_2026-12-06
"""

import json
import sys
from pathlib import Path

from sapo.data.preference import PreferencePair
from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.trajectory import Trajectory
from sapo.eval.reasoner import paired_difference
from sapo.evolution.compare import Arm, compare_arms, heldout_outcomes, write_comparison
from sapo.supervision.oracle_scorer import OracleScorer

run = Path("runs/fe/sapo_first_error")
before = Path("docs/benchmarks/two_rounds_2026-12-05")
out = Path(sys.argv[1])


def committed(name: str) -> dict[str, bool]:
    rows = [json.loads(line) for line in (before / f"heldout_{name}.jsonl").read_text().splitlines() if line]
    return {r["question_id"]: bool(r.get("outcome")) for r in rows}


sft = Arm("SFT", run, 0)
rounds = [t for t in (1, 2) if (run / f"heldout_{t}.jsonl").is_file()]
rows = [sft] + [Arm(f"SAPO from the first error {t}", run, t) for t in rounds]
table = write_comparison(
    compare_arms(rows, reference=sft),
    out,
    reference="SFT",
    method=None,
    title="SAPO, rejected sides from the learned verifier's first wrong step, on 1,000 held-out questions",
)
lines = [table.read_text(), "## Against the arms of 2026-12-05 (their committed per-question answers)", ""]
ours_sft, their_sft = heldout_outcomes(run, 0), committed("sft")
differ = sum(ours_sft[q] != their_sft[q] for q in their_sft)
lines.append(
    f"SFT starts: {differ} of {len(their_sft)} questions answered differently "
    f"({100 * sum(ours_sft.values()) / len(ours_sft):.1f}% here, "
    f"{100 * sum(their_sft.values()) / len(their_sft):.1f}% then)."
)
lines += ["", "| round | against | difference (points, paired 95% interval) |", "|---|---|---|"]
for t in rounds:
    ours = heldout_outcomes(run, t)
    for name, label in (
        (f"sapo_{t}", "SAPO (whole rejected sides)"),
        (f"rft_{t}", "RFT"),
        (f"sft_continued_{t}", "SFT continued"),
    ):
        theirs = committed(name)
        ids = sorted(theirs)
        diff, half = paired_difference([theirs[i] for i in ids], [ours[i] for i in ids])
        lines.append(f"| {t} | {label} | {100 * diff:+.1f} ± {100 * half:.1f} |")
manifest = json.loads((run / "manifest.json").read_text())["phases"]
lines += [
    "",
    "## What each round's pairs held",
    "",
    "| round | pairs | with a rejected side | cut after right steps |",
]
lines.append("|---|---|---|---|")
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
lines += ["| round | rejected sides | same step | too early | too late | no wrong step by the oracle |"]
lines.append("|---|---|---|---|---|---|")
for t in rounds:
    counts = {"same": 0, "early": 0, "late": 0, "none": 0}
    pairs = [
        PreferencePair.from_dict(json.loads(x)) for x in (run / f"pairs_{t}.jsonl").read_text().splitlines()
    ]
    rejected = [p for p in pairs if p.rejected is not None and p.rejected_first_error is not None]
    for p in rejected:
        scores = oracle.score_one(Trajectory(p.question_id, p.prompt, p.rejected))
        true = next((i for i, s in enumerate(scores) if s < 0.5), None)
        guess = p.rejected_first_error
        counts[
            "none" if true is None else "same" if guess == true else "early" if guess < true else "late"
        ] += 1
    lines.append(
        f"| {t} | {len(rejected)} | {counts['same']} | {counts['early']} | {counts['late']} | {counts['none']} |"
    )
text = "\n".join(lines) + "\n"
(out / "table.md").write_text(text)
print(text)
