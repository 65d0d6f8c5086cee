"""How much slower bfloat16 is than float32 on a CPU without bfloat16 instructions (no avx512_bf16, no AMX).

Usage: python benchmarks/emulated_bfloat16.py [--trials 2] [--tokens 64]

On such a CPU (an AVX2-only one: Zen 3, say) oneDNN has no bfloat16 kernels and torch emulates them, so
``trainer.precision: bf16-mixed`` (bfloat16 autocast), which is 1.8x faster than float32 on a CPU with
avx512_bf16, becomes far slower. This script measures what the ``sapo`` command's ``emulated_bfloat16``
setting avoids, on the packaged SmolLM2-135M-Instruct with two threads:

* a 1024 x 1024 matrix product in float32 and in bfloat16;
* a training step (forward and backward of one ``--tokens``-token row, labels = inputs) on float32 weights,
  without and with bfloat16 autocast;
* a decoding step (8 rows, one new token after ``--tokens`` cached ones) with float32 and bfloat16 weights.

The shapes are small because the emulated bfloat16 ones take minutes at the loop's sizes. Variants are
interleaved trial by trial and the best trial of each is reported (interference only slows a trial down).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from sapo.models import PACKAGED_SMOLLM2, computes_bfloat16_fast, load_backbone


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="tokens of the training row and of the cache")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    square = {
        dtype: torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0)).to(dtype)
        for dtype in (torch.float32, torch.bfloat16)
    }
    models = {
        dtype: load_backbone(PACKAGED_SMOLLM2, dtype=name)[0]
        for dtype, name in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16"))
    }
    row = torch.randint(
        0,
        models[torch.float32].config.vocab_size,
        (1, args.tokens),
        generator=torch.Generator().manual_seed(1),
    )
    rows = row.repeat(8, 1)

    def matmul(dtype):
        return lambda: square[dtype] @ square[dtype]

    def train_step(autocast: bool):
        model = models[torch.float32]

        def step():
            model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=row, labels=row).loss
            loss.backward()
            model.zero_grad(set_to_none=True)

        return step

    caches = {}

    def decode_step(dtype):
        model = models[dtype]

        def step():
            with torch.no_grad():
                if dtype not in caches:  # the prefill, outside the timing
                    caches[dtype] = model(input_ids=rows, use_cache=True).past_key_values
                cache = caches[dtype]
                length = cache.get_seq_length()
                model(input_ids=rows[:, :1], past_key_values=cache, use_cache=True)
                cache.crop(length)  # the same cache length every trial

        return step

    variants = {
        "matmul 1024^2 float32": matmul(torch.float32),
        "matmul 1024^2 bfloat16": matmul(torch.bfloat16),
        f"train step 1x{args.tokens} float32": train_step(False),
        f"train step 1x{args.tokens} bf16 autocast": train_step(True),
        "decode step 8 rows float32": decode_step(torch.float32),
        "decode step 8 rows bfloat16": decode_step(torch.bfloat16),
    }
    best = {name: float("inf") for name in variants}
    for trial in range(args.trials + 1):  # trial 0 warms every kernel up (and fills the caches)
        for name, fn in variants.items():
            seconds = timed(fn)
            if trial:
                best[name] = min(best[name], seconds)
            print(f"trial {trial} {name}: {seconds:.3f} s", flush=True)

    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, bfloat16 kernels: "
        f"{computes_bfloat16_fast('cpu')}, threads {torch.get_num_threads()}, best of {args.trials}\n"
    )
    print("| measurement | float32 (s) | bfloat16 (s) | bfloat16 / float32 |")
    print("|---|---|---|---|")
    names = list(variants)
    for fp32, bf16 in zip(names[::2], names[1::2], strict=True):
        label = fp32.removesuffix(" float32")
        print(f"| {label} | {best[fp32]:.3f} | {best[bf16]:.3f} | {best[bf16] / best[fp32]:.1f}x |")


if __name__ == "__main__":
    main()
