"""Quadratic weighted kappa from confusion matrices, vectorised over many matrices at once.

One formula for every kappa drgrade reports outside the training loop: the point estimate,
thousands of bootstrap resamples at once, and the cut-point search, which scores every
candidate cut point in one call. Same values as scikit-learn's
`cohen_kappa_score(weights="quadratic", labels=range(5))` (tests compare them), but on
(..., 5, 5) stacks instead of one pair of label lists at a time.
"""

from __future__ import annotations

import numpy as np

from drgrade.grades import NUM_GRADES

_GRADES = np.arange(NUM_GRADES)
_WEIGHTS = (_GRADES[:, None] - _GRADES[None, :]) ** 2


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(5, 5) counts: rows true grades, columns predicted grades."""
    pairs = np.asarray(truth, np.int64) * NUM_GRADES + np.asarray(predicted, np.int64)
    return np.bincount(pairs, minlength=NUM_GRADES**2).reshape(NUM_GRADES, NUM_GRADES)


def quadratic_kappa(confusions: np.ndarray) -> np.ndarray:
    """Quadratic weighted kappa of each (..., 5, 5) confusion matrix (NaN where undefined).

    Undefined means the expected disagreement is 0: no images, or one grade only on both
    sides. Matrices may hold weighted (bootstrap) counts.
    """
    confusions = np.asarray(confusions, dtype=np.float64)
    total = confusions.sum(axis=(-2, -1), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = confusions.sum(-1, keepdims=True) * confusions.sum(-2, keepdims=True) / total
        observed_cost = (_WEIGHTS * confusions).sum(axis=(-2, -1))
        expected_cost = (_WEIGHTS * expected).sum(axis=(-2, -1))
        return 1.0 - observed_cost / expected_cost


def kappa(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Quadratic weighted kappa of one set of grades (NaN where undefined)."""
    return float(quadratic_kappa(confusion_matrix(truth, predicted)))
