"""The self-evolution loop: its settings, its data, the phases, the run directory that makes them
resumable, branches that begin with another run's phases, the run's report and the comparison of arms;
SPHERE's loop on the same phases."""

from sapo.evolution.branch import begin_branch
from sapo.evolution.compare import Arm, compare_arms, write_comparison
from sapo.evolution.data import LabelledData, SAPSDataModule, TaskPrompts
from sapo.evolution.loop import SelfEvolution
from sapo.evolution.run_directory import RunDirectory, RunMismatchError
from sapo.evolution.settings import (
    CorrectionSettings,
    DiversitySettings,
    EvaluationSettings,
    LabellingSettings,
    ORPOSettings,
    PairSettings,
    SamplingSettings,
    SearchSettings,
    SFTSettings,
    VerifierSettings,
)
from sapo.evolution.sphere import SphereEvolution

__all__ = [
    "Arm",
    "CorrectionSettings",
    "DiversitySettings",
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
    "SearchSettings",
    "SelfEvolution",
    "SphereEvolution",
    "TaskPrompts",
    "VerifierSettings",
    "begin_branch",
    "compare_arms",
    "write_comparison",
]
