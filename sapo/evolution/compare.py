"""Arms set side by side: held-out accuracy of several runs' iterations on the same questions, each with
its paired 95% interval against a reference (the SFT start) and against the method, and its label cost.

An *arm* is one iteration of one run directory: the SFT start is ``(run, 0)``, SAPO's round 2 ``(run, 2)``,
an ablation begun from the same run (:mod:`sapo.evolution.branch`) ``(ablation, 1)``. Every arm must have
answered the same held-out questions (the error names the run and the questions that differ), so that the
differences are paired (:func:`~sapo.eval.reasoner.paired_difference`).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sapo.eval.reasoner import paired_difference
from sapo.evolution.run_directory import read_manifest, round_cost

__all__ = ["Arm", "ArmResult", "compare_arms", "heldout_outcomes", "write_comparison"]


@dataclass(frozen=True)
class Arm:
    """One row of a comparison: iteration ``iteration`` of the run in ``run_dir``, shown as ``name``."""

    name: str
    run_dir: Path
    iteration: int


@dataclass
class ArmResult:
    """An arm's figures. ``vs_reference`` and ``vs_method`` are (difference, 95% half-width) in accuracy
    (``None`` for the arm itself); ``label_cost`` is what the run's rounds 1..iteration spent on supervision
    (:data:`~sapo.evolution.run_directory.ROUND_COSTS`; round 0's labels, shared by every arm begun from one run, are left out)."""

    name: str
    run_dir: str
    iteration: int
    questions: int
    accuracy: float
    vs_reference: tuple[float, float] | None
    vs_method: tuple[float, float] | None
    label_cost: dict[str, Any] = field(default_factory=dict)
    strategy: str | None = None


def heldout_outcomes(run_dir: Path, iteration: int) -> dict[str, bool]:
    """Question id -> solved, from the iteration's greedy held-out answers (``heldout_<t>.jsonl``)."""
    path = Path(run_dir) / f"heldout_{iteration}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no held-out answers for iteration {iteration} of {run_dir}")
    outcomes = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
                outcomes[row["question_id"]] = bool(row.get("outcome"))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}, line {number}: not a held-out answer ({error})") from None
    return outcomes


def _paired(before: dict[str, bool], after: dict[str, bool], where: str) -> tuple[float, float]:
    if before.keys() != after.keys():
        missing = sorted(before.keys() ^ after.keys())
        raise ValueError(
            f"{where}: the arms answered different held-out questions ({len(missing)} differ, e.g. "
            f"{', '.join(missing[:3])}); compare runs with the same data.init_args.heldout_task and "
            "model.init_args.evaluation.questions"
        )
    ids = sorted(before)
    return paired_difference([before[i] for i in ids], [after[i] for i in ids])


def compare_arms(
    arms: Sequence[Arm], reference: Arm, method: Arm | Mapping[int, Arm] | None = None
) -> list[ArmResult]:
    """Every arm's held-out accuracy, its paired difference from ``reference`` and from ``method``, and the
    label cost of its rounds.

    ``method`` may map an iteration to the method's arm of that round: each arm is then set beside the
    method's round of the same number (RFT's round 2 beside SAPO's round 2, at equal optimizer steps), and
    an arm whose round the mapping lacks gets no such difference."""
    base = heldout_outcomes(reference.run_dir, reference.iteration)
    ours: dict[Arm, dict[str, bool]] = {}
    results = []
    for arm in arms:
        outcomes = heldout_outcomes(arm.run_dir, arm.iteration)
        where = f"{arm.run_dir}/heldout_{arm.iteration}.jsonl"
        against = method.get(arm.iteration) if isinstance(method, Mapping) else method
        if against is not None and against not in ours:
            ours[against] = heldout_outcomes(against.run_dir, against.iteration)
        phases = read_manifest(arm.run_dir)["phases"]
        cost = round_cost(phases, range(1, arm.iteration + 1))
        last_labels = phases.get(f"labels_{arm.iteration}", {})
        results.append(
            ArmResult(
                name=arm.name,
                run_dir=str(arm.run_dir),
                iteration=arm.iteration,
                questions=len(outcomes),
                accuracy=sum(outcomes.values()) / max(1, len(outcomes)),
                vs_reference=None if arm == reference else _paired(base, outcomes, where),
                vs_method=None if against in (None, arm) else _paired(ours[against], outcomes, where),
                label_cost=cost.to_dict(),
                strategy=last_labels.get("strategy") if arm.iteration > 0 else None,
            )
        )
    return results


def _signed(pair: tuple[float, float] | None) -> str:
    return "" if pair is None else f"{100 * pair[0]:+.1f} ± {100 * pair[1]:.1f}"


def _table_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def write_comparison(
    results: Sequence[ArmResult], out: Path, reference: str, method: str | None, title: str = "Comparison"
) -> Path:
    """Write ``table.md``, ``table.json``, ``accuracy.png`` (accuracy with each arm's interval against the
    reference) and each arm's per-question answers (``heldout_<name>.jsonl``) into ``out``; returns the
    table's path."""
    out.mkdir(parents=True, exist_ok=True)
    # a table of one recipe's rounds has no method to set them beside: no column of dashes then
    versus = [f"vs {reference}"] + ([f"vs {method}"] if method else [])
    header = [
        "row",
        "run, iteration",
        "held-out",
        *versus,
        "labels",
        "completions",
        "generated tokens",
        "seconds",
    ]
    against = (
        f'"vs {reference}" and "vs {method}" are paired differences in points with their 95% intervals'
        if method
        else f'"vs {reference}" is the paired difference in points with its 95% interval'
    )
    lines = [
        f"# {title}",
        "",
        f"Held-out accuracy on the same {results[0].questions if results else 0} questions for every row;",
        against,
        "(a difference whose interval includes zero is no difference). Label cost: the rounds' own labels",
        "(completions, generated tokens, seconds), the first labels shared by every row left out.",
        "",
        _table_row(header),
        "|" + "---|" * len(header),
    ]
    for r in results:
        cost = r.label_cost
        differences = [_signed(r.vs_reference)] + ([_signed(r.vs_method)] if method else [])
        cells = [r.name, f"{Path(r.run_dir).name}, {r.iteration}", f"{100 * r.accuracy:.1f}%", *differences]
        cells += [r.strategy or "–", cost.get("completions", 0), cost.get("generated_tokens", 0)]
        lines.append(_table_row([*cells, f"{cost.get('seconds', 0.0):.0f}"]))
        shutil.copyfile(
            Path(r.run_dir) / f"heldout_{r.iteration}.jsonl", out / f"heldout_{_file_name(r.name)}.jsonl"
        )
    table = out / "table.md"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "table.json").write_text(
        json.dumps([asdict(r) for r in results], indent=1) + "\n", encoding="utf-8"
    )
    _plot(results, out / "accuracy.png", reference)
    return table


def _file_name(name: str) -> str:
    """A row's name as a file name: ``Monte Carlo labels (SIPF)`` -> ``monte_carlo_labels_sipf``."""
    return re.sub(r"[^a-z0-9.-]+", "_", name.lower()).strip("_")


def _plot(results: Sequence[ArmResult], path: Path, reference: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(results) + 1.2))
    names = [r.name for r in results][::-1]
    accuracy = [100 * r.accuracy for r in results][::-1]
    errors = [100 * (r.vs_reference or (0.0, 0.0))[1] for r in results][::-1]
    ax.barh(names, accuracy, xerr=errors, color="#6a8fbf", ecolor="black", capsize=3)
    anchor = next((100 * r.accuracy for r in results if r.vs_reference is None), None)
    if anchor is not None:
        ax.axvline(anchor, color="grey", linestyle="--", linewidth=1, label=reference)
        ax.legend(loc="lower right", fontsize=7)
    # two lines: one is wider than the figure and was cut at its right edge
    ax.set_xlabel(f"held-out accuracy, %\n(bars: 95% interval of the paired difference from {reference})")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
