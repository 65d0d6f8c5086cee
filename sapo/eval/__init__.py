"""Evaluation metrics."""

from sapo.eval.best_of_n import AGGREGATES, BestOfNTable, best_of_n_table, majority_vote, weighted_vote
from sapo.eval.labels import LabelAgreement, label_agreement
from sapo.eval.pass_at_k import mean_pass_at_k, pass_at_k
from sapo.eval.processbench import (
    FirstErrorScores,
    VerifierEvaluation,
    evaluate_on_oracle,
    evaluate_processbench,
    read_processbench,
)
from sapo.eval.reasoner import EvalResult, evaluate_reasoner, paired_difference, sample_and_check
from sapo.models.verifier_metrics import (
    FirstErrorAccuracy,
    ProcessBenchF1,
    choose_threshold,
    first_error_indices,
    first_error_prediction,
    processbench_f1,
)

__all__ = [
    "AGGREGATES",
    "BestOfNTable",
    "EvalResult",
    "FirstErrorScores",
    "LabelAgreement",
    "VerifierEvaluation",
    "best_of_n_table",
    "evaluate_on_oracle",
    "evaluate_processbench",
    "evaluate_reasoner",
    "label_agreement",
    "paired_difference",
    "majority_vote",
    "mean_pass_at_k",
    "pass_at_k",
    "read_processbench",
    "sample_and_check",
    "weighted_vote",
    "FirstErrorAccuracy",
    "ProcessBenchF1",
    "choose_threshold",
    "first_error_indices",
    "first_error_prediction",
    "processbench_f1",
]
