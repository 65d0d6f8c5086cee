"""The two-round table: SFT, then per round SFT continued, RFT and SAPO, each beside SAPO's same round."""

import sys
from pathlib import Path

from sapo.evolution.compare import Arm, compare_arms, write_comparison

runs = Path("runs/r2")
out = Path(sys.argv[1])
arms = [
    a
    for a in ("sft_continued", "rft")
    if (runs / a / "heldout_2.jsonl").is_file() or (runs / a / "heldout_1.jsonl").is_file()
]
names = {"sft_continued": "SFT continued", "rft": "RFT"}
sft = Arm("SFT", runs / "sapo", 0)
method = {
    t: Arm(f"SAPO {t}", runs / "sapo", t) for t in (1, 2) if (runs / "sapo" / f"heldout_{t}.jsonl").is_file()
}
rows = [sft]
for t in method:
    rows += [Arm(f"{names[a]} {t}", runs / a, t) for a in arms if (runs / a / f"heldout_{t}.jsonl").is_file()]
    rows.append(method[t])
results = compare_arms(rows, reference=sft, method=method)
table = write_comparison(
    results, out, reference="SFT", method="SAPO (same round)", title="Two rounds on 1,000 held-out questions"
)
print(table.read_text())
