"""Verifier metrics: ProcessBench's first-error protocol, as pure functions and as torchmetrics states.

ProcessBench (Zheng et al., 2024) asks a critic for the index of the earliest wrong step of a solution, or
-1 when every step is right. A process reward model answers through a threshold τ on its step scores:
the prediction is the first step whose score falls below τ. Two accuracies are kept apart, because a model
that flags nothing is perfect on right solutions and useless on wrong ones:

    error_accuracy   = #{rows with label ≠ -1 and prediction = label} / #{rows with label ≠ -1}
    correct_accuracy = #{rows with label = -1 and prediction = -1}    / #{rows with label = -1}
    F1               = 2 · error_accuracy · correct_accuracy / (error_accuracy + correct_accuracy)

The pure functions serve evaluation scripts; the :class:`~torchmetrics.Metric` classes accumulate the same
counts over padded batches of ``(step scores, step labels, step mask)`` during training. A step label's
"wrong" is ``label < 0.5`` (the rule of :attr:`sapo.data.trajectory.Trajectory.first_error`), so soft labels
work too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchmetrics import Metric

from sapo.data.trajectory import NO_ERROR, first_error_of

__all__ = [
    "step_auroc",
    "detection_accuracy",
    "first_error_prediction",
    "first_error_indices",
    "processbench_f1",
    "harmonic_mean",
    "threshold_candidates",
    "choose_threshold",
    "FirstErrorAccuracy",
    "ProcessBenchF1",
]

LABEL_THRESHOLD = 0.5  # a step label below this marks the step as wrong


def first_error_prediction(scores: Sequence[float], threshold: float) -> int:
    """The predicted first wrong step: ``min{j : s_j < τ}``, or ``NO_ERROR`` (-1) when no score is below τ."""
    return first_error_of(scores, threshold)


def first_error_indices(values: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Row-wise :func:`first_error_prediction` on padded tensors.

    ``values`` and ``mask`` have shape ``(rows, steps)``; for row ``b`` the result is
    ``min{j : mask_bj and v_bj < τ}``, or -1 when no unmasked value is below ``τ``.
    """
    below = (values < threshold) & mask.bool()
    first = below.to(torch.int8).argmax(dim=1)  # argmax returns the first maximal index
    return torch.where(below.any(dim=1), first, torch.full_like(first, NO_ERROR))


def step_auroc(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[float]]) -> float | None:
    """Step-level AUROC: the chance that a right step scores above a wrong one, ties counting one half.

    ``AUROC = (1 / (P·N)) Σ_{i right} Σ_{j wrong} (1[s_i > s_j] + ½·1[s_i = s_j])`` over every step of every
    row, a step being wrong when its label is below 0.5. It reads the scores as a ranking only, so it does
    not depend on a threshold (the F1 does). ``None`` when either class has no step.
    """
    pooled = [
        (float(s), float(label) >= LABEL_THRESHOLD)
        for row_scores, row_labels in zip(scores, labels, strict=True)
        for s, label in zip(row_scores, row_labels, strict=True)
    ]
    positives = sum(right for _, right in pooled)
    negatives = len(pooled) - positives
    if not positives or not negatives:
        return None
    # rank sum of the right steps (Mann-Whitney U), with tied scores sharing their mean rank
    pooled.sort(key=lambda item: item[0])
    rank_sum, start = 0.0, 0
    while start < len(pooled):
        end = start
        while end < len(pooled) and pooled[end][0] == pooled[start][0]:
            end += 1
        mean_rank = (start + 1 + end) / 2
        rank_sum += mean_rank * sum(right for _, right in pooled[start:end])
        start = end
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def detection_accuracy(detected: Sequence[int], labels: Sequence[int], num_steps: Sequence[int]) -> dict:
    """How often a first-error detector finds the true first error, on the rows that have one.

    ``accuracy = #{label ≠ -1, detected = label} / #{label ≠ -1}``, beside ``random_step = (1 / #{label ≠
    -1}) Σ_{label ≠ -1} 1 / n_steps``: the expected accuracy of a step drawn uniformly, which is what the
    random-step ablation's detector scores. Returns both (0 over no rows) and ``rows``, the rows with an
    error.
    """
    if not len(detected) == len(labels) == len(num_steps):
        raise ValueError(f"{len(detected)} detections, {len(labels)} labels, {len(num_steps)} step counts")
    rows = [
        (d, label, n) for d, label, n in zip(detected, labels, num_steps, strict=True) if label != NO_ERROR
    ]
    if not rows:
        return {"accuracy": 0.0, "random_step": 0.0, "rows": 0}
    return {
        "accuracy": sum(d == label for d, label, _ in rows) / len(rows),
        "random_step": sum(1 / n for _, _, n in rows) / len(rows),
        "rows": len(rows),
    }


def harmonic_mean(a: float, b: float) -> float:
    """``2ab / (a + b)``, and 0 when either is 0 (so an empty or failed half gives F1 = 0)."""
    if a <= 0 or b <= 0:
        return 0.0
    return 2 * a * b / (a + b)


def processbench_f1(predictions: Sequence[int], labels: Sequence[int]) -> dict:
    """ProcessBench's scores from predicted and true first-error indices (-1: no error).

    Returns ``error_accuracy`` (exact-index accuracy on rows with ``label ≠ -1``), ``correct_accuracy``
    (rows with ``label = -1`` predicted -1), their harmonic mean ``f1`` (0 when either is 0), and the row
    counts ``num_error`` and ``num_correct``. An accuracy over no rows is 0.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    error_hits = error_rows = correct_hits = correct_rows = 0
    for prediction, label in zip(predictions, labels, strict=True):
        if label == -1:
            correct_rows += 1
            correct_hits += prediction == -1
        else:
            error_rows += 1
            error_hits += prediction == label
    return processbench_scores(error_hits, error_rows, correct_hits, correct_rows)


def processbench_scores(error_hits: int, error_rows: int, correct_hits: int, correct_rows: int) -> dict:
    """The two accuracies from their counts (an accuracy over no rows is 0), their harmonic mean ``f1``, and
    the row counts."""
    error_accuracy = error_hits / error_rows if error_rows else 0.0
    correct_accuracy = correct_hits / correct_rows if correct_rows else 0.0
    return {
        "error_accuracy": error_accuracy,
        "correct_accuracy": correct_accuracy,
        "f1": harmonic_mean(error_accuracy, correct_accuracy),
        "num_error": error_rows,
        "num_correct": correct_rows,
    }


def threshold_candidates(scores_per_row: Sequence[Sequence[float]]) -> list[float]:
    """Every threshold that yields a different set of predictions, one per interval.

    With distinct scores ``u_1 < … < u_m``, the predictions only change when ``τ`` crosses a score, so the
    candidates are ``u_1`` (no score below it: every row predicts -1), the midpoints ``(u_i + u_{i+1}) / 2``,
    and the next float above ``u_m`` (every row flagged at its first step).
    """
    distinct = sorted({float(s) for row in scores_per_row for s in row})
    if not distinct:
        return [0.5]
    middles = [(a + b) / 2 for a, b in zip(distinct, distinct[1:], strict=False)]
    return [distinct[0], *middles, math.nextafter(distinct[-1], math.inf)]


def choose_threshold(
    scores_per_row: Sequence[Sequence[float]],
    labels: Sequence[int],
    candidates: Sequence[float] | None = None,
) -> tuple[float, dict]:
    """The threshold ``τ* = argmax_τ F1(τ)`` on a (validation) set, and its :func:`processbench_f1` scores.

    ``labels`` are first-error indices (-1: no error). ``candidates`` defaults to
    :func:`threshold_candidates`. Ties in F1 go to the candidate nearest 0.5, then to the smaller one.
    """
    if len(scores_per_row) != len(labels):
        raise ValueError(f"{len(scores_per_row)} rows of scores for {len(labels)} labels")
    candidates = list(candidates) if candidates is not None else threshold_candidates(scores_per_row)
    if not candidates:
        raise ValueError("no candidate thresholds to choose from")
    best: tuple[float, dict] | None = None
    for tau in sorted(candidates, key=lambda t: (abs(t - 0.5), t)):
        result = processbench_f1([first_error_prediction(row, tau) for row in scores_per_row], labels)
        if best is None or result["f1"] > best[1]["f1"]:
            best = (float(tau), result)
    assert best is not None
    return best


class _FirstErrorMetric(Metric):
    """Shared update: predicted and true first-error indices of each row of a padded batch."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold

    def _indices(
        self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not scores.shape == labels.shape == mask.shape or scores.dim() != 2:
            raise ValueError(
                f"scores, labels and mask must share one (rows, steps) shape, got "
                f"{tuple(scores.shape)}, {tuple(labels.shape)}, {tuple(mask.shape)}"
            )
        predicted = first_error_indices(scores.detach(), mask, self.threshold)
        actual = first_error_indices(labels.detach(), mask, LABEL_THRESHOLD)
        return predicted, actual


class FirstErrorAccuracy(_FirstErrorMetric):
    """Fraction of rows whose predicted first error equals the labelled one, -1 included:
    ``#{b : ŷ_b = y_b} / B`` with ``ŷ_b = min{j : s_bj < τ}`` and ``y_b = min{j : label_bj < 0.5}`` (or -1).
    """

    higher_is_better = True

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(threshold, **kwargs)
        self.add_state("hits", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("rows", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> None:
        predicted, actual = self._indices(scores, labels, mask)
        self.hits += (predicted == actual).sum()
        self.rows += predicted.numel()

    def compute(self) -> torch.Tensor:
        return self.hits.float() / self.rows.clamp(min=1).float()


class ProcessBenchF1(_FirstErrorMetric):
    """ProcessBench's F1 (see the module docstring) at threshold ``τ``, accumulated over batches.

    :meth:`compute` returns F1; :meth:`compute_all` the same dict as :func:`processbench_f1`.
    """

    higher_is_better = True

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(threshold, **kwargs)
        for name in ("error_hits", "error_rows", "correct_hits", "correct_rows"):
            self.add_state(name, default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> None:
        predicted, actual = self._indices(scores, labels, mask)
        has_error = actual != -1
        hit = predicted == actual
        self.error_hits += (hit & has_error).sum()
        self.error_rows += has_error.sum()
        self.correct_hits += (hit & ~has_error).sum()
        self.correct_rows += (~has_error).sum()

    def compute_all(self) -> dict:
        return processbench_scores(
            int(self.error_hits), int(self.error_rows), int(self.correct_hits), int(self.correct_rows)
        )

    def compute(self) -> torch.Tensor:
        return torch.tensor(self.compute_all()["f1"], dtype=torch.float32)
