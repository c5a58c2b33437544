"""Is model B better than model A on the same images? Paired bootstrap and DeLong's test.

No maintained DeLong package was found on PyPI (the two there are small one-author
projects), so the fast DeLong of Sun & Xu (2014) is written here on scipy's midranks; the
tests check it against the structural components computed pair by pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from drgrade.errors import DrgradeError
from drgrade.evaluation.intervals import (
    LEVEL,
    RESAMPLES,
    Interval,
    check_inputs,
    interval,
    resample_metrics,
    resample_weights,
)
from drgrade.grades import REFERABLE_GRADE

COMPARED = ("accuracy", "quadratic_weighted_kappa", "referable_auc")
SHOWN_IDS = 10  # an error names this many missing image ids, then counts the rest


@dataclass(frozen=True)
class Difference:
    """Model B minus model A on one metric: both values, the paired interval, DeLong's p."""

    a: float | None
    b: float | None
    difference: Interval
    p_value: float | None = None

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or below 0 (a difference beyond chance)."""
        low, high = self.difference.low, self.difference.high
        return low is not None and (low > 0 or high < 0)

    def __str__(self) -> str:
        estimate = self.difference.estimate
        text = "n/a" if estimate is None else f"{estimate:+.3f}"
        if self.difference.low is not None:
            text += f" [{self.difference.low:+.3f}, {self.difference.high:+.3f}]"
        return text + (f", DeLong p = {self.p_value:.3g}" if self.p_value is not None else "")

    def as_dict(self) -> dict:
        """The comparison as a JSON file stores it."""
        return {"a": self.a, "b": self.b, **self.difference.as_dict(),
                "excludes_zero": self.excludes_zero, "p_value": self.p_value}


def _missing(ids: pd.Index, name: str, other: str) -> str:
    shown = ", ".join(map(str, ids[:SHOWN_IDS]))
    more = f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
    return f"{len(ids)} image(s) in {name} but not in {other}: {shown}{more}"


def align_predictions(a: pd.DataFrame, b: pd.DataFrame, key: str = "image",
                      names: tuple[str, str] = ("A", "B")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two prediction tables with rows in the same image order (A's), index reset.

    Raises DrgradeError naming the images only one of them has, or any image listed twice.
    """
    for table, name in zip((a, b), names, strict=True):
        if key not in table:
            raise DrgradeError(f"{name} has no '{key}' column to match images by")
        repeated = table[key][table[key].duplicated()]
        if len(repeated):
            raise DrgradeError(f"{name} lists image ids more than once ({len(repeated)} extra "
                               "rows): "
                               + ", ".join(map(str, repeated.unique()[:SHOWN_IDS])))
    ids_a, ids_b = pd.Index(a[key]), pd.Index(b[key])
    only_a, only_b = ids_a.difference(ids_b, sort=False), ids_b.difference(ids_a, sort=False)
    problems = [_missing(ids, name, other) for ids, name, other
                in ((only_a, *names), (only_b, *names[::-1])) if len(ids)]
    if problems:
        raise DrgradeError("the two models were scored on different images:\n  "
                           + "\n  ".join(problems))
    aligned = b.set_index(key).loc[ids_a].reset_index()
    return a.reset_index(drop=True), aligned[b.columns]


def delong_covariance(positive: np.ndarray,
                      scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K,) ROC AUCs of (K, N) scores and their (K, K) DeLong covariance (fast DeLong).

    Needs two positives and two negatives at least.
    """
    positive = np.asarray(positive, bool)
    scores = np.atleast_2d(np.asarray(scores, np.float64))
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise DrgradeError(f"DeLong's test needs 2 positives and 2 negatives, got {m} and {n}")
    # Midranks among positives, among negatives and among all give each image's structural
    # component (share of the other class it outranks, ties half) without the m x n pairs.
    pos, neg = scores[:, positive], scores[:, ~positive]
    ranks = rankdata(np.hstack([pos, neg]), axis=1)
    v10 = (ranks[:, :m] - rankdata(pos, axis=1)) / n
    v01 = 1 - (ranks[:, m:] - rankdata(neg, axis=1)) / m
    aucs = v10.mean(1)
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def delong_test(positive: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> float | None:
    """Two-sided p-value of DeLong's test that two correlated ROC AUCs are equal.

    None where undefined: fewer than 2 images of a class, or the AUC difference has no
    variance (e.g. the same scores twice). DeLong treats images as independent; the paired
    bootstrap of `compare_models` is the one that keeps a patient's eyes together.
    """
    positive = np.asarray(positive, bool)
    if min(positive.sum(), (~positive).sum()) < 2:
        return None
    aucs, cov = delong_covariance(positive, np.vstack([score_a, score_b]))
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if variance <= 0:
        return None
    return float(2 * norm.sf(abs(aucs[1] - aucs[0]) / np.sqrt(variance)))


def compare_models(truth: np.ndarray, predicted_a: np.ndarray, score_a: np.ndarray,
                   predicted_b: np.ndarray, score_b: np.ndarray,
                   patients: np.ndarray | None = None, resamples: int = RESAMPLES,
                   seed: int = 0, level: float = LEVEL) -> dict[str, Difference]:
    """B - A in accuracy, quadratic kappa and referable AUC on the same, aligned images.

    Paired: each resample draws one set of patients and scores both models on it, so the
    interval of the difference is much narrower than the two intervals side by side.
    """
    n_images = check_inputs(truth, [predicted_a, predicted_b], [score_a, score_b])
    ones = np.ones((1, n_images), np.float32)
    full_a = resample_metrics(truth, predicted_a, score_a, ones)
    full_b = resample_metrics(truth, predicted_b, score_b, ones)
    differences = {name: [] for name in COMPARED}
    for weights in resample_weights(patients, n_images, resamples, seed):
        metrics_a = resample_metrics(truth, predicted_a, score_a, weights)
        metrics_b = resample_metrics(truth, predicted_b, score_b, weights)
        for name in COMPARED:
            differences[name].append(metrics_b[name] - metrics_a[name])
    p_auc = delong_test(np.asarray(truth) >= REFERABLE_GRADE, score_a, score_b)
    result = {}
    for name in COMPARED:
        a, b = float(full_a[name][0]), float(full_b[name][0])
        result[name] = Difference(
            a=None if np.isnan(a) else a, b=None if np.isnan(b) else b,
            difference=interval(b - a, np.concatenate(differences[name]), level),
            p_value=p_auc if name == "referable_auc" else None)
    return result
