"""The two generation backends on the loop's workloads, in one run: transformers ``generate`` against vLLM.

Model: the packaged SmolLM2-135M-Instruct as sapo converts it (``--dtype``, bfloat16 by default). Questions:
the demo's arithmetic task (train split, 2-4 steps). Workloads, the same rows and seeds for both backends:

- **sampling**: ``--samples`` trajectories of each of ``--questions`` questions, T = 1.0, the demo's token
  budget, each row stopped after its answer line (the loop's sampling phase);
- **first-error labels**: SAPO's ``FirstErrorSupervision`` (k = ``--k``, the demo's settings) on up to
  ``--max-labelled`` sampled trajectories that are wrong (the first backend's, the same for both), with the task's exact oracle as the step scorer (a perfect verifier), so the
  strategy's rollouts are those a trained verifier would ask for;
- **Monte Carlo labels**: ``MonteCarloSupervision`` (k = ``--k``) on the same trajectories: k rollouts from
  every step prefix (Math-Shepherd's estimate);
- **held-out answers**: greedy answers to ``--heldout`` questions (the loop's evaluation).

Per backend and workload: completions, generated tokens (up to each row's stop point), seconds, generated
tokens/s and sequences/s, rows cut at the answer line, and tokens generated past it (idle). Per backend: the
engine's start (vLLM), the weight reload into the running engine, and peak resident memory (transformers: this
process; vLLM: this process plus the engine's processes, sampled every 0.2 s). The vLLM side is also checked
against a reload: after ``serve`` of the same checkpoint copied to another folder (a real reload), the greedy
answers to 16 held-out questions are compared with those before it (printed, not asserted).

    .venv/bin/python benchmarks/rollout_backends.py --quick          # seconds: checks it runs
    .venv/bin/python benchmarks/rollout_backends.py [--questions 64 --samples 4 --k 4 --heldout 128
        --out benchmarks/results/rollout_backends.json]

Run nothing else meanwhile: both backends use every core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.trajectory import Cost
from sapo.eval.reasoner import sample_and_check
from sapo.models import PACKAGED_SMOLLM2, BackboneSpec
from sapo.rollout import (
    Sampler,
    TaskRolloutSampler,
    TransformersBackend,
    VLLMBackend,
    VLLMEngine,
    VLLMOptions,
)
from sapo.supervision import FirstErrorSupervision, MonteCarloSupervision
from sapo.supervision.oracle_scorer import OracleScorer


class PeakMemory:
    """The peak resident memory of this process, and of its child processes with ``children``."""

    def __init__(self, children: bool) -> None:
        self.children, self.peak, self._stop = children, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            if self.children:
                for child in me.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_workloads(
    name: str, backend, tokenizer, task, questions, heldout_task, heldout, args, to_label: list
) -> list[dict]:
    """Every workload through one backend; one row of figures per workload. The labelling workloads label
    ``to_label``, or when it is empty (the first backend) the wrong samples of this backend, which are then
    left in it for the next backend, so that both label the same trajectories."""

    def row(workload: str, cost: Cost, seconds: float, stopped: int) -> dict:
        return {
            "backend": name,
            "workload": workload,
            "completions": cost.completions,
            "generated_tokens": cost.generated_tokens,
            "idle_tokens": cost.idle_row_steps,
            "prompt_tokens": cost.prompt_tokens,
            "prefill_tokens": cost.prefill_tokens,  # prompt positions computed (vLLM: after prefix-cache hits)
            "seconds": round(seconds, 2),
            "tokens_per_second": round(cost.generated_tokens / seconds, 1),
            "sequences_per_second": round(cost.completions / seconds, 2),
            "stopped_at_answer": stopped,
        }

    def sampler(seed: int, temperature: float = 1.0) -> Sampler:
        return Sampler(
            None,
            tokenizer,
            max_new_tokens=args.max_new_tokens,
            temperature=temperature,
            batch_size=args.batch_size,
            seed=seed,
            backend=backend,
        )

    rows = []
    rollouts = TaskRolloutSampler(sampler(0), task, questions)
    started = time.perf_counter()
    samples = rollouts.sample_trajectories(questions, args.samples)
    stopped = sum(t.meta["finish_reason"] == "stop" for t in samples)
    rows.append(row("sampling", rollouts.last_cost, time.perf_counter() - started, stopped))
    if not to_label:
        to_label += [t for t in samples if not t.outcome][: args.max_labelled]
    wrong = to_label
    for label, strategy in (
        ("first-error labels", FirstErrorSupervision(k=args.k, on_inconsistent="drop", expand=True)),
        ("Monte Carlo labels", MonteCarloSupervision(k=args.k)),
    ):
        labeller = TaskRolloutSampler(sampler(1), task, questions)
        started = time.perf_counter()
        strategy.label(wrong, labeller, OracleScorer(task, questions))
        rows.append(row(label, labeller.sampler.cost, time.perf_counter() - started, -1))
    started = time.perf_counter()
    evaluator = sample_and_check(
        None,
        tokenizer,
        heldout_task,
        heldout,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        backend=backend,
        description="held-out answers",
    )
    seconds = time.perf_counter() - started
    generated = sum(s[0].meta["generated_tokens"] for s in evaluator)
    stopped = sum(s[0].meta["finish_reason"] == "stop" for s in evaluator)
    rows.append(
        row("held-out answers", Cost(completions=len(heldout), generated_tokens=generated), seconds, stopped)
    )
    print(f"{name}: {len(samples)} samples, {len(wrong)} wrong labelled")
    return rows


def greedy_answers(backend, tokenizer, task, questions, args) -> list[str]:
    """The greedy completions of the first 16 held-out questions."""
    samples = sample_and_check(
        None,
        tokenizer,
        task,
        questions[:16],
        max_new_tokens=args.max_new_tokens,
        backend=backend,
        progress=False,
    )
    return [s[0].meta["completion"] for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small run that checks the script works")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="K trajectories per question (the demo's)")
    parser.add_argument("--k", type=int, default=4, help="completions per estimate (the demo's)")
    parser.add_argument(
        "--max-labelled", type=int, default=48, help="wrong trajectories labelled (the demo's)"
    )
    parser.add_argument("--heldout", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="the demo's token budget")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per generate call (transformers)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument(
        "--vllm-stop-in-rounds",
        action="store_true",
        help="vLLM stops at the answer line in rounds (not the default)",
    )
    parser.add_argument("--backends", nargs="+", default=["transformers", "vllm"])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.questions, args.samples, args.k, args.max_labelled, args.heldout = 4, 2, 2, 4, 4
        args.max_new_tokens = 48
    to_label: list = []
    task = ArithmeticTask(split="train", num_questions=2000, min_steps=2, max_steps=4)
    questions = task.load()[200 : 200 + args.questions]  # the demo's answer-only questions
    heldout_task = ArithmeticTask(split="test", num_questions=args.heldout, min_steps=2, max_steps=4)
    heldout = heldout_task.load()
    loaded = BackboneSpec(PACKAGED_SMOLLM2, dtype=args.dtype, cache_dir=args.cache_dir).load_with_info()
    checkpoint, tokenizer = loaded.info.checkpoint, loaded.tokenizer
    rows, engines = [], {}
    for name in args.backends:
        if name == "transformers":
            with PeakMemory(children=False) as memory:
                model = loaded.model.eval()
                rows += run_workloads(
                    name,
                    TransformersBackend(model, tokenizer, args.batch_size),
                    tokenizer,
                    task,
                    questions,
                    heldout_task,
                    heldout,
                    args,
                    to_label,
                )
            engines[name] = {"peak_rss_gib": round(memory.peak / 2**30, 2)}
            del model
            loaded.model = None
        else:
            with PeakMemory(children=True) as memory:
                options = VLLMOptions(
                    dtype=args.dtype, kv_cache_gib=args.kv_cache_gib, stop_in_rounds=args.vllm_stop_in_rounds
                )
                engine = VLLMEngine(checkpoint, options)
                backend = VLLMBackend(engine, tokenizer)
                rows += run_workloads(
                    name, backend, tokenizer, task, questions, heldout_task, heldout, args, to_label
                )
                copy = Path(tempfile.mkdtemp()) / "reasoner"
                shutil.copytree(checkpoint, copy)
                before = greedy_answers(backend, tokenizer, heldout_task, heldout, args)
                started = time.perf_counter()
                engine.serve(copy)  # the same weights from another folder: a real reload, same answers
                reload_seconds = time.perf_counter() - started
                after = greedy_answers(backend, tokenizer, heldout_task, heldout, args)
                engine.close()
            engines[name] = {
                "start_seconds": round(engine.start_seconds, 1),
                "reload_seconds": round(reload_seconds, 2),
                "greedy_answers_unchanged_by_reload": f"{sum(a == b for a, b in zip(before, after, strict=True))}/{len(after)}",
                "peak_rss_gib": round(memory.peak / 2**30, 2),
            }
            shutil.rmtree(copy.parent)
    by = {(r["backend"], r["workload"]): r for r in rows}
    print(
        f"\nSmolLM2-135M-Instruct {args.dtype}, {args.questions} questions x K={args.samples}, k={args.k}, "
        f"{args.heldout} held-out, max_new_tokens={args.max_new_tokens}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}\n"
    )
    header = ["workload", "backend", "completions", "tokens", "idle tokens", "s", "tok/s", "seq/s"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print(
            f"| {r['workload']} | {r['backend']} | {r['completions']} | {r['generated_tokens']} | {r['idle_tokens']} | "
            f"{r['seconds']} | {r['tokens_per_second']} | {r['sequences_per_second']} |"
        )
    if {"transformers", "vllm"} <= set(args.backends):
        print()
        total = {"transformers": 0.0, "vllm": engines["vllm"]["start_seconds"]}
        for workload in ("sampling", "first-error labels", "Monte Carlo labels", "held-out answers"):
            a, b = by[("transformers", workload)], by[("vllm", workload)]
            speedup = b["tokens_per_second"] / a["tokens_per_second"]
            print(
                f"{workload}: vLLM / transformers generated tok/s = {speedup:.2f}x, seconds {a['seconds']} -> {b['seconds']}"
            )
            total["transformers"] += a["seconds"]
            total["vllm"] += b["seconds"]
        print(
            f"all workloads, vLLM's engine start included: {total['transformers']:.1f} s -> {total['vllm']:.1f} s "
            f"({total['transformers'] / total['vllm']:.2f}x)"
        )
    print("engines:", json.dumps(engines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": {"cpu": platform.processor(), "cores": os.cpu_count(), "torch": torch.__version__},
            "rows": rows,
            "engines": engines,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
