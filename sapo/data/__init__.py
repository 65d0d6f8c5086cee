"""Data: trajectories and steps, tasks and their checkers, the sandbox, and the DataModules."""

from sapo.data.datamodule import SFTDataModule
from sapo.data.preference import PairCollator, PreferencePair
from sapo.data.steps import StepEncoding, encode_steps, join_steps, split_steps
from sapo.data.trajectory import Cost, Trajectory, TrajectoryFormatError, read_jsonl, write_jsonl

__all__ = [
    "Cost",
    "PairCollator",
    "PreferencePair",
    "SFTDataModule",
    "StepEncoding",
    "Trajectory",
    "TrajectoryFormatError",
    "encode_steps",
    "join_steps",
    "read_jsonl",
    "split_steps",
    "write_jsonl",
]

from sapo.data.batching import LengthGroupedBatchSampler
from sapo.data.pairs import build_pairs, rft_pairs, trajectory_reward, unpaired_correct
from sapo.data.prm import PRMCollator, PRMDataModule, PRMExample, read_labelled_trajectories, verifier_prompt

__all__ += ["PRMCollator", "PRMDataModule", "PRMExample", "read_labelled_trajectories", "verifier_prompt"]

__all__ += [
    "LengthGroupedBatchSampler",
    "build_pairs",
    "rft_pairs",
    "trajectory_reward",
    "unpaired_correct",
]
