"""AdamW's step on this CPU: torch's three implementations and sapo's bfloat16 moments on SmolLM2-135M.

The multi-tensor implementation (torch's default, ``foreach``), the per-parameter loop (``foreach=False``),
the fused kernel (``fused=True``, what :func:`sapo.models.schedule.adamw` picks on a CPU) and
:class:`sapo.models.optim.BFloat16MomentAdamW` (``moment_dtype: bfloat16``), each in a fresh
subprocess, on a randomly initialised model of SmolLM2-135M's shape (float32 weights; no download), every
weight given a random gradient. Measured per implementation, after ``--warmup`` untimed steps (the first
creates the moments): seconds per step, the size of the optimizer's state, the resident memory before the
timed steps, and how far the process's peak rose above it during them (the step's temporaries). The
implementations run one after the other, in ``--rounds`` rounds, interleaved (interference only ever slows a
run, so the best round of each is the figure).

Usage::

    .venv/bin/python benchmarks/optimizer_step.py [--steps 5 --warmup 2 --rounds 2 --threads 2
        --out benchmarks/results/optimizer_step.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

IMPLEMENTATIONS = {"foreach (torch's default)": {"foreach": True}, "per parameter": {"foreach": False}}
IMPLEMENTATIONS["fused (sapo's)"] = {"fused": True}
IMPLEMENTATIONS["bfloat16 moments (sapo's moment_dtype: bfloat16)"] = {"moment_dtype": "bfloat16"}


def _child(name: str, steps: int, warmup: int, threads: int) -> dict:
    import psutil
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = LlamaConfig(  # SmolLM2-135M's shape
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    parameters = [p for p in model.parameters() if p.requires_grad]
    for p in parameters:
        p.grad = torch.randn_like(p) * 1e-3
    options = IMPLEMENTATIONS[name]
    if "moment_dtype" in options:
        from sapo.models.schedule import adamw

        optimizer = adamw(parameters, learning_rate=1e-4, weight_decay=0.01, **options)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.01, **options)
    for _ in range(warmup):
        optimizer.step()
    resident = psutil.Process().memory_info().rss
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    seconds = (time.perf_counter() - start) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "implementation": name,
        "parameters": sum(p.numel() for p in parameters),
        "seconds_per_step": seconds,
        "state_gib": sum(
            t.numel() * t.element_size()
            for state in optimizer.state.values()
            for t in state.values()
            if torch.is_tensor(t)
        )
        / 2**30,
        "resident_gib": resident / 2**30,
        "peak_rise_gib": max(0, peak - resident) / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first (the first makes the moments)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="runs of every implementation, interleaved")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/optimizer_step.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.steps, args.warmup, args.threads)))
        return
    runs = []
    for round_ in range(args.rounds):
        for name in IMPLEMENTATIONS:
            command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps)]
            command += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            run = json.loads(result.stdout.strip().splitlines()[-1]) | {"round": round_}
            runs.append(run)
            print(
                f"[optimizer_step] round {round_ + 1}/{args.rounds} {name}: {run['seconds_per_step']:.3f} s/step, "
                f"peak +{run['peak_rise_gib']:.2f} GiB over {run['resident_gib']:.2f}",
                flush=True,
            )
    best = {
        name: min((r for r in runs if r["implementation"] == name), key=lambda r: r["seconds_per_step"])
        for name in IMPLEMENTATIONS
    }
    print(
        "\n| AdamW implementation | s/step (best round) | state, GiB | peak rise during the steps, GiB |"
        "\n|---|---|---|---|"
    )
    for name, run in best.items():
        print(
            f"| {name} | {run['seconds_per_step']:.3f} | {run['state_gib']:.2f} | {run['peak_rise_gib']:.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads}
    args.out.write_text(
        json.dumps(
            {"machine": machine, "settings": vars(args) | {"out": str(args.out)}, "runs": runs, "best": best},
            indent=1,
            default=str,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
