"""How much labelled data the first verifier needs before the loop can rely on it.

The loop ranks pairs and finds first errors with its verifier, so a verifier that does not separate right
steps from wrong ones makes SAPO no more than RFT. This sizes V_0's data from measurement: from one run of a
recipe that has finished its ``samples_0`` phase (``--run``, made with ``--config``), every arm is a branch of
that run after ``samples_0`` (``sapo.evolution.branch``: the same SFT start M0 and the same samples) that
labels ``N`` of the new samples with the recipe's initial strategy and trains V_0 for ``E`` epochs
(``--arms N:E,...``; an arm with the run's own settings is the run itself). Every arm's V_0 then scores the
same answers, M0's greedy answers to the held-out questions (the run's ``heldout_0.jsonl``), against the
task's exact oracle:

* step AUROC: the chance that a right step scores above a wrong one, with a 95% bootstrap interval over the
  answers, and its paired difference from the first arm on the same resamples;
* answer AUROC: the chance that an answer with the right final answer has a higher mean step score than a
  wrong one (what ranks a round's pairs), with the same intervals;
* detection: how often the largest score drop (SAPO's detector) is the oracle's first error, beside a random
  step's chance (the random-step ablation), with the paired 95% interval of the change from the first arm;
* each arm's label cost (completions, generated tokens, seconds), its labels against the oracle, and its
  verifier phase's seconds.

Writes ``table.md``, ``table.json``, ``verifier_data.png`` and one per-answer file per arm into ``--out``.
Each arm resumes after an interruption (run the command again).

Usage::

    .venv/bin/sapo fit --config RECIPE --model.init_args.iterations 0 --model.init_args.run_dir runs/vd/base \\
        --trainer.default_root_dir runs/vd/base
    .venv/bin/python benchmarks/verifier_data.py --config RECIPE --run runs/vd/base --arms 48:1,240:1 \\
        --out docs/benchmarks/verifier_data [-- FLAGS]     # after --: the base run's own extra flags
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from labels_vs_oracle import build_task

from sapo.data.reward import trajectory_reward
from sapo.data.trajectory import read_jsonl
from sapo.eval.processbench import score_trajectories
from sapo.eval.reasoner import paired_difference
from sapo.evolution.data import TaskPrompts
from sapo.models.backbone import load_tokenizer
from sapo.models.verifier import PRMVerifier
from sapo.models.verifier_metrics import step_auroc
from sapo.supervision.first_error import largest_drop

BRANCH_AFTER = "samples_0"


def parse_arms(text: str) -> list[tuple[int, int]]:
    """``"48:1,240:2"`` -> ``[(48, 1), (240, 2)]``: labelled trajectories and verifier epochs per arm."""
    arms = []
    for part in text.split(","):
        count, _, epochs = part.partition(":")
        try:
            arm = (int(count), int(epochs or 1))
        except ValueError:
            raise SystemExit(f"--arms: {part!r} is not N:E (labelled trajectories : epochs)") from None
        if min(arm) < 1:
            raise SystemExit(f"--arms: {part!r}: both numbers must be at least 1")
        arms.append(arm)
    return arms


def run_arm(config: list[Path], base: Path, run_dir: Path, count: int, epochs: int, extra: list[str]) -> None:
    """A branch of ``base`` after samples_0 that labels ``count`` samples and trains V_0 for ``epochs``
    (``extra``: further flags for ``sapo fit``, the same as the base run's)."""
    command = [str(Path(sys.executable).with_name("sapo")), "fit"]
    for path in config:
        command += ["--config", str(path)]
    command += [
        *("--model.init_args.run_dir", str(run_dir), "--trainer.default_root_dir", str(run_dir)),
        *("--model.init_args.iterations", "0"),
        *("--model.init_args.branch_from", str(base), "--model.init_args.branch_after", BRANCH_AFTER),
        *("--model.init_args.labelling.per_iteration", str(count)),
        *("--model.init_args.verifier.epochs", str(epochs)),
        *extra,
    ]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def bootstrap_auroc(
    scores: list[list[list[float]]], labels: list[list[float]], resamples: int, seed: int
) -> list[list[float]]:
    """Per arm, the step AUROC on ``resamples`` resamples of the answers (the same resamples for every arm,
    so that differences between arms are paired)."""
    rng = random.Random(seed)
    n = len(labels)
    draws = [[rng.randrange(n) for _ in range(n)] for _ in range(resamples)]
    out = []
    for arm in scores:
        values = []
        for draw in draws:
            value = step_auroc([arm[i] for i in draw], [labels[i] for i in draw])
            if value is not None:
                values.append(value)
        out.append(values)
    return out


def interval(values: list[float]) -> tuple[float, float]:
    """The 2.5% and 97.5% quantiles."""
    ordered = sorted(values)
    return ordered[int(0.025 * (len(ordered) - 1))], ordered[int(0.975 * (len(ordered) - 1))]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, action="append", required=True, help="the run's recipe")
    parser.add_argument("--run", type=Path, required=True, help="a run finished through eval_0")
    parser.add_argument("--arms", default="48:1,240:1", help="N:E,... labelled trajectories : epochs")
    parser.add_argument("--runs", type=Path, help="the arms' run directories (default: beside --run)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the answers")
    parser.add_argument("--dtype", default="bfloat16", help="of the verifiers (float32 on AVX2-only CPUs)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/verifier_data"))
    argv = sys.argv[1:] if argv is None else argv
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(own)
    arms = parse_arms(args.arms)
    manifest = json.loads((args.run / "manifest.json").read_text(encoding="utf-8"))
    if "eval_0" not in manifest["phases"]:
        raise SystemExit(
            f"--run {args.run}: eval_0 has not finished (run the recipe with iterations 0 first)"
        )
    settings = manifest["settings"]["model"]["init_args"]
    own = (settings["labelling"]["per_iteration"], settings["verifier"]["epochs"])
    runs = args.runs or args.run.parent

    folders = []
    for count, epochs in arms:
        folder = args.run if (count, epochs) == own else runs / f"verifier_data_n{count}_e{epochs}"
        if folder != args.run:
            started = time.time()
            run_arm(args.config, args.run, folder, count, epochs, extra)
            print(f"[verifier_data] {folder}: {time.time() - started:.0f} s", flush=True)
        folders.append(folder)

    # Every arm's V_0 scores the same answers: M0's greedy held-out answers, labelled by the oracle.
    answers = [t for t in read_jsonl(args.run / "heldout_0.jsonl") if t.num_steps > 0]
    heldout = build_task(manifest["settings"]["data"]["init_args"]["heldout_task"])
    questions = {q.id: q for q in heldout.load()}
    labels = [heldout.oracle_labels(t, questions[t.question_id]) for t in answers]
    first_errors = [next((j for j, v in enumerate(row) if v < 0.5), -1) for row in labels]
    tokenizer = load_tokenizer(str(args.run / "sft" / "reasoner"))
    prompts = TaskPrompts(tokenizer, [(heldout, list(questions.values()))])

    scores, rows = [], []
    for (count, epochs), folder in zip(arms, folders, strict=True):
        verifier = PRMVerifier.from_pretrained(
            folder / "verifier_0", backbone_options={"dtype": args.dtype}, prompt=prompts
        )
        verifier.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            arm_scores = score_trajectories(verifier, answers, f"{folder}/verifier_0")
        del verifier
        scores.append(arm_scores)
        phases = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["phases"]
        labels_phase = phases["labels_0"]
        rows.append(
            {
                "arm": f"{count}:{epochs}",
                "labelled_samples": count,
                "epochs": epochs,
                "run": str(folder),
                "verifier_trajectories": phases["verifier_0"]["trajectories"],
                "label_cost": labels_phase["cost"],
                "labels_vs_oracle": labels_phase.get("labels_vs_oracle", {}).get("sampled"),
                "verifier_seconds": round(
                    phases["verifier_0"]["finished_at"] - labels_phase["finished_at"], 1
                ),
            }
        )

    with_error = [i for i, f in enumerate(first_errors) if f >= 0]
    random_step = sum(1 / answers[i].num_steps for i in with_error) / len(with_error)
    hits = [[largest_drop(arm[i]) == first_errors[i] for i in with_error] for arm in scores]
    # Two rankings: of steps (pooled over answers) and of whole answers by their mean step score, right
    # final answers against wrong ones: what ranks a round's pairs (sapo.eval.processbench.answer_auroc, here
    # with one "step" per answer so that every resample is scored by the same rule).
    rankings = {
        "step_auroc": (scores, labels),
        "answer_auroc": (
            [[[trajectory_reward(s)] for s in arm] for arm in scores],
            [[float(bool(t.outcome))] for t in answers],
        ),
    }
    for a, row in enumerate(rows):
        row["detection"] = sum(hits[a]) / len(hits[a])
        row["random_step"] = random_step
        if a:
            row["detection_vs_first"] = paired_difference(hits[0], hits[a])
    for name, (arm_scores, arm_labels) in rankings.items():
        draws = bootstrap_auroc(arm_scores, arm_labels, args.resamples, seed=0)  # the same resamples
        for a, row in enumerate(rows):
            row[name] = step_auroc(arm_scores[a], arm_labels)
            row[f"{name}_95"] = interval(draws[a])
            if a:
                row[f"{name}_vs_first_95"] = interval(
                    [x - y for x, y in zip(draws[a], draws[0], strict=True)]
                )
    for a, row in enumerate(rows):
        per_answer = args.out / f"answers_{row['labelled_samples']}_{row['epochs']}.jsonl"
        per_answer.parent.mkdir(parents=True, exist_ok=True)
        with per_answer.open("w", encoding="utf-8") as handle:
            for i, t in enumerate(answers):
                record = {
                    "question_id": t.question_id,
                    "scores": [round(s, 5) for s in scores[a][i]],
                    "oracle_first_error": first_errors[i],
                    "largest_drop": largest_drop(scores[a][i]),
                }
                handle.write(json.dumps(record) + "\n")

    command = (
        "python benchmarks/verifier_data.py "
        + " ".join(part for path in args.config for part in ("--config", str(path)))
        + f" --run {args.run} --arms {args.arms}"
        + (f" --runs {args.runs}" if args.runs else "")
        + f" --out {args.out}"
        + (" -- " + " ".join(extra) if extra else "")
    )
    table = write_table(rows, args, answers, with_error, command)
    plot(rows, args.out / "verifier_data.png")
    (args.out / "table.json").write_text(
        json.dumps({"command": command, "date": str(date.today()), "rows": rows}, indent=1), encoding="utf-8"
    )
    print(table.read_text(encoding="utf-8"))
    return table


def write_table(
    rows: list[dict[str, Any]], args: argparse.Namespace, answers: list, with_error: list, command: str
) -> Path:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    lines = [
        "# The first verifier against the size of its labelled data",
        "",
        f"V_0 of each arm scores M0's {len(answers)} greedy held-out answers ({len(with_error)} with a wrong step; "
        f"their step labels from the task's oracle). Base run {args.run}; {date.today()}; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}.",
        "",
        "Step AUROC: right steps against wrong ones, pooled over the answers. Answer AUROC: answers with the "
        "right final answer against wrong ones, by their mean step score (how a round's pairs are ranked). "
        "Intervals: 95% bootstrap over the answers, paired across arms.",
        "",
        "| labelled samples : epochs | V_0 trains on | step AUROC (95%) | vs first arm | answer AUROC (95%) "
        "| vs first arm | detection | vs first arm | random step | labels vs oracle "
        "| label completions / tokens / s | verifier s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def auroc(row: dict[str, Any], name: str) -> str:
        low, high = row[f"{name}_95"]
        vs = f"{name}_vs_first_95"
        change = "" if vs not in row else "{:+.3f} to {:+.3f}".format(*row[vs])
        return f"{row[name]:.3f} ({low:.3f}-{high:.3f}) | {change}"

    for row in rows:
        vs_detection = (
            ""
            if "detection_vs_first" not in row
            else "{:+.1f} ± {:.1f} pts".format(*(100 * x for x in row["detection_vs_first"]))
        )
        oracle = row["labels_vs_oracle"]
        agreement = "–" if not oracle else f"{oracle['first_error_accuracy']:.3f} of {oracle['trajectories']}"
        cost = row["label_cost"]
        lines.append(
            f"| {row['arm']} | {row['verifier_trajectories']} | {auroc(row, 'step_auroc')} "
            f"| {auroc(row, 'answer_auroc')} | {pct(row['detection'])} | {vs_detection} | {pct(row['random_step'])} | {agreement} "
            f"| {cost['completions']} / {cost['generated_tokens']} / {cost['seconds']:.0f} | {row['verifier_seconds']:.0f} |"
        )
    lines += ["", f"Command: `{command}`"]
    path = args.out / "table.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for epochs in sorted({r["epochs"] for r in rows}):
        same = sorted((r for r in rows if r["epochs"] == epochs), key=lambda r: r["labelled_samples"])
        x = [r["labelled_samples"] for r in same]
        for name, what in (("step_auroc", "steps"), ("answer_auroc", "answers")):
            low = [r[name] - r[f"{name}_95"][0] for r in same]
            high = [r[f"{name}_95"][1] - r[name] for r in same]
            left.errorbar(
                x,
                [r[name] for r in same],
                yerr=[low, high],
                marker="o",
                capsize=3,
                label=f"{what}, {epochs} epoch(s)",
            )
        right.plot(x, [100 * r["detection"] for r in same], marker="o", label=f"{epochs} epoch(s)")
    left.axhline(0.5, color="grey", linestyle=":", label="no separation")
    right.axhline(100 * rows[0]["random_step"], color="grey", linestyle=":", label="random step")
    left.set(xlabel="labelled samples", ylabel="AUROC", title="V_0: ranking steps and answers")
    right.set(xlabel="labelled samples", ylabel="first error found (%)", title="V_0: largest-drop detection")
    for axis in (left, right):
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
