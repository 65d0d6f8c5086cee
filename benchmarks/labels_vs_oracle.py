"""The step labels of a finished loop run against its task's step oracle, phase by phase.

Runs made since the labelling phases record this themselves (``labels_vs_oracle`` in the manifest, a
column of the report); this reads any run's ``labels_<t>.jsonl`` and rebuilds the training task from the
run's manifest, so older runs can be read the same way. Per phase: the sampled trajectories (the gold
solutions left out) and the expansions apart, with the first-error accuracy and how many labels put the
first error earlier (a right step labelled wrong) or later (a wrong step labelled right) than the oracle.

    python benchmarks/labels_vs_oracle.py --run runs/demo [--data-source ../shared/data/gsm8k/train.jsonl]
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from sapo.data.trajectory import read_jsonl
from sapo.eval import label_agreement


def build_task(spec: dict):
    """The task a manifest's ``class_path`` / ``init_args`` describe."""
    module, name = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a loop run directory")
    parser.add_argument(
        "--data-source", help="the training task's source, where the run's names a hub dataset out of reach"
    )
    args = parser.parse_args()
    run = Path(args.run)
    manifest = json.loads((run / "manifest.json").read_text())
    spec = manifest["settings"]["data"]["init_args"]["task"]
    if args.data_source:
        spec = {**spec, "init_args": {**spec.get("init_args", {}), "source": args.data_source}}
    task = build_task(spec)
    questions = task.load()
    by_id = {q.id: q for q in questions}
    # D_org: the first ``gold_solutions`` questions keep their gold solution (null: every question)
    kept = manifest["settings"]["data"]["init_args"].get("gold_solutions")
    gold = {q.id: tuple(task.gold_trajectory(q).steps) for q in questions[:kept] if q.solution}
    print(
        f"{run}: {task.name} ({'approximate' if getattr(task, 'approximate_oracle', False) else 'exact'} oracle)"
    )
    print("| phase | part | trajectories | first-error acc. | earlier | later | step acc. |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(run.glob("labels_*.jsonl"), key=lambda p: int(p.stem.split("_")[1])):
        labelled = read_jsonl(path)
        parts = {
            "sampled": [
                t
                for t in labelled
                if not t.label_source.endswith("/expansion") and gold.get(t.question_id) != tuple(t.steps)
            ],
            "expanded": [t for t in labelled if t.label_source.endswith("/expansion")],
        }
        for part, trajectories in parts.items():
            agreement = label_agreement(task, trajectories, by_id)
            if agreement is not None:
                print(
                    f"| {path.stem} | {part} | {agreement.trajectories} | {agreement.first_error_accuracy:.3f} "
                    f"| {agreement.earlier} | {agreement.later} | {agreement.step_accuracy:.3f} |"
                )


if __name__ == "__main__":
    main()
