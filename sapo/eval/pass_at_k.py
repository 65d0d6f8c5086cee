"""The unbiased pass@k estimator (Chen et al., 2021), vectorised over problems.

A problem sampled ``n`` times with ``c`` correct samples has

    pass@k = 1 − C(n − c, k) / C(n, k)

the chance that ``k`` samples drawn without replacement from the ``n`` hold at least one correct one. The
binomial coefficients overflow floats for large ``n``, so it is computed as the equivalent product

    C(n − c, k) / C(n, k) = ∏_{i = n − c + 1}^{n} (1 − k / i)

which is exactly 1 − pass@k whenever ``n − c ≥ k``; when ``n − c < k`` every draw of ``k`` holds a correct
sample and pass@k = 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["mean_pass_at_k", "pass_at_k"]


def pass_at_k(num_samples: int | Sequence[int], num_correct: int | Sequence[int], k: int) -> np.ndarray:
    """pass@k of every problem: ``1 − ∏_{i = n − c + 1}^{n} (1 − k / i)``, or 1 when ``n − c < k``.

    Args:
        num_samples: ``n`` per problem (one number is shared by all problems).
        num_correct: ``c`` per problem, ``0 ≤ c ≤ n``.
        k: samples drawn, ``1 ≤ k ≤ n`` for every problem.

    Returns:
        A float64 array with one value per problem (shape of the broadcast inputs; 0-d for scalars).
    """
    n, c = np.broadcast_arrays(
        np.asarray(num_samples, dtype=np.int64), np.asarray(num_correct, dtype=np.int64)
    )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if np.any(c < 0) or np.any(c > n):
        raise ValueError("every num_correct must lie in [0, num_samples]")
    if np.any(k > n):
        raise ValueError(f"pass@{k} needs at least {k} samples per problem; the fewest given is {n.min()}")
    flat_n, flat_c = n.reshape(-1), c.reshape(-1)
    width = int(flat_c.max(initial=0))
    offsets = np.arange(width)
    # row p, column j: i = n_p − c_p + 1 + j for j < c_p (the product's factors), 1 elsewhere
    i = (flat_n - flat_c + 1)[:, None] + offsets[None, :]
    factors = np.where(offsets[None, :] < flat_c[:, None], 1.0 - k / i, 1.0)
    none_correct = np.prod(factors, axis=1)
    values = np.where(flat_n - flat_c < k, 1.0, 1.0 - none_correct)
    return values.reshape(n.shape)


def mean_pass_at_k(
    num_samples: int | Sequence[int], num_correct: Sequence[int], ks: Iterable[int]
) -> dict[int, float]:
    """The mean over problems of :func:`pass_at_k` for each ``k`` in ``ks``: ``{k: (1/P) Σ_p pass@k_p}``."""
    if len(num_correct) == 0:
        raise ValueError("pass@k of no problems")
    return {k: float(np.mean(pass_at_k(num_samples, num_correct, k))) for k in ks}
