"""Decision thresholds fitted on validation, never on the split being scored.

- Regression cut points: 4 increasing cut points on the score that maximise quadratic
  weighted kappa (`fit_cut_points`). MSE regression with cut points tuned on validation for
  kappa beat cross-entropy on EyePACS (Kaggle 2015, 2nd place).
- The screening threshold: the highest referable-score threshold that still finds 90% of
  the referable eyes (`screening_threshold`).

numpy only: training, evaluation and the inference runtime all import it.
"""

from __future__ import annotations

import numpy as np

from drgrade.agreement import quadratic_kappa
from drgrade.errors import DrgradeError
from drgrade.grades import NUM_GRADES, REFERABLE_GRADE

DEFAULT_CUT_POINTS = (0.5, 1.5, 2.5, 3.5)
# A screening programme must find at least this share of referable eyes.
TARGET_SENSITIVITY = 0.90


def decode_scores(scores: np.ndarray, cut_points) -> np.ndarray:
    """Grades 0-4 from regression scores: the number of cut points below the score.

    A score equal to a cut point takes the lower grade (as torch.bucketize, right=False).
    """
    return np.searchsorted(np.asarray(cut_points, np.float64), scores, side="left")


def screening_threshold(grades: np.ndarray, referable_score: np.ndarray,
                        target: float = TARGET_SENSITIVITY) -> float | None:
    """The highest score threshold flagging >= `target` of the referable eyes (score >=
    threshold is flagged); None when the eyes are all referable or all not."""
    truth = np.asarray(grades) >= REFERABLE_GRADE
    if truth.all() or not truth.any():
        return None
    scores = np.sort(np.asarray(referable_score, np.float64)[truth])[::-1]
    # The k-th highest referable score flags at least k of them (ties flag more).
    needed = int(np.ceil(target * len(scores) - 1e-9))
    return float(scores[max(needed, 1) - 1])


class _SortedScores:
    """Validation scores sorted once, so the confusion matrix of any cut points costs O(25)."""

    def __init__(self, scores: np.ndarray, grades: np.ndarray):
        order = np.argsort(scores, kind="stable")
        self.scores = scores[order]
        onehot = np.eye(NUM_GRADES, dtype=np.int64)[grades[order]]
        # cumulative[k, g]: samples of grade g among the k lowest scores.
        self.cumulative = np.vstack([np.zeros(NUM_GRADES, np.int64), onehot.cumsum(0)])
        self.unique = np.unique(self.scores)

    def kappas(self, cuts: np.ndarray) -> np.ndarray:
        """QWK for each row of `cuts` (M, 4) of increasing cut points."""
        # Samples at or below a cut point are graded below it, as in decode_scores.
        below = np.searchsorted(self.scores, cuts, side="right")
        n = len(self.scores)
        bounds = np.hstack([np.zeros((len(cuts), 1), int), below, np.full((len(cuts), 1), n)])
        # (M, predicted grade, true grade) counts from the cumulative table; kappa is
        # symmetric in its two raters, so the transposed layout is fine.
        confusions = np.diff(self.cumulative[bounds], axis=1)
        return quadratic_kappa(confusions)

    def candidates(self, low: float, high: float) -> np.ndarray:
        """One cut point inside each gap between distinct scores that lies within (low, high)."""
        edges = np.concatenate([[-np.inf], self.unique, [np.inf]])
        left, right = np.maximum(edges[:-1], low), np.minimum(edges[1:], high)
        keep = left < right
        left, right = left[keep], right[keep]
        # Unbounded gaps (below or above every score) get a point 1 beyond the last score.
        return np.where(np.isinf(left), right - 1.0,
                        np.where(np.isinf(right), left + 1.0, (left + right) / 2))


def fit_cut_points(scores: np.ndarray, grades: np.ndarray) -> np.ndarray:
    """4 increasing cut points that maximise quadratic weighted kappa on validation scores.

    Coordinate search from DEFAULT_CUT_POINTS: each cut point in turn moves to the best gap
    between its neighbours, until none improves kappa. Every candidate of a move is scored
    in one vectorised call (benchmarks/RESULTS.md, "Cut-point search"). Returns the defaults
    when kappa is undefined (fewer than two grades present, or no samples).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    grades = np.asarray(grades).reshape(-1).astype(np.int64)
    if len(scores) != len(grades):
        raise ValueError(f"{len(scores)} scores but {len(grades)} grades")
    if not np.isfinite(scores).all():
        raise DrgradeError(
            "regression scores contain NaN or infinity: training diverged; lower --lr"
        )
    if grades.size and (grades.min() < 0 or grades.max() >= NUM_GRADES):
        raise ValueError(f"grades must lie in 0-{NUM_GRADES - 1}")
    cuts = np.array(DEFAULT_CUT_POINTS, dtype=np.float64)
    if len(np.unique(grades)) < 2:
        return cuts
    table = _SortedScores(scores, grades)
    best = table.kappas(cuts[None])[0]
    for _ in range(100):  # each pass raises kappa strictly, so this bound is rarely reached
        improved = False
        for i in range(len(cuts)):
            value, kappa = _best_move(table, cuts, i)
            # A margin keeps float noise from moving a cut point between equally good gaps.
            if kappa > best + 1e-12:
                cuts[i], best, improved = value, kappa, True
        if not improved:
            break
    return cuts


def _best_move(table: _SortedScores, cuts: np.ndarray, i: int) -> tuple[float, float]:
    """Best value for cut point i with the others fixed, and the kappa it gives."""
    low = cuts[i - 1] if i > 0 else -np.inf
    high = cuts[i + 1] if i + 1 < len(cuts) else np.inf
    options = table.candidates(low, high)
    trials = np.repeat(cuts[None], len(options), axis=0)
    trials[:, i] = options
    kappas = np.nan_to_num(table.kappas(trials), nan=-np.inf)
    j = int(np.argmax(kappas))
    return float(options[j]), float(kappas[j])
