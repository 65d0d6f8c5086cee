"""One sapo trainer of benchmarks/training_speed.py, in its own process (run by the driver, not by hand).

Usage: python benchmarks/_training_speed_child_sapo.py CONFIG.json

``kind`` "orpo": ``ORPOReasoner`` on preference pairs (``PreferencePair`` JSONL) through sapo's ``PairCollator``;
"prm": ``PRMVerifier`` on labelled trajectories (``Trajectory`` JSONL, the prompt in ``meta["prompt"]``),
encoded once beforehand as ``PRMDataModule`` does. Batches come in file order (no shuffle), so the TRL child
trains on the same batches. Prints one line ``TRAINING_SPEED_RESULT {json}`` at the end: per-step end times and
token counts, the thread count seen during training, versions and the peak RSS.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

import lightning as L
import torch
from _training_speed_common import report
from torch.utils.data import DataLoader

import sapo
from sapo.callbacks import ReleaseFreedHeap
from sapo.data.preference import PairCollator, read_pairs
from sapo.data.prm import encode_labelled, read_labelled_trajectories
from sapo.evolution.memory import PhaseMemory
from sapo.models.backbone import BackboneSpec, LoraSettings
from sapo.models.reasoner import ORPOReasoner
from sapo.models.verifier import PRMVerifier


def main(config_path: str) -> None:
    with open(config_path) as fh:
        config = json.load(fh)
    torch.set_num_threads(int(config["threads"]))  # the driver also sets OMP_NUM_THREADS
    L.seed_everything(config["seed"], workers=True)
    loading = PhaseMemory()
    loading.start()
    spec = BackboneSpec(
        config["model"],
        dtype="float32",
        device="cpu",
        gradient_checkpointing=config["gradient_checkpointing"],
        attention=config.get("attention"),
    )
    kind = config["kind"]
    if kind == "orpo":
        module = ORPOReasoner(
            spec,
            orpo_weight=config["orpo_beta"],
            learning_rate=config["learning_rate"],
            weight_decay=config["weight_decay"],
            warmup_ratio=0.0,
            train_embeddings=config.get("train_embeddings", True),
            moment_dtype=config.get("moment_dtype", "float32"),
            shared_prefix=config.get("shared_prefix", True),
        )
        items = read_pairs(config["data"])
        collate = PairCollator(module.tokenizer, config["separator"], config["max_length"])
    elif kind == "prm":
        if config.get("prm_lora"):
            spec = replace(spec, lora=LoraSettings(r=16, alpha=32, dropout=0.05, target_modules="all-linear"))
        module = PRMVerifier(
            spec,
            loss="bce",
            learning_rate=config["learning_rate"],
            weight_decay=config["weight_decay"],
            warmup_ratio=0.0,
            separator=config["separator"],
            max_length=config["max_length"],
            prompt=lambda trajectory: trajectory.meta["prompt"],
        )
        items = encode_labelled(read_labelled_trajectories(config["data"]), module.collator)
        collate = module.collator.pad
    else:
        raise ValueError(f"unknown kind {kind!r}")
    accumulate = config.get("accumulate", 1)
    loader = DataLoader(
        items, batch_size=config["batch_size"] // accumulate, shuffle=False, collate_fn=collate, num_workers=0
    )

    meter = StepMeter(kind)
    meter.memory["after_load"] = loading.summary()["peak_rss_gib"]
    precision = "bf16-mixed" if config["precision"] == "bf16" else "32-true"
    clip = config["max_grad_norm"] or None
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=config["steps"],
        max_epochs=-1,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=clip,
        gradient_clip_algorithm="norm",
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=max(1, config["steps"]),
        default_root_dir=config["output_dir"],
        # the meter first: its step's peak is read before the heap is trimmed
        callbacks=(
            [
                meter,
                ReleaseFreedHeap(
                    every_n_steps=config.get("release_every_n_steps", 1),
                    free_gradients=config.get("free_gradients", True),
                ),
            ]
            if config.get("release_heap")
            else [meter]
        ),
    )
    trainer.fit(module, train_dataloaders=loader)

    report(
        meter,
        trainer=f"sapo {type(module).__name__}",
        version=f"sapo {sapo.__version__} (lightning {L.__version__})",
        global_step=trainer.global_step,
        precision=precision,
        gradient_checkpointing=config["gradient_checkpointing"],
        memory=meter.memory,
        # the parts' peaks reset the kernel's high-water mark, which ru_maxrss reads too
        peak_rss_gib=max(meter.memory.values()),
    )


class StepMeter(L.Callback):
    """Per optimizer step: the time it ended and the tokens its micro-batches fed the model.

    The ``on_train_batch_end`` that finds the global step advanced comes after backward, clipping and the
    optimizer and scheduler steps (automatic optimisation), so the interval between two such ends is one
    whole step, data loading and every accumulated micro-batch included. Tokens are the attention-mask ones
    (for ORPO: the chosen sides, and the rejected sides of the rows that have one); positions are all
    entries, padding included. Memory: the process's peak resident set (GiB) while loading the model and,
    over all steps, in each part of a step (forward, backward, clipping + optimizer step; with accumulation,
    each micro-batch's forward and backward), each part's peak measured on its own.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.steps: list[dict[str, float]] = []
        self.first_start: float | None = None
        self.threads: int | None = None
        self._pending: tuple[int, int] = (0, 0)
        self._recorded_step = 0
        self.memory: dict[str, float] = {"forward": 0.0, "backward": 0.0, "optimizer_step": 0.0}
        self._part = PhaseMemory()

    def _part_ends(self, part: str) -> None:
        self.memory[part] = max(self.memory[part], self._part.summary()["peak_rss_gib"])
        self._part.start()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._part_ends("forward")

    def on_after_backward(self, trainer, pl_module) -> None:
        self._part_ends("backward")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_start is None:
            self.first_start = time.perf_counter()
            self.threads = torch.get_num_threads()
        if self.kind == "orpo":
            # the collator holds rejected sides for the rows that have one only
            masks = [batch[k] for k in ("chosen_attention_mask", "rejected_attention_mask") if k in batch]
        else:
            masks = [batch["attention_mask"]]
        tokens, positions = self._pending
        self._pending = (
            tokens + sum(int(m.sum()) for m in masks),
            positions + sum(m.numel() for m in masks),
        )
        self._part.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._part_ends("optimizer_step")
        if trainer.global_step == self._recorded_step:  # a micro-batch accumulated; no step yet
            return
        self._recorded_step = trainer.global_step
        tokens, positions = self._pending
        self._pending = (0, 0)
        self.steps.append(
            {
                "step": trainer.global_step,
                "end": time.perf_counter(),
                "tokens": tokens,
                "positions": positions,
            }
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
