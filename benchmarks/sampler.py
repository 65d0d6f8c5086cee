"""Sampler throughput against plain batched ``generate`` on the same prompts, and where a batch's time goes.

Model: the packaged SmolLM2-135M-Instruct, in float32 and bfloat16. Prompts: synthetic arithmetic questions
(with few-shot examples, so the model writes "The answer is N" lines). Two workloads:

- **trajectories**: K samples of each question (the loop's sampling phase);
- **continuations**: k samples from each of several step prefixes of the gold solutions, several prefixes
  per question (the rollouts of the supervision strategies; the k rows of a prefix share it).

Two ways to run each, on the same rows with the same settings (temperature, top_p, token budget):

- **plain generate**: ``model.generate`` over the prompts in their given order, ``num_return_sequences``
  rows per prompt, left padding, EOS and the token budget the only stops;
- **sampler**: :class:`sapo.rollout.TaskRolloutSampler` (rows sorted by length, one ``generate`` call per
  batch, each row stopped after its answer line, outcomes checked by the task), with its shared prefill
  (the prefix common to a batch and each distinct prompt read once) and without it, and decoding under
  sapo's grouped eager attention (``decode_attention="auto"`` on a CPU) or under the model's own (sdpa).

Tokens are counted per row up to and including its last useful token (EOS, or the stop point): the plain
runs also generate past the answer, which counts as tokens but is waste, so compare the seconds too. Then
one batch of the sampler is profiled: prefill (one forward pass over the padded prompts), decoding, the stop
check, and the padding and idle-row waste.

    python benchmarks/sampler.py --quick                 # a small run that checks the script works
    python benchmarks/sampler.py                         # the full run (minutes on a CPU)
    python benchmarks/sampler.py --dtypes bf16 --questions 16 --samples 8 --prefix-k 8
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.data.trajectory import Cost
from sapo.models import PACKAGED_SMOLLM2, load_backbone
from sapo.rollout import (
    Sampler,
    TaskRolloutSampler,
    TransformersBackend,
    generate_batched,
    shared_prefill,
    task_stop_rule,
)
from sapo.supervision.protocols import Prefix

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


@dataclass
class Row:
    """One line of the results table."""

    dtype: str
    workload: str
    method: str
    sequences: int
    tokens: int
    seconds: float
    stopped: int | None = None

    def cells(self) -> list[str]:
        stopped = "" if self.stopped is None else f"{self.stopped}/{self.sequences}"
        return [
            self.dtype,
            self.workload,
            self.method,
            str(self.sequences),
            str(self.tokens),
            f"{self.seconds:.2f}",
            f"{self.tokens / self.seconds:.1f}",
            f"{self.sequences / self.seconds:.2f}",
            stopped,
        ]


HEADER = [
    "dtype",
    "workload",
    "method",
    "sequences",
    "gen. tokens",
    "seconds",
    "tok/s",
    "seq/s",
    "stopped at answer",
]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


@torch.no_grad()
def plain_generate(model, tokenizer, prompts, samples, args, seed) -> tuple[int, int, float]:
    """``model.generate`` with ``num_return_sequences``; returns (sequences, tokens to EOS, seconds)."""
    per_batch = max(1, args.batch_size // samples)
    eos = tokenizer.eos_token_id
    tokens = sequences = 0
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    started = time.perf_counter()
    try:
        for start in range(0, len(prompts), per_batch):
            enc = tokenizer(
                prompts[start : start + per_batch],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            out = model.generate(
                **enc,
                max_new_tokens=args.max_new_tokens,
                do_sample=True,
                temperature=args.temperature,
                top_p=args.top_p,
                top_k=0,
                num_return_sequences=samples,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
            )
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                tokens += next((k + 1 for k, t in enumerate(row) if t == eos), len(row))
                sequences += 1
    finally:
        tokenizer.padding_side = old_side
    return sequences, tokens, time.perf_counter() - started


def shared_prefixes(task: ArithmeticTask, questions, per_question: int) -> list[Prefix]:
    """Up to ``per_question`` prefixes of each gold solution (1 step, 2 steps, ...), never the whole of it."""
    prefixes = []
    for q in questions:
        gold = task.gold_trajectory(q)
        prefixes += [Prefix(gold, n) for n in range(1, min(per_question, gold.num_steps - 1) + 1)]
    return prefixes


def profile_one_batch(model, tokenizer, task, prompts, args) -> list[list[str]]:
    """Where the time of one sampler batch goes: prefill (shared, and what a plain left-padded prefill of the
    same rows costs), decoding, the stop check, padding, idle rows."""
    batch = prompts[: args.batch_size]
    settings = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=0
    )
    cost = Cost()
    started = time.perf_counter()
    generate_batched(
        model, tokenizer, batch, batch_size=len(batch), stop=task_stop_rule(task), cost=cost, **settings
    )
    total = time.perf_counter() - started
    encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
    started = time.perf_counter()
    shared_prefill(model, encoded, tokenizer.pad_token_id)
    shared_seconds = time.perf_counter() - started
    width = max(map(len, encoded))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    with torch.no_grad():
        started = time.perf_counter()
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        plain_seconds = time.perf_counter() - started
    steps = (cost.generated_tokens + cost.idle_row_steps) // max(1, cost.completions)
    decode = max(0.0, total - shared_seconds - cost.stop_check_seconds)
    share = lambda s: f"{100 * s / total:.0f}%"  # noqa: E731
    return [
        ["rows x decoding steps", f"{len(batch)} x {steps}", ""],
        [
            "prefill, shared (common prefix once, each distinct prompt once)",
            f"{shared_seconds:.3f} s, {cost.prefill_tokens} positions",
            share(shared_seconds),
        ],
        [
            "(a plain left-padded prefill of the same rows, for comparison)",
            f"{plain_seconds:.3f} s, {ids.numel()} positions",
            "",
        ],
        [
            "decoding (the rest of generate)",
            f"{decode:.3f} s ({1000 * decode / max(1, steps):.1f} ms/step)",
            share(decode),
        ],
        [
            "stop check (decode text, answer-line rule)",
            f"{cost.stop_check_seconds:.3f} s",
            share(cost.stop_check_seconds),
        ],
        [
            "padding in the shared prefill",
            f"{cost.padding_tokens} of {cost.prefill_tokens} positions",
            f"{100 * cost.padding_share:.0f}%",
        ],
        [
            "idle row-steps (rows already finished)",
            f"{cost.idle_row_steps} of {cost.idle_row_steps + cost.generated_tokens}",
            f"{100 * cost.idle_share:.0f}%",
        ],
    ]


#: the sampler's variants: (method, shared prefill, the attention ``generate`` decodes with)
SAMPLER_VARIANTS = [
    ("sampler, no shared prefill", False, "auto"),
    ("sampler, decoding under the model's attention (sdpa)", True, "model"),
    ("sampler", True, "auto"),
]


def sampler_rows(
    name, model, tokenizer, task, questions, prefixes, args, method, share_prefill, decode_attention
) -> list[Row]:
    """The sampler's two workloads, with or without the shared prefill, decoding under ``decode_attention``
    (``auto``: sapo's grouped eager attention on a CPU)."""
    backend = TransformersBackend(
        model, tokenizer, args.batch_size, share_prefill=share_prefill, decode_attention=decode_attention
    )
    sampler = Sampler(
        model,
        tokenizer,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=0,
        backend=backend,
        progress=True,
    )
    adapter = TaskRolloutSampler(sampler, task, questions)  # stops where the task says
    started = time.perf_counter()
    trajectories = adapter.sample_trajectories(questions, args.samples)
    cost = sampler.last_cost
    stopped = sum(t.meta["finish_reason"] == "stop" for t in trajectories)
    seconds = time.perf_counter() - started
    rows = [Row(name, "trajectories", method, cost.completions, cost.generated_tokens, seconds, stopped)]
    started = time.perf_counter()
    rollouts = adapter.rollouts(prefixes, args.prefix_k)
    cost = adapter.last_cost
    stopped = sum(r.meta["finish_reason"] == "stop" for rs in rollouts for r in rs)
    seconds = time.perf_counter() - started
    rows.append(Row(name, "continuations", method, cost.completions, cost.generated_tokens, seconds, stopped))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run that checks the script works (2 questions, K=k=2, 12 tokens, 0-shot)",
    )
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8, help="K trajectories per question")
    parser.add_argument("--prefixes", type=int, default=2, help="prefixes per question for continuations")
    parser.add_argument("--prefix-k", type=int, default=8, help="k continuations per prefix")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="rows per generate call")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--fewshot", type=int, default=2, help="gold examples in each prompt")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--cache-dir", default=None, help="sapo model cache (default: $SAPO_CACHE or ~/.cache/sapo)"
    )
    args = parser.parse_args()
    if args.quick:
        args.questions, args.samples, args.prefixes, args.prefix_k = 2, 2, 1, 2
        args.max_new_tokens, args.batch_size, args.fewshot = 12, 8, 0
    if args.threads:
        torch.set_num_threads(args.threads)

    task = ArithmeticTask(num_questions=args.questions, seed=0, num_fewshot=args.fewshot)
    questions = task.load()
    prefixes = shared_prefixes(task, questions, args.prefixes)
    rows: list[Row] = []
    profiles: dict[str, list[list[str]]] = {}
    for name in args.dtypes:
        model, tokenizer = load_backbone(PACKAGED_SMOLLM2, dtype=DTYPES[name], cache_dir=args.cache_dir)
        reference = TaskRolloutSampler(Sampler(model, tokenizer, progress=False), task, questions)
        question_prompts = [task.prompt(q, tokenizer) for q in questions]
        prefix_prompts = [reference.continuation_prompt(p) for p in prefixes]
        generate_batched(model, tokenizer, question_prompts[:1], max_new_tokens=4)  # warm-up

        plain = plain_generate(model, tokenizer, question_prompts, args.samples, args, 0)
        rows.append(Row(name, "trajectories", "plain generate", *plain))
        plain = plain_generate(model, tokenizer, prefix_prompts, args.prefix_k, args, 1)
        rows.append(Row(name, "continuations", "plain generate", *plain))
        for variant in SAMPLER_VARIANTS:
            rows += sampler_rows(name, model, tokenizer, task, questions, prefixes, args, *variant)

        repeated = [p for p in question_prompts for _ in range(args.samples)]
        profiles[name] = profile_one_batch(model, tokenizer, task, repeated, args)
        del model

    print(
        f"\nSmolLM2-135M-Instruct, {args.questions} questions x K={args.samples}; {len(prefixes)} prefixes x k={args.prefix_k}; "
        f"max_new_tokens={args.max_new_tokens}, batch {args.batch_size} rows, T={args.temperature}, top_p={args.top_p}, "
        f"{args.fewshot}-shot prompts, torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    rows.sort(key=lambda r: (args.dtypes.index(r.dtype), r.workload != "trajectories"))
    print(markdown(HEADER, [r.cells() for r in rows]))
    for name, profile in profiles.items():
        print(f"\nOne sampler batch ({name}), trajectories workload:\n")
        print(markdown(["part", "amount", "share"], profile))


if __name__ == "__main__":
    main()
