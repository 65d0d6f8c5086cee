"""The step labels of a finished loop run against its task's step oracle, phase by phase.

Runs made since the labelling phases record this themselves (``labels_vs_oracle`` in the manifest, a
column of the report); this reads any run's ``labels_<t>.jsonl`` and rebuilds the training task from the
run's manifest, so older runs can be read the same way. Per phase: the sampled trajectories (the gold
solutions left out) and the expansions apart, with the first-error accuracy and how many labels put the
first error earlier (a right step labelled wrong) or later (a wrong step labelled right) than the oracle.
Then, per ``samples_<t>.jsonl``, how often the outcome and the steps disagree: right answers with a wrong
step, wrong answers whose every step is right. Where both are rare, the outcome already says which steps
are right, and step labels can add little to what right-over-wrong pairs learn.

With ``--verifier-rewards``, each verifier V_t of the run also scores the right samples of D_t (the gold
left out), and the table says whether its reward (the mean step score that ranks the pairs) puts the right
answers whose every step is right above those reached through a wrong step: the filter a process reward
adds to outcome checks.

    python benchmarks/labels_vs_oracle.py --run runs/demo [--data-source ../shared/data/gsm8k/train.jsonl] \
        [--verifier-rewards]
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import torch

from sapo.data.reward import trajectory_reward
from sapo.data.trajectory import Trajectory, read_jsonl
from sapo.eval.processbench import score_trajectories
from sapo.evolution.data import LabelledData, TaskPrompts
from sapo.models.backbone import load_tokenizer
from sapo.models.verifier import PRMVerifier
from sapo.models.verifier_metrics import step_auroc


def build_task(spec: dict):
    """The task a manifest's ``class_path`` / ``init_args`` describe."""
    module, name = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def run_task(manifest: dict, source: str | None = None) -> tuple:
    """A run's training task (with another ``source`` if given), its questions, and the gold trajectories
    of D_org: the first ``gold_solutions`` questions keep their gold solution (null: every question)."""
    data = manifest["settings"]["data"]["init_args"]
    spec = data["task"]
    if source:
        spec = {**spec, "init_args": {**spec.get("init_args", {}), "source": source}}
    task = build_task(spec)
    questions = task.load()
    gold = [task.gold_trajectory(q) for q in questions[: data.get("gold_solutions")] if q.solution]
    return task, questions, gold


def split_labels(trajectories: list[Trajectory]) -> LabelledData:
    """A ``labels_<t>.jsonl`` file's trajectories as the phase made them: its inputs, then its expansions."""
    expansion = [(t.label_source or "").endswith("/expansion") for t in trajectories]
    return LabelledData(
        labelled=[t for t, e in zip(trajectories, expansion, strict=True) if not e],
        expanded=[t for t, e in zip(trajectories, expansion, strict=True) if e],
    )


def outcome_against_steps(task, trajectories: list[Trajectory], questions: dict) -> dict[str, int]:
    """Sampled trajectories (the gold left out) by outcome and by the oracle's steps."""
    sampled = [t for t in trajectories if t.label_source != "gold" and t.outcome is not None]

    def flawed(t: Trajectory) -> bool:
        return any(label < 0.5 for label in task.oracle_labels(t, questions[t.question_id]))

    right = [t for t in sampled if t.outcome]
    wrong = [t for t in sampled if not t.outcome]
    return {
        "samples": len(sampled),
        "right": len(right),
        "right_with_a_wrong_step": sum(flawed(t) for t in right),
        "wrong": len(wrong),
        "wrong_with_every_step_right": sum(not flawed(t) for t in wrong),
    }


def right_answer_separation(task, trajectories: list[Trajectory], scores, questions: dict) -> dict:
    """How a verifier's rewards order the right answers: those whose every step is right (clean) against
    those with a wrong step (flawed), by the task's oracle; the AUROC is P(r_clean > r_flawed)."""
    flawed = [any(v < 0.5 for v in task.oracle_labels(t, questions[t.question_id])) for t in trajectories]
    rewards = [trajectory_reward(s) for s in scores]
    clean_rewards = [r for r, f in zip(rewards, flawed, strict=True) if not f]
    flawed_rewards = [r for r, f in zip(rewards, flawed, strict=True) if f]
    return {
        "right": len(rewards),
        "flawed": len(flawed_rewards),
        "mean_clean": sum(clean_rewards) / max(1, len(clean_rewards)),
        "mean_flawed": sum(flawed_rewards) / max(1, len(flawed_rewards)),
        "auroc": step_auroc([[r] for r in rewards], [[0.0 if f else 1.0] for f in flawed]),
    }


def verifier_rewards(run: Path, task, questions: list) -> None:
    """Print :func:`right_answer_separation` for every ``verifier_<t>`` of the run on D_t's right samples."""
    by_id = {q.id: q for q in questions}
    prompts = TaskPrompts(load_tokenizer(str(run / "sft" / "reasoner")), [(task, questions)])
    print(
        "\n| verifier | right samples of D_t | with a wrong step | mean reward, clean | flawed | AUROC clean > flawed |"
    )
    print("|---|---|---|---|---|---|")
    folders = sorted(run.glob("verifier_*"), key=lambda p: int(p.name.split("_")[1]))
    for folder in folders:
        t = int(folder.name.split("_")[1])
        right = [
            s
            for u in range(t + 1)
            if (run / f"samples_{u}.jsonl").is_file()
            for s in read_jsonl(run / f"samples_{u}.jsonl")
            if s.outcome is True and s.label_source != "gold" and s.num_steps > 0
        ]
        verifier = PRMVerifier.from_pretrained(folder, backbone_options={"dtype": "bfloat16"}, prompt=prompts)
        verifier.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            scores = score_trajectories(verifier, right, str(folder))
        c = right_answer_separation(task, right, scores, by_id)
        auroc = "n/a" if c["auroc"] is None else f"{c['auroc']:.3f}"
        print(
            f"| V_{t} | {c['right']} | {c['flawed']} | {c['mean_clean']:.3f} | {c['mean_flawed']:.3f} | {auroc} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a loop run directory")
    parser.add_argument(
        "--data-source", help="the training task's source, where the run's names a hub dataset out of reach"
    )
    parser.add_argument(
        "--verifier-rewards",
        action="store_true",
        help="also score each round's right samples with its verifier (loads every verifier_<t>)",
    )
    args = parser.parse_args()
    run = Path(args.run)
    manifest = json.loads((run / "manifest.json").read_text())
    task, questions, gold = run_task(manifest, args.data_source)
    print(
        f"{run}: {task.name} ({'approximate' if getattr(task, 'approximate_oracle', False) else 'exact'} oracle)"
    )
    print("| phase | part | trajectories | first-error acc. | earlier | later | step acc. |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(run.glob("labels_*.jsonl"), key=lambda p: int(p.stem.split("_")[1])):
        agreement = split_labels(read_jsonl(path)).against_oracle(task, questions, gold)
        for part, a in agreement.items():
            print(
                f"| {path.stem} | {part} | {a['trajectories']} | {a['first_error_accuracy']:.3f} "
                f"| {a['earlier']} | {a['later']} | {a['step_accuracy']:.3f} |"
            )
    by_id = {q.id: q for q in questions}
    print("\n| samples | sampled | right | right with a wrong step | wrong | wrong with every step right |")
    print("|---|---|---|---|---|---|")
    for path in sorted(run.glob("samples_*.jsonl"), key=lambda p: int(p.stem.split("_")[1])):
        c = outcome_against_steps(task, read_jsonl(path), by_id)
        print(
            f"| {path.stem} | {c['samples']} | {c['right']} | {c['right_with_a_wrong_step']} | {c['wrong']} "
            f"| {c['wrong_with_every_step_right']} |"
        )
    if args.verifier_rewards:
        verifier_rewards(run, task, questions)


if __name__ == "__main__":
    main()
