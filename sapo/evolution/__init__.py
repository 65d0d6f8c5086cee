"""The self-evolution loop: phases, the run directory that makes them resumable, and the run's report."""

from sapo.evolution.loop import SelfEvolution, save_reasoner
from sapo.evolution.run_directory import RunDirectory, RunMismatchError

__all__ = ["RunDirectory", "RunMismatchError", "SelfEvolution", "save_reasoner"]
