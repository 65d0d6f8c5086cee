"""ORPO on oracle-ranked pairs with each rejected side seen from its first wrong step, beside the arms of
2026-12-05 (RFT, ORPO on whole rejected sides, NLL on the oracle's clean answers).

The new arm's run is ``runs/fe/oracle_first_error``; the earlier arms are their committed per-question files
(``docs/benchmarks/oracle_round_2026-12-05``), answered on the same 1,000 held-out questions. The two SFT
starts were trained separately with one recipe and seed, so the script first counts the questions on which
they differ: only where that count is 0 are the pairings across the two days exact.

    .venv/bin/python docs/benchmarks/first_error_preference_2026-12-06/compare.py \
        docs/benchmarks/first_error_preference_2026-12-06
"""

import json
import sys
from pathlib import Path

from sapo.eval.reasoner import paired_difference
from sapo.evolution.compare import Arm, compare_arms, heldout_outcomes, write_comparison

run = Path("runs/fe/oracle_first_error")
before = Path("docs/benchmarks/oracle_round_2026-12-05")
out = Path(sys.argv[1])


def committed(name: str) -> dict[str, bool]:
    rows = [json.loads(line) for line in (before / f"heldout_{name}.jsonl").read_text().splitlines() if line]
    return {r["question_id"]: bool(r.get("outcome")) for r in rows}


sft = Arm("SFT", run, 0)
rounds = [t for t in (1, 2) if (run / f"heldout_{t}.jsonl").is_file()]
rows = [sft] + [Arm(f"ORPO from the first error {t}", run, t) for t in rounds]
table = write_comparison(
    compare_arms(rows, reference=sft),
    out,
    reference="SFT",
    method=None,
    title="ORPO on oracle-ranked pairs, rejected sides from their first wrong step, on 1,000 held-out questions",
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
        (f"rft_{t}", "RFT"),
        (f"orpo_on_oracle-ranked_pairs_{t}", "ORPO on oracle-ranked pairs (whole rejected sides)"),
        (f"nll_on_oracle-clean_right_answers_{t}", "NLL on oracle-clean right answers"),
    ):
        theirs = committed(name)
        ids = sorted(theirs)
        diff, half = paired_difference([theirs[i] for i in ids], [ours[i] for i in ids])
        lines.append(f"| {t} | {label} | {100 * diff:+.1f} ± {100 * half:.1f} |")
text = "\n".join(lines) + "\n"
(out / "table.md").write_text(text)
print(text)
