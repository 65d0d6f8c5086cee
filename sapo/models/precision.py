"""The trainer precision a run should use on the machine it runs on.

``trainer.precision: bf16-mixed`` is the fast choice where bfloat16 is computed natively (a GPU, or a CPU with
avx512_bf16 or AMX), and a trap where it is not: on an AVX2-only CPU torch emulates bfloat16, far slower than
float32. The ``sapo`` command applies :func:`precision_on_this_machine` before it builds the trainer, so one
recipe runs well on both kinds of machine; a program that builds its own trainer can call it too.
"""

from __future__ import annotations

import torch

from sapo.models._options import computes_bfloat16_fast

__all__ = [
    "BFLOAT16_PRECISIONS",
    "EMULATED_BFLOAT16_CHOICES",
    "EMULATED_BFLOAT16_HELP",
    "precision_on_this_machine",
]

#: ``trainer.precision`` values that compute in bfloat16
BFLOAT16_PRECISIONS = frozenset({"bf16", "bf16-mixed", "bf16-true"})

#: what ``emulated_bfloat16`` may say: run float32 instead, or keep the recipe's bfloat16
EMULATED_BFLOAT16_CHOICES = ("float32", "keep")

EMULATED_BFLOAT16_HELP = (
    "What a bfloat16 trainer.precision (bf16-mixed, bf16-true) does when the trainer runs on a CPU without "
    "bfloat16 instructions (no avx512_bf16, no AMX: an AVX2-only CPU), where torch emulates bfloat16. "
    "float32 (the default): the run uses 32-true instead and says so on stderr; keep: bfloat16 as the "
    "recipe asks. A deviation from the recipe, because emulated bfloat16 is far slower than float32 "
    "rather than faster: on 2 cores of an AMD EPYC (Zen 3, AVX2), a 1024x1024 matrix product took 145x "
    "float32's time and a training step of SmolLM2-135M (one row of 64 tokens) under bf16 autocast 18x "
    "(benchmarks/emulated_bfloat16.py, 2026-12-07)."
)


def _runs_on_a_cpu(accelerator: object) -> bool:
    """Whether a trainer given the accelerator name ``accelerator`` runs on a CPU (``auto``: when no CUDA or
    MPS device is present); an accelerator object or class path is taken as not a CPU and left alone."""
    if accelerator is None or accelerator == "auto":
        gpu = torch.cuda.is_available() or (
            getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        )
        return not gpu
    return accelerator == "cpu"


def precision_on_this_machine(
    precision: object, accelerator: object, emulated_bfloat16: str = "float32"
) -> tuple[object, str | None]:
    """The ``trainer.precision`` a run should use here, and a note saying why when it is not ``precision``.

    A bfloat16 precision (:data:`BFLOAT16_PRECISIONS`) for a trainer on a CPU that lacks bfloat16
    instructions (:func:`~sapo.models.computes_bfloat16_fast` is false) becomes ``"32-true"`` when
    ``emulated_bfloat16`` is ``"float32"``; ``"keep"``, any other precision, or any other device keeps
    ``precision`` (see :data:`EMULATED_BFLOAT16_HELP` for the measurement).
    """
    if emulated_bfloat16 not in EMULATED_BFLOAT16_CHOICES:
        raise ValueError(
            f"emulated_bfloat16 must be one of {EMULATED_BFLOAT16_CHOICES}, got {emulated_bfloat16!r}"
        )
    if (
        emulated_bfloat16 == "keep"
        or str(precision) not in BFLOAT16_PRECISIONS
        or not _runs_on_a_cpu(accelerator)
        or computes_bfloat16_fast("cpu")
    ):
        return precision, None
    return "32-true", (
        f"trainer.precision {precision} runs as 32-true: this CPU has no bfloat16 instructions (no "
        "avx512_bf16, no AMX), and emulated bfloat16 is far slower than float32; set emulated_bfloat16: "
        "keep to run bfloat16 anyway"
    )
