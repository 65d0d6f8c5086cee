"""The reproduction: SAPO's loop beside its baselines and ablations, shaped like the paper's Tables 1 and 3.

One run of the method (``--config``, ``--iterations`` rounds, by default the demo recipe with 3), then each
arm begun from that run after ``--branch-after`` (``samples_1``: the same SFT start, the same first
verifier, the same samples of round 1; ``sapo.evolution.branch``), so that every arm differs from SAPO's
round 1 only in what the arm changes, at the same optimizer steps (``orpo.max_steps`` of the recipe). The
two baselines run as many rounds as the method (``--baseline-iterations``), each round from its own
previous model and samples, so that SAPO's last round has a baseline at equal optimizer steps and tokens;
the ablations run one round. Each row is set beside SAPO's round of the same number:

| row | what | run |
|---|---|---|
| SFT | the converged SFT start | the method's run, iteration 0 |
| SFT continued t | each round trains on the gold solutions again | ``configs/ablations/sft_continued.yaml`` |
| RFT t | each round trains on its right samples, no verifier | ``configs/ablations/rft.yaml`` |
| SAPO 1..T | the method | the method's run, iteration t |
| Monte Carlo labels | SIPF's labels (k rollouts per step) | ``configs/ablations/monte_carlo.yaml`` |
| binary-search labels | OmegaPRM-style | ``configs/ablations/binary_search.yaml`` |
| outcome labels | no process feedback | ``configs/ablations/outcome.yaml`` |
| random step | no detection | ``configs/ablations/random_step.yaml`` |
| no expansion | SAPO without label expansion | ``configs/ablations/no_expansion.yaml`` |
| outcome pairs | no verifier: right over wrong answers | ``configs/ablations/no_verifier.yaml`` |

Strategies that take ``k`` are given the method's ``k`` (``--k``), so label costs compare at the same k.
Each run resumes after an interruption (rerun the command). Writes ``table.md``, ``table.json``,
``accuracy.png`` and every row's per-question answers into ``--out``.

Usage::

    .venv/bin/python benchmarks/reproduction.py                       # the demo recipe, 3 rounds, all arms
    .venv/bin/python benchmarks/reproduction.py --arms rft,outcome --iterations 1 --runs runs/repro_small \\
        --out /tmp/repro -- --model.init_args.sampling.backend vllm   # after --: passed to every sapo fit
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from sapo.evolution.compare import Arm, compare_arms, write_comparison

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "configs" / "ablations"
#: arm -> (row name, overlay, whether its strategy takes k)
ARMS = {
    "sft_continued": ("SFT continued", "sft_continued.yaml", False),
    "rft": ("RFT", "rft.yaml", False),
    "monte_carlo": ("Monte Carlo labels (SIPF)", "monte_carlo.yaml", True),
    "binary_search": ("binary-search labels", "binary_search.yaml", True),
    "outcome": ("outcome labels (no process feedback)", "outcome.yaml", False),
    "random_step": ("random step (no detection)", "random_step.yaml", True),
    "no_expansion": ("no expansion", "no_expansion.yaml", False),
    "no_verifier": ("outcome pairs (no verifier)", "no_verifier.yaml", False),
}
BASELINES = ("sft_continued", "rft")


def sapo_fit(configs: list[Path], run_dir: Path, extra: list[str]) -> None:
    """One ``sapo fit`` (resumes what a previous call left), its output passed through."""
    command = [str(Path(sys.executable).with_name("sapo")), "fit"]
    for config in configs:
        command += ["--config", str(config)]
    command += [
        "--model.init_args.run_dir",
        str(run_dir),
        "--trainer.default_root_dir",
        str(run_dir),
        *extra,
    ]
    print("$", " ".join(command), flush=True)
    started = time.time()
    subprocess.run(command, check=True)
    print(f"[reproduction] {run_dir}: {time.time() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, action="append", help="the method's recipe (repeatable)")
    parser.add_argument("--iterations", type=int, default=3, help="rounds of the method (the paper: 3)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    parser.add_argument(
        "--baseline-iterations",
        type=int,
        help="rounds of SFT continued and RFT (default: --iterations, equal steps to the method's last round)",
    )
    parser.add_argument(
        "--branch-after", default="samples_1", help="the method's last phase every arm copies"
    )
    parser.add_argument("--k", type=int, default=4, help="completions per estimate for every strategy with k")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "reproduction", help="run directories")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "reproduction")
    args = parser.parse_args(own)
    configs = args.config or [ROOT / "configs" / "demo.yaml"]
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    if args.iterations < 1:
        parser.error("--iterations: at least 1 (the arms are compared with the method's round 1)")
    baseline_rounds = args.iterations if args.baseline_iterations is None else args.baseline_iterations
    if not 1 <= baseline_rounds <= args.iterations:
        parser.error(
            f"--baseline-iterations: from 1 to --iterations ({args.iterations}), not {baseline_rounds}"
        )

    method_dir = args.runs / "sapo"
    sapo_fit(configs, method_dir, ["--model.init_args.iterations", str(args.iterations), *extra])
    for arm in arms:
        _, overlay, takes_k = ARMS[arm]
        k = ["--model.init_args.labelling.strategy.init_args.k", str(args.k)] if takes_k else []
        branch = ["--model.init_args.branch_from", str(method_dir), "--model.init_args.branch_after"]
        rounds = baseline_rounds if arm in BASELINES else 1
        sapo_fit(
            [*configs, ABLATIONS / overlay],
            args.runs / arm,
            ["--model.init_args.iterations", str(rounds), *branch, args.branch_after, *k, *extra],
        )

    sft = Arm("SFT", method_dir, 0)
    method = {t: Arm(f"SAPO {t}", method_dir, t) for t in range(1, args.iterations + 1)}
    rows = [sft]
    for t in range(1, args.iterations + 1):
        if t <= baseline_rounds:
            rows += [Arm(f"{ARMS[a][0]} {t}", args.runs / a, t) for a in arms if a in BASELINES]
        rows.append(method[t])
    rows += [Arm(ARMS[a][0], args.runs / a, 1) for a in arms if a not in BASELINES]
    results = compare_arms(rows, reference=sft, method=method)
    table = write_comparison(
        results, args.out, reference="SFT", method="SAPO (same round)", title="Reproduction"
    )
    print(table.read_text(encoding="utf-8"))
    return table


if __name__ == "__main__":
    main()
