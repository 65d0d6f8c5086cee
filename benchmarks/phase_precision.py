"""Seconds per training step of the loop's phase trainers with ``precision: bf16-mixed`` on a CPU, the way
they were built before (the ``sapo fit`` trainer's accelerator object passed on: Lightning then set mixed
precision up for CUDA and the phases trained in float32) and now (the device type passed on: bf16 autocast).

Usage: python benchmarks/phase_precision.py [--steps 12] [--warmup 2] [--trials 2]

The demo's training phases on the packaged SmolLM2-135M-Instruct with LoRA (r 16, alpha 32): SFT (an
ORPOReasoner on gold arithmetic solutions, batches of 8) and the verifier (a PRMVerifier on the same
solutions labelled all correct). Both ways run in one process, interleaved trial by trial; each trial
times ``--steps`` optimizer steps after ``--warmup`` untimed ones, and the best trial of each is reported
(interference only slows a trial down).
"""

from __future__ import annotations

import argparse
import time

import lightning as L

from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.evolution import SAPSDataModule
from sapo.evolution.trainers import phase_trainer
from sapo.models import BackboneSpec, LoraSettings
from sapo.models.reasoner import ORPOReasoner
from sapo.models.verifier import PRMVerifier


class StepTimer(L.Callback):
    """Wall time of each optimizer step after the first ``warmup``."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self._last = None

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        now = time.perf_counter()
        if self._last is not None and trainer.global_step > self.warmup:
            self.times.append(now - self._last)
        self._last = now


def trainer(accelerator, steps: int, warmup: int) -> tuple[L.Trainer, StepTimer]:
    timer = StepTimer(warmup)
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision="bf16-mixed",
        max_steps=steps + warmup + 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    ), timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args()
    spec = BackboneSpec("smollm2-135m-instruct", lora=LoraSettings(r=16, alpha=32, dropout=0.05))
    template = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", logger=False)
    ways = {
        "before (accelerator object)": template.accelerator,
        "now (device type, as SelfEvolution builds it)": loop_accelerator(template),
    }
    task = ArithmeticTask(split="train", num_questions=400, min_steps=2, max_steps=4)
    best: dict[tuple[str, str], float] = {}
    for trial in range(args.trials):
        for phase in ("sft", "verifier"):
            for way, accelerator in ways.items():
                data = SAPSDataModule(task, batch_size=8, max_length=320)
                if phase == "sft":
                    module = ORPOReasoner(spec, learning_rate=2e-3)
                else:
                    module = PRMVerifier(spec, learning_rate=1e-3, max_length=320)
                    gold = data.gold_trajectories()
                    data = data.verifier_data(gold, module.collator)
                fit, timer = trainer(accelerator, args.steps, args.warmup)
                fit.fit(module, datamodule=data)
                per_step = sum(timer.times) / len(timer.times)
                best[(phase, way)] = min(best.get((phase, way), float("inf")), per_step)
                print(f"trial {trial} {phase:8s} {way}: {per_step:.2f} s/step", flush=True)
    print("\n| phase | before: s/step | now: s/step | speed-up |\n|---|---|---|---|")
    for phase in ("sft", "verifier"):
        before, now = (best[(phase, way)] for way in ways)
        print(f"| {phase} | {before:.2f} | {now:.2f} | {before / now:.2f}x |")


def loop_accelerator(template: L.Trainer):
    """The accelerator the loop's phase trainers get from ``template`` (read from one it builds)."""
    import tempfile
    from pathlib import Path

    phase = phase_trainer(template, Path(tempfile.mkdtemp()), "probe", epochs=1, gradient_clip=None)
    assert phase.precision_plugin.device == "cpu", phase.precision_plugin.device
    return template.strategy.root_device.type


if __name__ == "__main__":
    main()
