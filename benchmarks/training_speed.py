"""Training speed of sapo's trainers against TRL's on the same data, model and settings, on this CPU.

Two pairs, each trained for the same number of optimizer steps from the same starting weights:

* ORPO: sapo's ``ORPOReasoner`` (a LightningModule, ``lightning.Trainer``) against TRL 1.16's ``ORPOTrainer``
  (``trl.experimental.orpo``);
* PRM: sapo's ``PRMVerifier`` against TRL 0.29.1's ``PRMTrainer`` (``trl.experimental.prm``; TRL 1.x has none).

The model is the packaged SmolLM2-135M-Instruct as sapo converts and caches it (the driver resolves the
checkpoint folder with sapo's code and every child loads that folder), fully fine-tuned: float32 weights, bf16
autocast (``--precision 32`` for CPUs without native bf16), gradient checkpointing on both sides (off with
``--no-gradient-checkpointing``), AdamW (``torch.optim.AdamW``'s fused kernel on both sides) with the same peak
learning rate, no warm-up and a linear decay to 0, no weight decay, the same gradient clipping, batch size, number of steps and
maximum length, gradient accumulation 1, no evaluation, no checkpoints, logging off. sapo's trainers hand the
heap a step freed back after each step, and drop its gradients right after the optimizer step, as the loop's
phases do (``sapo.callbacks.ReleaseFreedHeap``; off with ``--no-release-heap``, gradients kept until the next
forward pass with ``--no-free-gradients``); TRL's run as shipped.

Data, prepared once as JSONL files in a temporary folder: ``--rows`` questions of sapo's synthetic arithmetic
task (train split). ORPO pairs: the chat-templated prompt sapo's collator uses, chosen = the gold steps, rejected
= the gold steps with one equation's result changed and the later equations (and the answer) recomputed from
it. PRM trajectories: even rows gold (every step correct), odd rows corrupted that way (correct up to the error,
wrong from it on), in sapo's format and TRL's stepwise format (prompt, completions, labels), same prompt and
step separator. Both sides read the rows in file order (no shuffle), so they train on the same batches.

Each trainer runs in its own subprocess, one after the other (sapo's with sapo's venv, TRL's with its own venv:
TRL never enters sapo's environment), with ``--threads`` torch threads (default: the cores this process may use)
and the Hugging Face hub offline. Measured per trainer, after ``--warmup`` untimed steps: the wall time from
the end of the last warm-up step to the end of the last step (data loading, forward, backward, clipping,
optimizer and scheduler step; model loading and data preparation excluded), the tokens trained in those steps
(non-padding tokens of the data: chosen + rejected sides for ORPO, each side counted whole even where sapo
computes the prefix the sides share once; the whole sequence for PRM), tokens/s, seconds per step, and the process's peak resident memory (the whole process, loading included; for sapo's
trainers also each part of a step's own peak: forward, backward, clipping with the optimizer step).

Usage::

    bash benchmarks/trl_envs.sh                               # once: benchmarks/.venv-trl116 and .venv-trl029
    .venv/bin/python benchmarks/training_speed.py --smoke     # 3 steps on 24 rows: checks it all runs
    .venv/bin/python benchmarks/training_speed.py [--steps 20 --batch-size 8 --max-length 320 --rows 160
        --precision bf16 --out benchmarks/results/training_speed.json]
    # sapo's ORPO alone on a loop round's own rows, in the loop's batches, with and without shared prefixes
    .venv/bin/python benchmarks/training_speed.py --only sapo-orpo --sapo-pairs runs/demo/pairs_1.jsonl
        [--no-shared-prefix]

Results depend on the machine (bf16 kernels need avx512_bf16 or AMX), so the output names the CPU, its flags and
the torch version of each environment. Each child's log is kept next to ``--out`` (``<out stem>-logs/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _training_speed_common import RESULT_MARKER

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAPO_CHILD = HERE / "_training_speed_child_sapo.py"
TRL_CHILD = HERE / "_training_speed_child_trl.py"

#: trainer name: (kind, side, python of its environment)
TRAINERS: dict[str, tuple[str, str, Path]] = {
    "sapo-orpo": ("orpo", "sapo", Path(sys.executable)),
    "trl-orpo": ("orpo", "trl", HERE / ".venv-trl116" / "bin" / "python"),
    "sapo-prm": ("prm", "sapo", Path(sys.executable)),
    "trl-prm": ("prm", "trl", HERE / ".venv-trl029" / "bin" / "python"),
}

#: peak learning rates: sapo's defaults (ORPOReasoner 8e-5, PRMVerifier 5e-5), used by both sides
DEFAULT_LEARNING_RATE = {"orpo": 8e-5, "prm": 5e-5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per trainer")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per step (pairs for ORPO)")
    parser.add_argument(
        "--accumulate",
        type=int,
        default=1,
        help="micro-batches per optimizer step, each of batch-size / accumulate rows (Lightning's "
        "accumulate_grad_batches, TRL's gradient_accumulation_steps)",
    )
    parser.add_argument(
        "--max-length", type=int, default=320, help="tokens per sequence (prompt + completion)"
    )
    parser.add_argument("--rows", type=int, default=160, help="questions of the arithmetic task")
    parser.add_argument(
        "--precision",
        choices=("bf16", "32"),
        default="bf16",
        help="bf16: float32 weights with bf16 autocast; 32: float32 throughout",
    )
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--release-heap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sapo's trainers hand freed heap back after each step (sapo.callbacks.ReleaseFreedHeap), as the "
        "loop's phases do; TRL's run as shipped",
    )
    parser.add_argument(
        "--free-gradients",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --release-heap: sapo's trainers drop a step's gradients right after the optimizer step "
        "(ReleaseFreedHeap's free_gradients), not after the next forward pass as Lightning does",
    )
    parser.add_argument(
        "--release-every-n-steps",
        type=int,
        default=1,
        help="with --release-heap: the optimizer steps between two trims (ReleaseFreedHeap's every_n_steps)",
    )
    parser.add_argument(
        "--train-embeddings",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sapo's ORPO reasoner trains its token embeddings and tied output head (ORPOReasoner's "
        "train_embeddings, the loop's orpo.train_embeddings); TRL's always does",
    )
    parser.add_argument(
        "--moment-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="how sapo's ORPO reasoner stores AdamW's moments (ORPOReasoner's moment_dtype, the loop's "
        "orpo.moment_dtype); TRL's keeps them in float32",
    )
    parser.add_argument(
        "--sapo-pairs",
        type=Path,
        default=None,
        help="sapo's ORPO trains on this PreferencePair JSONL (a loop round's pairs_<t>.jsonl: pairs beside "
        "rows without a rejected side) in the loop's batches (length-grouped, seeded with --seed), instead of "
        "the generated pairs; TRL's ORPO cannot train rows without a rejected side, so it does not run with this",
    )
    parser.add_argument(
        "--shared-prefix",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sapo's ORPO computes both sides of a pair in one pass, their common prefix once (ORPOReasoner's "
        "shared_prefix, the loop's orpo.shared_prefix); TRL's has a pass per side",
    )
    parser.add_argument(
        "--attention",
        default=None,
        help="sapo's attention implementation (BackboneSpec.attention: sdpa, eager, sapo_grouped_eager); "
        "default: transformers' choice (sdpa); TRL's keeps transformers' choice",
    )
    parser.add_argument(
        "--prm-lora",
        action="store_true",
        help="sapo's PRM trains a LoRA adapter (r 16, alpha 32, dropout 0.05, every linear layer: SIPF's, the "
        "demo's verifier) and its head instead of the whole model; TRL's PRM does not run with this",
    )
    parser.add_argument("--orpo-lr", type=float, default=DEFAULT_LEARNING_RATE["orpo"])
    parser.add_argument("--prm-lr", type=float, default=DEFAULT_LEARNING_RATE["prm"])
    parser.add_argument(
        "--orpo-beta",
        type=float,
        default=0.1,
        help="weight of ORPO's odds-ratio term (sapo's orpo_weight, TRL's beta)",
    )
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping; 0 turns it off")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads of each child (default: the cores this process may use)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="smollm2-135m-instruct (sapo's cached conversion) or a checkpoint folder",
    )
    parser.add_argument(
        "--only",
        default=",".join(TRAINERS),
        help=f"comma-separated trainers to run, in this order (default: {','.join(TRAINERS)})",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one child may take")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "training_speed.json")
    parser.add_argument("--smoke", action="store_true", help="3 steps on 24 rows: checks the whole run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.rows = 3, 24
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in TRAINERS]
    if unknown:
        parser.error(f"unknown trainer(s) {unknown}; known: {list(TRAINERS)}")
    if args.steps < 1 or args.batch_size < 1 or args.rows < 1 or args.threads < 1:
        parser.error("--steps, --batch-size, --rows and --threads must be >= 1")
    if args.accumulate < 1 or args.batch_size % args.accumulate:
        parser.error(f"--accumulate must be >= 1 and divide --batch-size {args.batch_size}")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.prm_lora and "trl-prm" in args.only:
        parser.error("--prm-lora trains sapo's PRM alone; pass --only without trl-prm")
    if args.sapo_pairs is not None:
        if not args.sapo_pairs.is_file():
            parser.error(f"--sapo-pairs: no file {args.sapo_pairs}")
        if "trl-orpo" in args.only:
            parser.error(
                "--sapo-pairs: TRL's ORPOTrainer cannot train rows without a rejected side; pass --only"
            )
    if args.warmup >= args.steps:
        print(f"--warmup {args.warmup} leaves no step of {args.steps} to time: timing every step instead")
        args.warmup = 0
    return args


# ------------------------------------------------------------------------------------------------ the model


def resolve_model(name_or_folder: str) -> Path:
    """The checkpoint folder every child loads: sapo's cached conversion of the packaged SmolLM2 (converted
    once, here, when the cache lacks it), or a folder given as it is."""
    folder = Path(name_or_folder).expanduser()
    if folder.is_dir():
        return folder.resolve()
    from sapo.models._gguf import PACKAGED_SMOLLM2, _ensure_packaged_smollm2
    from sapo.models.backbone import default_cache_dir

    if name_or_folder != PACKAGED_SMOLLM2:
        raise SystemExit(f"--model: {name_or_folder!r} is neither {PACKAGED_SMOLLM2!r} nor a folder")
    folder, built = _ensure_packaged_smollm2(default_cache_dir())
    if built:
        print(f"converted {PACKAGED_SMOLLM2} into {folder} (once)")
    return folder


# ------------------------------------------------------------------------------------------------- the data


_EQUATION = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else a}[op]


def corrupted_steps(steps: list[str], error: int, rng: random.Random) -> list[str]:
    """``steps`` with equation ``error``'s result off by 1-3, the later equations that use the wrong value
    recomputed from it, and a wrong final answer (so every step from ``error`` on is wrong, as the PRM labels
    say). Equations are ``"a op b = c"`` with the running value as ``a`` (a group total as ``b``); the last
    step is ``"The answer is N."``."""
    out = list(steps)
    parsed = [_EQUATION.match(step) for step in out[:-1]]
    if parsed[error] is None:
        raise ValueError(f"not an equation: {out[error]!r}")
    a, op, b, c = parsed[error].groups()
    gold, wrong = int(c), int(c) + rng.randint(1, 3)
    out[error] = f"{a} {op} {b} = {wrong}"
    for j in range(error + 1, len(parsed)):
        if parsed[j] is None:
            continue
        a, op, b, c = parsed[j].groups()
        if int(a) == gold:  # the running value goes on
            gold, wrong, out[j] = int(c), _apply(wrong, op, int(b)), f"{wrong} {op} {b} = {{}}"
        elif int(b) == gold and op in "+-":  # a wrong group total ("3 * 6 = 19") is added or taken away
            gold, wrong, out[j] = int(c), _apply(int(a), op, wrong), f"{a} {op} {wrong} = {{}}"
        else:
            continue  # a group step ("3 * 6 = 18") starts: it does not use the running value
        out[j] = out[j].format(wrong)
    answer = re.search(r"\d+", out[-1])
    gold_answer = int(answer.group()) if answer else gold
    out[-1] = f"The answer is {wrong if wrong != gold_answer else gold_answer + 1}."
    return out


def loop_ordered_pairs(
    source: Path, data_dir: Path, folder: Path, separator: str, max_length: int, batch_size: int, seed: int
) -> tuple[str, dict[str, int]]:
    """``source``'s preference pairs in the order the loop's ORPO phase reads them (length-grouped batches of
    ``batch_size``, :class:`~sapo.data.batching.LengthGroupedBatchSampler` seeded with ``seed``; the child
    reads its file in order), as the sapo ORPO child's file; returns it and its row counts."""
    from transformers import AutoTokenizer

    from sapo.data.batching import LengthGroupedBatchSampler
    from sapo.data.datamodule import pair_lengths
    from sapo.data.preference import PairCollator, read_pairs
    from sapo.data.trajectory import write_jsonl

    pairs = read_pairs(source)
    collator = PairCollator(AutoTokenizer.from_pretrained(folder), separator, max_length)
    batches = LengthGroupedBatchSampler(pair_lengths(pairs, collator), batch_size, seed=seed).batches()
    ordered = [pairs[i] for batch in batches for i in batch]
    counts = {"rows": len(pairs), "with_rejected": sum(p.rejected is not None for p in pairs)}
    return str(write_jsonl(ordered, data_dir / "orpo_sapo_given.jsonl")), counts


def prepare_data(folder: Path, data_dir: Path, rows: int, seed: int) -> dict[str, Any]:
    """Write the four JSONL files (ORPO and PRM, sapo's and TRL's formats); returns a summary."""
    from transformers import AutoTokenizer

    from sapo.data.preference import PreferencePair
    from sapo.data.steps import join_steps
    from sapo.data.tasks.arithmetic import ArithmeticTask
    from sapo.data.trajectory import Trajectory, prefix_labels, to_trl_stepwise, write_jsonl

    tokenizer = AutoTokenizer.from_pretrained(folder)
    task = ArithmeticTask(split="train", num_questions=rows, seed=seed)
    separator = task.separator
    rng = random.Random(f"training-speed/{seed}")
    pairs, trl_pairs, trajectories, trl_rows = [], [], [], []
    for i, question in enumerate(task.load()):
        prompt = task.prompt(question, tokenizer)  # what sapo's SFT and ORPO phases train on
        gold = task.split_steps(question.solution)
        error = rng.randrange(len(gold) - 1)  # an equation, never the answer line
        wrong = corrupted_steps(gold, error, rng)
        pairs.append(PreferencePair(question.id, prompt, gold, wrong))
        trl_pairs.append(
            {
                "prompt": prompt,
                "chosen": join_steps(gold, separator),
                "rejected": join_steps(wrong, separator),
            }
        )
        steps, first_error = (gold, -1) if i % 2 == 0 else (wrong, error)
        trajectory = Trajectory(
            question_id=question.id,
            question=question.question,
            steps=list(steps),
            outcome=first_error == -1,
            labels=prefix_labels(len(steps), first_error),
            label_source="benchmark",
            gold_answer=question.answer,
            meta={"prompt": prompt},
        )
        trajectories.append(trajectory)
        trl_row = to_trl_stepwise(trajectory)
        trl_row["prompt"] = prompt  # TRL reads the prompt as it is: give it the chat-templated one sapo uses
        trl_rows.append(trl_row)
    files = {
        "sapo-orpo": write_jsonl(pairs, data_dir / "orpo_sapo.jsonl"),
        "trl-orpo": write_jsonl(trl_pairs, data_dir / "orpo_trl.jsonl"),
        "sapo-prm": write_jsonl(trajectories, data_dir / "prm_sapo.jsonl"),
        "trl-prm": write_jsonl(trl_rows, data_dir / "prm_trl.jsonl"),
    }
    return {
        "rows": rows,
        "separator": separator,
        "files": {name: str(path) for name, path in files.items()},
        "prm_with_error": sum(1 for t in trajectories if t.outcome is False),
    }


# ------------------------------------------------------------------------------------------------ the runs


def child_environment(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TRL_EXPERIMENTAL_SILENCE="1",
        TOKENIZERS_PARALLELISM="false",
        WANDB_DISABLED="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_child(name: str, config: dict[str, Any], work: Path, log_dir: Path, timeout: float) -> dict[str, Any]:
    """Run one trainer in its own process; returns its result, or ``{"error": ...}``."""
    kind, side, python = TRAINERS[name]
    if not python.exists():
        return {"error": f"no {python}: run `bash benchmarks/trl_envs.sh` first"}
    config_path = work / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=2))
    script = SAPO_CHILD if side == "sapo" else TRL_CHILD
    log_path = log_dir / f"{name}.log"
    started = time.perf_counter()
    print(f"== {name}: {python} {script.name} (log: {log_path})", flush=True)
    with log_path.open("w") as log:
        try:
            process = subprocess.run(
                [str(python), str(script), str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_environment(config["threads"]),
                cwd=ROOT,
                timeout=timeout,
            )
            returncode = process.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    text = log_path.read_text(errors="replace")
    seconds = time.perf_counter() - started
    results = [line[len(RESULT_MARKER) :] for line in text.splitlines() if line.startswith(RESULT_MARKER)]
    if returncode != 0 or not results:
        tail = "\n".join(text.splitlines()[-30:])
        why = "timed out" if returncode is None else f"exit code {returncode}"
        print(f"   {name} failed ({why}); last lines of its log:\n{tail}", flush=True)
        return {"error": f"{why}; see {log_path}", "process_seconds": round(seconds, 1)}
    result = json.loads(results[-1])
    result["process_seconds"] = round(seconds, 1)
    return result


def summarise(result: dict[str, Any], warmup: int) -> dict[str, Any]:
    """The steady figures from a child's per-step records: steps ``warmup + 1 .. N``, timed from the end of
    step ``warmup`` (from the start of step 1 when ``warmup`` is 0) to the end of step N."""
    steps = result["steps"]
    if len(steps) <= warmup:
        return {"error": f"only {len(steps)} steps recorded"}
    if len(steps) != result.get("global_step"):
        print(f"   warning: {len(steps)} steps timed, but the trainer reports {result.get('global_step')}")
    start = steps[warmup - 1]["end"] if warmup else result["first_step_start"]
    timed = steps[warmup:]
    seconds = timed[-1]["end"] - start
    tokens = sum(s["tokens"] for s in timed)
    positions = sum(s["positions"] for s in timed)
    durations = []
    previous = result["first_step_start"]
    for s in steps:
        durations.append(round(s["end"] - previous, 4))
        previous = s["end"]
    return {
        "timed_steps": len(timed),
        "timed_seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / len(timed), 3),
        "tokens": tokens,
        "tokens_per_step": round(tokens / len(timed), 1),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "padding_share": round(1 - tokens / positions, 4) if positions else None,
        "step_seconds": durations,
    }


# --------------------------------------------------------------------------------------------- the machine


def cpu_info() -> dict[str, Any]:
    """The CPU's model and the flags that decide bf16 speed."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2")
    return {
        "model": model,
        "cores_usable": len(os.sched_getaffinity(0)),
        "flags": {flag: flag in flags for flag in wanted},
    }


def memory_environment() -> dict[str, str]:
    """The allocator's and the CPU kernel caches' settings in this process's environment (children inherit
    them): they move speed and peak memory. The ``sapo`` command sets the kernel caches; these children do not."""
    from sapo.callbacks import KERNEL_CACHE_VARIABLES

    return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k in KERNEL_CACHE_VARIABLES}


def torch_info() -> dict[str, Any]:
    import torch

    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    return {"torch": torch.__version__, "onednn_bf16": bf16}


# ---------------------------------------------------------------------------------------------------- main


def markdown_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "| trainer | version | steps | tokens/s | s/step | tokens/step | padding | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        if "error" in result:
            lines.append(f"| {name} | {result.get('version', '?')} | failed: {result['error']} | | | | | |")
            continue
        pad = result["padding_share"]
        lines.append(
            f"| {name} | {result['version']} | {result['timed_steps']} of {args.steps} "
            f"| {result['tokens_per_second']:.0f} | {result['seconds_per_step']:.2f} "
            f"| {result['tokens_per_step']:.0f} | {'?' if pad is None else f'{100 * pad:.1f}%'} "
            f"| {result['peak_rss_gib']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    machine = {"cpu": cpu_info(), "sapo_env": torch_info(), "python": platform.python_version()}
    flags = machine["cpu"]["flags"]
    print(
        f"CPU: {machine['cpu']['model']} ({machine['cpu']['cores_usable']} usable cores); "
        + ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in flags.items())
    )
    print(f"sapo env: torch {machine['sapo_env']['torch']}, oneDNN bf16 {machine['sapo_env']['onednn_bf16']}")
    if args.precision == "bf16" and not machine["sapo_env"]["onednn_bf16"]:
        print(
            "warning: this CPU has no native bf16 (avx512_bf16/AMX): bf16 autocast is emulated; try --precision 32"
        )
    folder = resolve_model(args.model)
    print(f"model: {folder}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = args.out.with_name(f"{args.out.stem}-logs")
    log_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="sapo-training-speed-") as tmp:
        work = Path(tmp)
        data = prepare_data(folder, work, args.rows, args.seed)
        print(
            f"data: {args.rows} ORPO pairs and {args.rows} PRM trajectories ({data['prm_with_error']} with an "
            f"error) in {work}"
        )
        if args.sapo_pairs is not None:
            data["files"]["sapo-orpo"], data["sapo_pairs"] = loop_ordered_pairs(
                args.sapo_pairs, work, folder, data["separator"], args.max_length, args.batch_size, args.seed
            )
            counts = data["sapo_pairs"]
            print(
                f"sapo-orpo trains on {args.sapo_pairs}: {counts['rows']} rows, {counts['with_rejected']} with a "
                "rejected side"
            )
        for name in args.only:
            kind, side, _ = TRAINERS[name]
            config = {
                "kind": kind,
                "model": str(folder),
                "data": data["files"][name],
                "steps": args.steps,
                "batch_size": args.batch_size,
                "accumulate": args.accumulate,
                "max_length": args.max_length,
                "learning_rate": args.orpo_lr if kind == "orpo" else args.prm_lr,
                "orpo_beta": args.orpo_beta,
                "weight_decay": 0.0,
                "max_grad_norm": args.max_grad_norm,
                "precision": args.precision,
                "gradient_checkpointing": args.gradient_checkpointing,
                "train_embeddings": args.train_embeddings,
                "moment_dtype": args.moment_dtype,
                "shared_prefix": args.shared_prefix,
                "attention": args.attention,
                "prm_lora": args.prm_lora,
                "release_heap": args.release_heap,
                "free_gradients": args.free_gradients,
                "release_every_n_steps": args.release_every_n_steps,
                "threads": args.threads,
                "seed": args.seed,
                "separator": data["separator"],
                "output_dir": str(work / f"{name}-output"),
            }
            result = run_child(name, config, work, log_dir, args.timeout)
            if "error" not in result:
                result.update(summarise(result, args.warmup))
                print(
                    f"   {name}: {result.get('tokens_per_second')} tokens/s, {result.get('seconds_per_step')} "
                    f"s/step, peak RSS {result['peak_rss_gib']:.2f} GiB, {result['threads']} threads",
                    flush=True,
                )
            results[name] = result

    table = markdown_table(results, args)
    print()
    print(
        f"{args.steps} steps ({args.warmup} warm-up, untimed) of {args.batch_size} rows "
        f"({args.accumulate} micro-batch{'es' if args.accumulate > 1 else ''}), max_length "
        f"{args.max_length}, precision {args.precision}, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}, sapo's heap release after each step "
        f"{'on' if args.release_heap else 'off'} (every {args.release_every_n_steps} steps; gradients dropped "
        "after the step: "
        f"{'yes' if args.release_heap and args.free_gradients else 'no'}), {args.threads} threads"
    )
    print(table)
    for name, result in results.items():
        if "error" not in result:
            print(
                f"{name}: torch {result['torch']} (oneDNN bf16 {result['onednn_bf16']}), "
                f"transformers {result['transformers']}"
            )
            if "memory" in result:  # sapo's children: each part's own peak
                parts = ", ".join(f"{part} {gib:.2f}" for part, gib in result["memory"].items())
                print(f"{name}: peak resident GiB by part: {parts}")
    record = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine,
        "environment": memory_environment(),
        "model": str(folder),
        "data": {k: v for k, v in data.items() if k != "files"},
        "results": results,
        "table": table,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
