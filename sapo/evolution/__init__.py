"""The self-evolution loop: its settings, its data, the phases, the run directory that makes them
resumable, and the run's report."""

from sapo.evolution.data import LabelledData, SAPSDataModule, TaskPrompts
from sapo.evolution.loop import SelfEvolution
from sapo.evolution.run_directory import RunDirectory, RunMismatchError
from sapo.evolution.settings import (
    EvaluationSettings,
    LabellingSettings,
    ORPOSettings,
    PairSettings,
    SamplingSettings,
    SFTSettings,
    VerifierSettings,
)

__all__ = [
    "EvaluationSettings",
    "LabelledData",
    "LabellingSettings",
    "ORPOSettings",
    "PairSettings",
    "RunDirectory",
    "RunMismatchError",
    "SAPSDataModule",
    "SFTSettings",
    "SamplingSettings",
    "SelfEvolution",
    "TaskPrompts",
    "VerifierSettings",
]
