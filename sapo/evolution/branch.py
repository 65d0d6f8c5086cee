"""Branches: a run that begins with another run's finished phases, so that arms differ only after them.

An ablation or a baseline is only comparable with the run it is set beside when everything before the
change is the same: the same SFT start, the same samples, the same first verifier. Running each arm from
scratch would redo those phases (most of a run's time) and, on another machine or library version, could
make them differ. A branch copies them instead (``model.init_args.branch_from`` and ``branch_after``)::

    sapo fit --config configs/demo.yaml --config configs/ablations/rft.yaml \
        --model.init_args.branch_from runs/demo --model.init_args.branch_after samples_1

Copying is refused when a setting that a copied phase depends on (:func:`phase_settings`) differs between
the two runs: the branch would then hold phases that its own settings would not have made. The held-out
questions (``data.init_args.heldout_task``) are read by the evaluation phases alone, so a branch that copies
no ``eval_<t>`` may evaluate on other or more of them (branch after ``verifier_0`` rather than ``eval_0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sapo.evolution.backends import ADJUSTABLE
from sapo.evolution.distributed import ONE_PROCESS, Ranks
from sapo.evolution.run_directory import RunDirectory, RunMismatchError, read_manifest, setting_differences
from sapo.evolution.settings import FLAG

__all__ = ["COMPUTE_ONLY", "RERUN_ADJUSTABLE", "begin_branch", "phase_paths", "phase_settings"]

#: settings that change how a training phase computes, not what: the same values up to rounding, so a rerun
#: or a branch may change them after the phases they belong to
COMPUTE_ONLY = tuple(f"{FLAG}.{key}" for key in ("verifier.gradient_checkpointing", "orpo.shared_prefix"))

#: settings a rerun of a run may change or leave out: the engine's size (``ADJUSTABLE``), how training
#: computes (``COMPUTE_ONLY``), where the run began (read only before its first phase, when the copy is
#: made) and the run its report is set beside
RERUN_ADJUSTABLE = (
    *ADJUSTABLE,
    *COMPUTE_ONLY,
    *(f"{FLAG}.{key}" for key in ("branch_from", "branch_after", "compare_with")),
)


def phase_paths(phase: str) -> list[str]:
    """The artifacts of a phase of the loop, relative to its run directory (its logs included)."""
    kind, _, t = phase.partition("_")
    owned = {
        "sft": ["sft"],
        "samples": [f"samples_{t}.jsonl", f"samples_{t}.parts"],
        "labels": [f"labels_{t}.jsonl", f"dropped_{t}.jsonl", f"labels_{t}.parts"],
        "verifier": [f"verifier_{t}"],
        "search": [f"search_{t}.jsonl", f"search_{t}.parts"],  # SPHERE's (sapo.evolution.sphere)
        "corrections": [f"corrections_{t}.jsonl", f"corrections_{t}.parts"],
        "pairs": [f"pairs_{t}.jsonl"],
        "orpo": [f"iteration_{t}"],
        "eval": [f"heldout_{t}.jsonl"],
    }
    if kind not in owned:
        raise ValueError(f"{phase!r} is not a phase of the loop")
    return [*owned[kind], f"logs/phases/{phase}"]


#: the held-out questions: only the evaluation phases read them (the loop's training phases never see them),
#: so a branch that copies no evaluation may ask for other or more of them
HELDOUT = "data.init_args.heldout_task"


def phase_settings(phase: str) -> tuple[str, ...]:
    """The settings (dotted keys of the run's record) that a phase's artifacts depend on, through the
    phase itself and those before it: a branch may change the others after copying the phase."""
    kind, _, t = phase.partition("_")
    own = {
        "sft": (),
        "samples": ("sampling",),
        "labels": (
            "labelling.initial_strategy" if t == "0" else "labelling.strategy",
            "labelling.per_iteration",
        ),
        "verifier": ("verifier", "labelling.accumulate"),
        "search": ("search", "diversity"),
        "corrections": ("correction", "sampling"),
        "pairs": ("pairs",),
        "orpo": ("orpo",),
        "eval": ("evaluation",),
    }[kind]
    depends = ("data", *(f"{FLAG}.{key}" for key in ("reasoner", "seed", "sft", *own)))
    return (*depends, HELDOUT) if kind == "eval" else depends


def _depends(key: str, phases: Sequence[str]) -> bool:
    """Whether a difference at ``key`` would change one of the copied ``phases``."""
    for phase in phases:
        for prefix in phase_settings(phase):
            if key == prefix or key.startswith(f"{prefix}."):
                heldout = key == HELDOUT or key.startswith(f"{HELDOUT}.")
                if not heldout or HELDOUT in phase_settings(phase):
                    return True
    return False


def begin_branch(
    run: RunDirectory,
    source: Path,
    after: str,
    settings: dict[str, Any] | None,
    ranks: Ranks = ONE_PROCESS,
    defaults: dict[str, Any] | None = None,
) -> list[str]:
    """Copy the finished phases of the run in ``source``, through ``after``, into the empty ``run``; returns
    the phases copied. ``settings`` are the branch's (the source's are in its manifest): where both are
    known, a difference at a key that a copied phase depends on is refused, naming the keys; a setting the
    source's record lacks is no difference at its default in ``defaults``
    (:func:`~sapo.evolution.run_directory.setting_differences`). With several processes rank 0 copies and
    the others read the manifest once it has."""
    manifest = read_manifest(source)
    finished = list(manifest["phases"])
    if after not in finished:
        raise RunMismatchError(
            f"model.init_args.branch_after: {source} has not finished a phase {after!r}; its finished "
            f"phases: {', '.join(finished) or 'none'}"
        )
    phases = finished[: finished.index(after) + 1]
    if settings is not None and manifest.get("settings") is not None:
        changed = sorted(
            key
            for key in setting_differences(manifest["settings"], settings, defaults)
            if key not in ADJUSTABLE and key not in COMPUTE_ONLY and _depends(key, phases)
        )
        if changed:
            raise RunMismatchError(
                f"model.init_args.branch_from: the phases copied from {source} (through {after}) were made "
                f"with other settings than this run's, at: {', '.join(changed[:8])}; branch after an earlier "
                "phase, or use the same settings there"
            )
    if ranks.writer:
        run.copy_phases(source, phases, [path for phase in phases for path in phase_paths(phase)])
        print(f"[sapo] began {run.path} with {len(phases)} phases of {source} (through {after})")
    ranks.barrier()
    if not ranks.writer:
        run.manifest = read_manifest(run.path)
    return phases
