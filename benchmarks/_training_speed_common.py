"""What both children of benchmarks/training_speed.py report, in one format; imports neither sapo nor TRL
(each child runs in its own environment and has only torch, transformers and this file in common)."""

from __future__ import annotations

import json
import resource
from typing import Any

import torch
import transformers

#: the line a child prints last, followed by its JSON result
RESULT_MARKER = "TRAINING_SPEED_RESULT "


def onednn_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (avx512_bf16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def report(meter: Any, **fields: Any) -> None:
    """Print the result line: ``fields``, the environment, the meter's per-step records (``threads``,
    ``first_start``, ``steps``) and the process's peak resident set (``ru_maxrss``, unless ``fields`` gives
    ``peak_rss_gib``: a child that resets the peak to measure parts of a step must give it)."""
    result = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onednn_bf16": onednn_bf16(),
        "threads": meter.threads,
        "first_step_start": meter.first_start,
        "steps": meter.steps,
        # ru_maxrss is in KiB on Linux
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        **fields,
    }
    print(RESULT_MARKER + json.dumps(result, default=str), flush=True)
