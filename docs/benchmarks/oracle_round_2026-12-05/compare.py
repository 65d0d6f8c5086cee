"""Rounds from one SFT start: RFT, ORPO on oracle-ranked pairs, and NLL on oracle-clean right answers.

Every row is set beside the SFT start and beside RFT's round of the same number (the baseline a verifier
must beat); a row whose run has not reached a round is left out.
"""

import sys
from pathlib import Path

from sapo.evolution.compare import Arm, compare_arms, write_comparison

runs = Path("runs/or")
out = Path(sys.argv[1])
sft = Arm("SFT", runs / "oracle", 0)
arms = {
    "rft": "RFT",
    "oracle": "ORPO on oracle-ranked pairs",
    "oracle_nll": "NLL on oracle-clean right answers",
}
rows = [sft] + [
    Arm(f"{name} {t}", runs / arm, t)
    for t in (1, 2)
    for arm, name in arms.items()
    if (runs / arm / f"heldout_{t}.jsonl").is_file()
]
rft = {a.iteration: a for a in rows if a.name.startswith("RFT ")}
results = compare_arms(rows, reference=sft, method=rft)
table = write_comparison(
    results,
    out,
    reference="SFT",
    method="RFT (same round)",
    title="A perfect verifier's rounds on 1,000 held-out questions",
)
print(table.read_text())
