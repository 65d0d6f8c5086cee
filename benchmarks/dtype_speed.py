"""fp32 vs bf16 for SmolLM2-135M-Instruct on this CPU: greedy generate tokens/s and seconds per training step.

Usage: python benchmarks/dtype_speed.py [--lora] [--trials 5]
The machine may be shared, so the variants are interleaved trial by trial and the best trial of each is
reported (interference only ever slows a trial down).
Generate: 32 new tokens (min_new_tokens forces the length), greedy; batch 1 and batch 8 chat prompts.
Train: one AdamW step (forward, backward, step) on a 4 x 256 random-token batch, labels = inputs.
"""

import argparse
import time

import torch

from sapo.models import LoraSettings, load_backbone

parser = argparse.ArgumentParser()
parser.add_argument("--lora", action="store_true")
parser.add_argument("--trials", type=int, default=5)
args = parser.parse_args()
lora = LoraSettings() if args.lora else None

models = {}
for weights in ("float32", "bfloat16"):
    model, tokenizer = load_backbone("smollm2-135m-instruct", dtype=weights, lora=lora)
    models[weights] = model
tokenizer.padding_side = "left"
variants = {  # name: (model, autocast to bf16)
    "float32": ("float32", False),
    "bfloat16": ("bfloat16", False),
    "float32+bf16-autocast": ("float32", True),
}
optimizers = {
    name: torch.optim.AdamW([p for p in models[w].parameters() if p.requires_grad], lr=1e-5)
    for name, (w, _) in variants.items()
}
batches = {}
for size in (1, 8):
    chats = [[{"role": "user", "content": f"Write a short story about cat number {i}."}] for i in range(size)]
    batches[size] = tokenizer.apply_chat_template(
        chats, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    )
tokens = torch.randint(0, len(tokenizer), (4, 256), generator=torch.Generator().manual_seed(0))


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def generate(model, size, autocast):
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model.generate(**batches[size], max_new_tokens=32, min_new_tokens=32, do_sample=False)


def train_step(model, optimizer, autocast):
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


best = {name: {"gen1": float("inf"), "gen8": float("inf"), "train": float("inf")} for name in variants}
for trial in range(args.trials + 1):  # trial 0 warms up every kernel
    for name, (weights, autocast) in variants.items():
        model = models[weights]
        for size in (1, 8):
            seconds = timed(generate, model, size, autocast)
            if trial:
                best[name][f"gen{size}"] = min(best[name][f"gen{size}"], seconds)
        seconds = timed(train_step, model, optimizers[name], autocast)
        if trial:
            best[name]["train"] = min(best[name]["train"], seconds)

print(f"lora={args.lora} threads={torch.get_num_threads()} trials={args.trials} (best of each)")
for name, result in best.items():
    print(
        f"{name:>22}: generate {32 / result['gen1']:6.1f} tok/s (batch 1), {8 * 32 / result['gen8']:6.1f} tok/s"
        f" (batch 8); train step 4x256 {result['train']:5.2f} s"
    )
