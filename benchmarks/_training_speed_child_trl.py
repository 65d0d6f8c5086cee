"""One TRL trainer of benchmarks/training_speed.py, in its own process and a TRL environment (run by the driver).

Usage: benchmarks/.venv-trl116/bin/python benchmarks/_training_speed_child_trl.py CONFIG.json   (ORPO)
       benchmarks/.venv-trl029/bin/python benchmarks/_training_speed_child_trl.py CONFIG.json   (PRM)

Never imports sapo: it runs in an environment that has TRL and not sapo. ``kind`` "orpo": TRL's ``ORPOTrainer``
(``trl.experimental.orpo`` in TRL 1.x) on rows ``{"prompt", "chosen", "rejected"}`` (strings) with
``AutoModelForCausalLM``; "prm": TRL's ``PRMTrainer`` (``trl.experimental.prm``, TRL 0.29) on rows
``{"prompt", "completions", "labels"}`` with ``AutoModelForTokenClassification`` (two labels, TRL's usage).
Batches come in file order (``train_sampling_strategy="sequential"``), like the sapo child's. Prints one line
``TRAINING_SPEED_RESULT {json}`` at the end, in the sapo child's format.

The settings where TRL's defaults differ from sapo's are set explicitly (see ``training_arguments``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from typing import Any

import torch
import transformers
import trl
from _training_speed_common import report
from datasets import Dataset
from torch.utils.data import SequentialSampler
from transformers import (
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    TrainerCallback,
)


def trl_classes(kind: str):
    """The config and trainer classes: under ``trl.experimental`` in TRL >= 0.2x, at the top level before."""
    if kind == "orpo":
        try:
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        except ImportError:
            from trl import ORPOConfig, ORPOTrainer
        return ORPOConfig, ORPOTrainer
    if kind == "prm":
        try:
            from trl.experimental.prm import PRMConfig, PRMTrainer
        except ImportError:
            from trl import PRMConfig, PRMTrainer
        return PRMConfig, PRMTrainer
    raise ValueError(f"unknown kind {kind!r}")


def training_arguments(config: dict[str, Any], config_class) -> dict[str, Any]:
    """TRL's settings, aligned with the sapo child's Lightning run.

    Where TRL's defaults differ: ``bf16`` (TRL turns it on when ``fp16`` is off), ``weight_decay`` (0 on both sides;
    TRL would also skip biases and norms), warm-up (none: TRL's linear schedule then equals sapo's
    ``warmup_ratio=0``), the sampler (random in TRL), logging (every 10 steps in TRL), saving (every 500 steps),
    ``report_to``, worker processes and pinned memory, the checkpointing mode (non-reentrant, as sapo's) and
    ``max_length`` (1024 in TRL). Keys the installed version does not know are dropped with a warning.
    """
    checkpointing = bool(config["gradient_checkpointing"])
    checkpointing_kwargs = {"use_reentrant": False} if checkpointing else None
    bf16 = config["precision"] == "bf16"
    wanted: dict[str, Any] = {
        "output_dir": config["output_dir"],
        "per_device_train_batch_size": config["batch_size"] // config.get("accumulate", 1),
        "gradient_accumulation_steps": config.get("accumulate", 1),
        "max_steps": config["steps"],
        "num_train_epochs": 1,
        "learning_rate": config["learning_rate"],
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "optim": "adamw_torch_fused",  # transformers' own default on torch >= 2.8, and sapo's (schedule.adamw)
        "weight_decay": config["weight_decay"],
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-8,
        "max_grad_norm": config["max_grad_norm"],
        "bf16": bf16,
        "fp16": False,
        "use_cpu": True,
        "gradient_checkpointing": checkpointing,
        "gradient_checkpointing_kwargs": checkpointing_kwargs,
        # transformers >= 5.20 names them activation_checkpointing*; the old names are deprecated aliases
        "activation_checkpointing": checkpointing,
        "activation_checkpointing_kwargs": checkpointing_kwargs,
        "train_sampling_strategy": "sequential",
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "dataloader_drop_last": False,
        "remove_unused_columns": False,
        "logging_strategy": "no",
        "logging_first_step": False,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "seed": config["seed"],
        "data_seed": config["seed"],
        "torch_compile": False,
        "use_liger_kernel": False,
        "include_num_input_tokens_seen": False,
        "max_length": config["max_length"],
        "max_completion_length": None,
        "disable_dropout": True,
        "dataset_num_proc": None,
    }
    if config["kind"] == "orpo":
        wanted["beta"] = config["orpo_beta"]
    else:
        wanted["step_separator"] = config["separator"]
        wanted["train_on_last_step_only"] = False
    known = {f.name for f in dataclasses.fields(config_class)}
    if "activation_checkpointing" not in known:  # transformers < 5.20: gradient_checkpointing* only
        wanted.pop("activation_checkpointing")
        wanted.pop("activation_checkpointing_kwargs")
    dropped = sorted(k for k in wanted if k not in known)
    if dropped:
        print(f"{config_class.__name__} of this version has no {dropped}: left at their defaults", flush=True)
    return {k: v for k, v in wanted.items() if k in known}


class StepMeter(TrainerCallback):
    """Per optimizer step: the time it ended (``on_step_end``: after backward, clipping, the optimizer and the
    scheduler step) and the tokens its batch fed the model (recorded by the trainer's ``training_step``)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.first_start: float | None = None
        self.threads: int | None = None
        self.pending: tuple[int, int] = (0, 0)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_start is None:
            self.first_start = time.perf_counter()
            self.threads = torch.get_num_threads()

    def on_step_end(self, args, state, control, **kwargs):
        tokens, positions = self.pending
        self.steps.append(
            {"step": state.global_step, "end": time.perf_counter(), "tokens": tokens, "positions": positions}
        )
        self.pending = (0, 0)


def batch_tokens(kind: str, inputs: dict[str, Any]) -> tuple[int, int]:
    """Non-padding tokens the model reads for this batch, and the positions it computes (padding included).

    ORPO: TRL pads chosen and rejected rows to one width and runs them as one batch of 2B rows, so the
    positions are ``2B * max(width)``; the tokens are both sides' attention-mask ones. PRM: the batch itself.
    """
    if kind == "orpo":
        chosen, rejected = inputs["chosen_attention_mask"], inputs["rejected_attention_mask"]
        tokens = int(chosen.sum()) + int(rejected.sum())
        positions = (chosen.shape[0] + rejected.shape[0]) * max(chosen.shape[1], rejected.shape[1])
        return tokens, positions
    mask = inputs["attention_mask"]
    return int(mask.sum()), mask.numel()


def counting_trainer(trainer_class, kind: str, meter: StepMeter, sequential: bool):
    """The trainer class with ``training_step`` counting each batch's tokens (one batch per optimizer step:
    no gradient accumulation); ``sequential`` also replaces the sampler, for versions without
    ``train_sampling_strategy``."""

    class Counting(trainer_class):
        def training_step(self, model, inputs, *args, **kwargs):
            tokens, positions = batch_tokens(kind, inputs)
            meter.pending = (meter.pending[0] + tokens, meter.pending[1] + positions)
            return super().training_step(model, inputs, *args, **kwargs)

        if sequential:

            def _get_train_sampler(self, *args, **kwargs):
                return SequentialSampler(self.train_dataset)

    Counting.__name__ = trainer_class.__name__
    return Counting


def main(config_path: str) -> None:
    with open(config_path) as fh:
        config = json.load(fh)
    torch.set_num_threads(int(config["threads"]))  # the driver also sets OMP_NUM_THREADS
    transformers.set_seed(config["seed"])
    kind = config["kind"]
    config_class, trainer_class = trl_classes(kind)
    arguments = training_arguments(config, config_class)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # deprecated checkpointing aliases
        args = config_class(**arguments)

    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with open(config["data"]) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if kind == "orpo":
        model = AutoModelForCausalLM.from_pretrained(config["model"], dtype=torch.float32)
    else:
        model = AutoModelForTokenClassification.from_pretrained(
            config["model"], dtype=torch.float32, num_labels=2
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if config["gradient_checkpointing"]:
        model.config.use_cache = False

    meter = StepMeter()
    sequential = "train_sampling_strategy" not in arguments
    trainer = counting_trainer(trainer_class, kind, meter, sequential)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[meter],
    )
    trainer.train()

    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    report(
        meter,
        trainer=f"TRL {trainer_class.__name__}",
        version=f"trl {trl.__version__}",
        global_step=trainer.state.global_step,
        precision="bf16 autocast" if args.bf16 else "fp32",
        gradient_checkpointing=bool(args.gradient_checkpointing),
        optimizer=type(optimizer).__name__,
        arguments={k: v for k, v in arguments.items() if k != "output_dir"},
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
