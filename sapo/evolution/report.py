"""The run's report: a markdown summary of every iteration, with PNG plots, rewritten after each one."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sapo.eval.reasoner import paired_difference
from sapo.evolution.compare import heldout_outcomes
from sapo.evolution.run_directory import RunDirectory

__all__ = ["publish_iteration", "write_metrics_csv", "write_report"]


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    if percent:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _agreement(entry: dict[str, Any], part: str) -> str:
    """A labelling phase's labels against the oracle, for one part (sampled trajectories, expansions)."""
    agreement = (entry.get("labels_vs_oracle") or {}).get(part)
    if agreement is None:
        return "–"
    return (
        f"{agreement['first_error_accuracy']:.3f} of {agreement['trajectories']} "
        f"({agreement['earlier']} earlier, {agreement['later']} later)"
    )


def publish_iteration(
    run: RunDirectory,
    loggers: Sequence[Any],
    t: int,
    metrics: dict[str, Any],
    iterations: list[dict[str, Any]],
) -> None:
    """Iteration ``t``'s ``metrics`` to the loggers (as ``iteration/<name>`` scalars at step ``t``), one line on
    the terminal, and the run's ``logs/iterations/metrics.csv`` and report rewritten from ``iterations``."""
    scalars = {
        f"iteration/{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and v is not None and k not in ("iteration", "finished_at")
    }
    for logger in loggers:
        logger.log_metrics(scalars, step=t)
        logger.save()
    write_metrics_csv(run.path / "logs" / "iterations" / "metrics.csv", iterations)
    summary = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in scalars.items())
    print(f"[sapo] iteration {t}: {summary}")
    write_report(run, iterations)


def write_report(run: RunDirectory, iterations: Sequence[dict[str, Any]]) -> None:
    """Write ``report.md`` (and ``accuracy.png``, ``verifier.png``, ``label_cost.png``) in the run dir."""
    phases = run.manifest["phases"]
    first_labels = phases.get("labels_0")
    lines = [
        f"# Run report: {run.path}",
        "",
        (
            f"Iteration 0 is the SFT start (M0, with the first verifier V0 trained on {first_labels['strategy']}"
            " labels);\niteration t evaluates the reasoner after ORPO round t and the verifier V_t of that round."
            if first_labels
            else "Iteration 0 is the SFT start (M0); this recipe trains no verifier, so the verifier tables stay"
            "\nempty; iteration t evaluates the reasoner after ORPO round t."
        ),
        '"vs SFT" is the change on the same held-out questions, ± its 95% interval (paired, normal',
        "approximation): where the interval includes zero, the change cannot be told from noise.",
        "",
    ]
    if iterations and all(m.get("heldout_accuracy") is None for m in iterations):
        lines += [
            "**Warning: no held-out accuracy was measured** (the recipe has no `data.init_args.heldout_task`),",
            "so this report cannot say whether the reasoner improved.",
            "",
        ]
    lines += [
        "| iteration | held-out accuracy | vs SFT | self-verification error "
        "| label completions (cumulative) | label tokens (cumulative) |",
        "|---|---|---|---|---|---|",
    ]
    start = iterations[0].get("heldout_accuracy") if iterations else None
    start_outcomes = _heldout_outcomes(run, iterations[0]["iteration"]) if iterations else {}
    for m in iterations:
        acc = m.get("heldout_accuracy")
        delta = None if acc is None or start is None else f"{100 * (acc - start):+.1f} pts"
        outcomes = _heldout_outcomes(run, m["iteration"])
        common = sorted(set(start_outcomes) & set(outcomes))
        if delta is not None and m is not iterations[0] and len(common) > 1:
            change, half_width = paired_difference(
                [start_outcomes[q] for q in common], [outcomes[q] for q in common]
            )
            delta = f"{100 * change:+.1f} ± {100 * half_width:.1f} pts"
        cost = m.get("label_cost")  # None: no record; a missing key in one is 0
        lines.append(
            "| "
            + " | ".join(
                [
                    str(m["iteration"]),
                    _fmt(acc, percent=True),
                    "–" if delta is None else delta,
                    _fmt(m.get("self_verification_error"), percent=True),
                    _fmt(None if cost is None else cost.get("completions", 0)),
                    _fmt(None if cost is None else cost.get("generated_tokens", 0)),
                ]
            )
            + " |"
        )
    lines += [
        "",
        "## The verifier on the held-out answers",
        "",
        "V_t scores the greedy held-out answers of iteration t; the task's oracle gives each step's label.",
        "AUROC: the chance that a right step scores above a wrong one (0.5: no separation). Detection: on",
        "answers with a wrong step, how often the verifier's largest score drop is the first wrong step,",
        "beside a random step's chance (the random-step ablation). Answer AUROC: the chance that a right",
        "answer's mean step score (the reward that ranks pairs) is above a wrong answer's. F1 and the",
        "accuracies: ProcessBench's, at the threshold τ.",
        "",
        "| iteration | answers with an error / without | step AUROC | detection | random step | answer AUROC "
        "| F1 | error acc. | correct acc. |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in iterations:
        rows = m.get("verifier_rows") or {}
        lines.append(
            "| "
            + " | ".join(
                [
                    str(m["iteration"]),
                    f"{rows['with_error']} / {rows['correct']}" if rows else "–",
                    _fmt(m.get("verifier_step_auroc")),
                    _fmt(m.get("verifier_detection_accuracy")),
                    _fmt(m.get("random_step_detection_accuracy")),
                    _fmt(m.get("verifier_answer_auroc")),
                    _fmt(m.get("verifier_f1")),
                    _fmt(m.get("verifier_error_accuracy")),
                    _fmt(m.get("verifier_correct_accuracy")),
                ]
            )
            + " |"
        )
    lines += [
        "",
        "## Labelling, per phase",
        "",
        "Labels vs oracle: the share of labelled trajectories whose first labelled error is the oracle's first",
        "wrong step (gold solutions left out); earlier: a right step labelled wrong; later: a wrong step",
        "labelled right.",
        "",
        "| phase | strategy | labelled | expanded | dropped | completions | generated tokens "
        "| labels vs oracle: sampled | expanded | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    label_rows = []
    for name, entry in phases.items():
        if not name.startswith("labels_") or "cost" not in entry:
            continue
        cost = entry["cost"]
        label_rows.append((name, entry.get("strategy", "?"), entry, cost))
        lines.append(
            f"| {name} | {entry.get('strategy', '?')} | {entry.get('labelled')} | {entry.get('expanded')} "
            f"| {entry.get('dropped')} | {cost.get('completions', 0)} | {cost.get('generated_tokens', 0)} "
            f"| {_agreement(entry, 'sampled')} | {_agreement(entry, 'expanded')} | {cost.get('seconds', 0):.1f} |"
        )
    peaks = [e["memory"]["peak_rss_gib"] for e in phases.values() if "peak_rss_gib" in e.get("memory", {})]
    lines += ["", "## Phases", ""]
    if peaks:
        line = f"Peak resident memory of the run: {max(peaks):.2f} GiB (the largest phase's peak)."
        workers = [e["memory"].get("workers_peak_rss_gib", 0.0) for e in phases.values() if "memory" in e]
        if any(workers):
            line += f" Its worker processes (a vLLM engine) held up to {max(workers):.2f} GiB more."
        lines += [line, ""]
    lines += ["| phase | summary | peak memory |", "|---|---|---|"]
    for name, entry in phases.items():
        brief = {
            k: v
            for k, v in entry.items()
            if k not in ("finished_at", "cost", "label_cost") and not isinstance(v, dict)
        }
        lines.append(
            f"| {name} | {', '.join(f'{k}={_fmt(v)}' for k, v in brief.items())} | {_memory(entry)} |"
        )
    plots = _plots(run, iterations, label_rows)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{title}]({file})" for title, file in plots]
    (run.path / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _memory(entry: dict[str, Any]) -> str:
    """A phase's peak memory as the report shows it: host resident set, and CUDA when there is one."""
    memory = entry.get("memory", {})
    if "peak_rss_gib" not in memory:
        return "–"
    text = f"{memory['peak_rss_gib']:.2f} GiB"
    if memory.get("peak_rss_scope") == "process":
        text += " (process so far)"
    elif "rss_at_start_gib" in memory:  # what the phase found held: the earlier phases' share of its peak
        text += f" (from {memory['rss_at_start_gib']:.2f} GiB)"
    if "peak_cuda_gib" in memory:
        text += f", CUDA {memory['peak_cuda_gib']:.2f} GiB"
    if "workers_peak_rss_gib" in memory:  # a vLLM engine's processes, DataLoader workers
        text += f"; worker processes {memory['workers_peak_rss_gib']:.2f} GiB"
    return text


def _heldout_outcomes(run: RunDirectory, iteration: int) -> dict[str, bool]:
    """Question id -> solved, from the iteration's greedy held-out answers (empty if not written)."""
    written = (run.path / f"heldout_{iteration}.jsonl").is_file()
    return heldout_outcomes(run.path, iteration) if written else {}


def _plots(
    run: RunDirectory, iterations: Sequence[dict[str, Any]], label_rows: list
) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    xs = [m["iteration"] for m in iterations]
    curves = {
        "accuracy.png": ("held-out accuracy (greedy)", {"heldout_accuracy": "held-out accuracy"}),
        "verifier.png": (
            "the verifier on the held-out answers (oracle labels)",
            {
                "verifier_step_auroc": "step AUROC",
                "verifier_detection_accuracy": "first-error detection",
                "random_step_detection_accuracy": "random step",
                "verifier_answer_auroc": "answer AUROC",
                "verifier_f1": "ProcessBench F1",
            },
        ),
    }
    for file, (title, keys) in curves.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        drawn = False
        for key, label in keys.items():
            points = [(x, m[key]) for x, m in zip(xs, iterations, strict=True) if m.get(key) is not None]
            if points:
                drawn = True
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
                if key == "heldout_accuracy":
                    ax.axhline(points[0][1], color="grey", linestyle="--", linewidth=1, label="SFT start")
        if not drawn:
            plt.close(fig)
            continue
        ax.legend(loc="best", fontsize=7)
        ax.set_xlabel("iteration")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(xs)
        fig.tight_layout()
        fig.savefig(run.path / file, dpi=100)
        plt.close(fig)
        made.append((title, file))
    if label_rows:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        names = [f"{r[0]}\n{r[1]}" for r in label_rows]
        per_trajectory = [
            r[3].get("generated_tokens", 0) / max(1, (r[2].get("labelled") or 0) + (r[2].get("dropped") or 0))
            for r in label_rows
        ]
        ax.bar(names, per_trajectory)
        ax.set_ylabel("generated tokens per labelled trajectory")
        ax.set_title("label cost per phase and strategy", fontsize=10)
        ax.tick_params(axis="x", labelsize=7)
        fig.tight_layout()
        fig.savefig(run.path / "label_cost.png", dpi=100)
        plt.close(fig)
        made.append(("label cost per phase and strategy", "label_cost.png"))
    return made


def write_metrics_csv(path: Path, iterations: list[dict[str, Any]]) -> None:
    """The per-iteration metrics as one CSV (a row per iteration, a column per numeric metric), rewritten
    whole from the manifest's records, so a run resumed by several processes keeps one file."""
    rows = [
        {"step": m["iteration"]}
        | {
            f"iteration/{k}": v
            for k, v in m.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and k not in ("iteration", "finished_at")
        }
        for m in iterations
    ]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
