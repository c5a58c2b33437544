"""Bootstrap confidence intervals that resample patients, vectorised over the resamples.

A resample is a row of image weights: how often each image's patient was drawn. Every
metric of thousands of resamples then comes from a few array operations (one matmul for all
confusion matrices, one sort for all ROC AUCs) instead of a Python loop per resample.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from drgrade.agreement import quadratic_kappa
from drgrade.errors import DrgradeError
from drgrade.grades import NUM_GRADES, REFERABLE_GRADE

RESAMPLES = 2000
LEVEL = 0.95
# Resamples drawn and scored together: (200, N) float64 temporaries stay at 16 MB for
# 10,000 images. Changing it changes which resamples a seed draws.
CHUNK = 200
REFERABLE_KEYS = ("referable_sensitivity", "referable_specificity", "referable_auc",
                  "threshold_sensitivity", "threshold_specificity")


@dataclass(frozen=True)
class Interval:
    """A metric on the full sample with its bootstrap percentile interval (None: undefined)."""

    estimate: float | None
    low: float | None
    high: float | None

    def __str__(self) -> str:
        if self.estimate is None:
            return "n/a"
        if self.low is None:
            return f"{self.estimate:.3f} [n/a]"
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def as_dict(self) -> dict[str, float | None]:
        """The interval as metrics.json stores it."""
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def interval(estimate: float, samples: np.ndarray, level: float = LEVEL) -> Interval:
    """Percentile interval of bootstrap `samples`, leaving out resamples where it is undefined."""
    if math.isnan(estimate):
        return Interval(None, None, None)
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return Interval(float(estimate), None, None)
    low, high = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(estimate), float(low), float(high))


def clusters(patients: np.ndarray | None, n_images: int) -> np.ndarray:
    """(N,) index of each image's patient, 0..P-1; each image its own without patient ids."""
    if patients is None:
        return np.arange(n_images)
    codes, _ = pd.factorize(np.asarray(patients))
    if len(codes) != n_images:
        raise DrgradeError(f"{len(codes)} patient ids for {n_images} images")
    if (codes < 0).any():
        raise DrgradeError(f"{int((codes < 0).sum())} image(s) have no patient id; give every "
                           "image one, or none to resample images")
    return codes


def resample_weights(patients: np.ndarray | None, n_images: int, resamples: int = RESAMPLES,
                     seed: int = 0) -> Iterator[np.ndarray]:
    """Bootstrap image weights in (<= CHUNK, N) float32 blocks, `resamples` rows in all.

    Each row draws as many patients as there are, with replacement; an image's weight is
    how often its patient was drawn, so both eyes of a patient always travel together.
    """
    if resamples < 1:
        raise DrgradeError(f"resamples must be at least 1, not {resamples}")
    cluster = clusters(patients, n_images)
    n_clusters = int(cluster.max()) + 1 if n_images else 0
    if not n_clusters:
        raise DrgradeError("no images to resample")
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, CHUNK):
        rows = min(CHUNK, resamples - start)
        drawn = rng.integers(0, n_clusters, size=(rows, n_clusters))
        # One bincount for the block: each row's draws are offset into a range of their own.
        drawn += n_clusters * np.arange(rows)[:, None]
        counts = np.bincount(drawn.ravel(), minlength=rows * n_clusters)
        # Small integers are exact in float32, and float32 halves the matmul's time.
        yield counts.reshape(rows, n_clusters)[:, cluster].astype(np.float32)


def weighted_auc(positive: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R,) ROC AUC of each row of (R, N) weights; tied scores count half (NaN: one class)."""
    order = np.argsort(score, kind="stable")
    ranked = score[order]
    # Images with equal scores form one group: its negatives count half for its positives.
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    weights = weights[:, order].astype(np.float64)
    is_positive = np.asarray(positive, bool)[order]
    pos = np.add.reduceat(weights * is_positive, starts, axis=1)
    neg = np.add.reduceat(weights * ~is_positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(divide="ignore", invalid="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerator / denominator


def resample_metrics(truth: np.ndarray, predicted: np.ndarray, referable_score: np.ndarray,
                     weights: np.ndarray, threshold: float | None = None,
                     probabilities: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each metric of each row of (R, N) image weights, as (R,) arrays (NaN where undefined).

    Macro F1 averages the grades present in `truth` (the full sample), as metrics.py does,
    so a resample that lacks a grade scores 0 on it rather than averaging fewer grades.
    The one-vs-rest AUC (with `probabilities`) averages the same grades' AUCs, over those
    a resample has both inside and outside.
    """
    truth, predicted = np.asarray(truth, np.int64), np.asarray(predicted, np.int64)
    score = np.asarray(referable_score, np.float64)
    referable = truth >= REFERABLE_GRADE
    # One weighted count per column: the 25 confusion cells, then the threshold's hits.
    columns = [np.eye(NUM_GRADES**2, dtype=np.float32)[truth * NUM_GRADES + predicted]]
    if threshold is not None:
        flagged = score >= threshold
        columns.append(np.stack([referable & flagged, ~referable & ~flagged], 1))
    counts = (weights @ np.hstack(columns).astype(np.float32)).astype(np.float64)
    confusion = counts[:, :NUM_GRADES**2].reshape(-1, NUM_GRADES, NUM_GRADES)
    total = confusion.sum((1, 2))
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    true_total, predicted_total = confusion.sum(2), confusion.sum(1)
    f1 = _ratio(2 * hits, true_total + predicted_total)
    present = np.bincount(truth, minlength=NUM_GRADES) > 0
    r = REFERABLE_GRADE
    positives, negatives = true_total[:, r:].sum(1), true_total[:, :r].sum(1)
    result = {
        "accuracy": _ratio(hits.sum(1), total),
        "quadratic_weighted_kappa": quadratic_kappa(confusion),
        "macro_f1": np.nan_to_num(f1)[:, present].mean(1),
        "referable_sensitivity": _ratio(confusion[:, r:, r:].sum((1, 2)), positives),
        "referable_specificity": _ratio(confusion[:, :r, :r].sum((1, 2)), negatives),
        "referable_auc": weighted_auc(referable, score, weights),
    }
    if threshold is not None:
        result["threshold_sensitivity"] = _ratio(counts[:, -2], positives)
        result["threshold_specificity"] = _ratio(counts[:, -1], negatives)
    if probabilities is not None:
        result["one_vs_rest_auc"] = np.full(len(weights), np.nan)
        graded = np.flatnonzero(present)
        if len(graded) > 1:
            aucs = np.stack([weighted_auc(truth == g, probabilities[:, g], weights)
                             for g in graded])
            with warnings.catch_warnings():  # all-NaN columns: resamples left undefined
                warnings.simplefilter("ignore", RuntimeWarning)
                result["one_vs_rest_auc"] = np.nanmean(aucs, axis=0)
    return result


def check_inputs(truth: np.ndarray, grades: list[np.ndarray], scores: list[np.ndarray]) -> int:
    """The number of images, once the true grades, predicted grades and scores agree on it."""
    if not len(truth):
        raise DrgradeError("no images to evaluate")
    for values in (*grades, *scores):
        if len(values) != len(truth):
            raise DrgradeError(f"{len(values)} predictions for {len(truth)} images")
    for values in (truth, *grades):
        values = np.asarray(values)
        if values.min() < 0 or values.max() >= NUM_GRADES:
            raise DrgradeError(f"grades must be 0-{NUM_GRADES - 1}, found "
                               f"{values.min()}..{values.max()}")
    return len(truth)


def bootstrap_intervals(truth: np.ndarray, predicted: np.ndarray, referable_score: np.ndarray,
                        patients: np.ndarray | None = None, threshold: float | None = None,
                        resamples: int = RESAMPLES, seed: int = 0,
                        level: float = LEVEL,
                        probabilities: np.ndarray | None = None) -> dict[str, Interval]:
    """Every metric of `resample_metrics` with its percentile interval, resampling patients.

    `threshold`: a referable-score cut point chosen on validation (score >= threshold is
    flagged); adds threshold_sensitivity and threshold_specificity. `probabilities`
    (N, 5), of a classification head: adds one_vs_rest_auc.
    """
    if not 0 < level < 1:
        raise DrgradeError(f"confidence level must be between 0 and 1, not {level}")
    n_images = check_inputs(truth, [predicted], [referable_score])
    if probabilities is not None:
        probabilities = np.asarray(probabilities, np.float64)
        if probabilities.shape != (n_images, NUM_GRADES):
            raise DrgradeError(f"probabilities of shape {probabilities.shape} for {n_images} "
                               f"images and {NUM_GRADES} grades")
    full = resample_metrics(truth, predicted, referable_score, np.ones((1, n_images), np.float32),
                            threshold, probabilities)
    blocks = [resample_metrics(truth, predicted, referable_score, weights, threshold,
                               probabilities)
              for weights in resample_weights(patients, n_images, resamples, seed)]
    return {name: interval(float(full[name][0]),
                           np.concatenate([block[name] for block in blocks]), level)
            for name in full}


def per_patient(truth: np.ndarray, predicted: np.ndarray, referable_score: np.ndarray,
                patients: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each patient's worse eye: (P,) max true grade, max predicted grade, max score.

    A patient is referable if either eye is, flagged if either eye is (at the model's grade
    or at a score threshold: the max score passes it exactly when one eye's does).
    """
    table = pd.DataFrame({"truth": np.asarray(truth), "predicted": np.asarray(predicted),
                          "score": np.asarray(referable_score, np.float64)})
    worst = table.groupby(clusters(patients, len(table))).max()
    return worst["truth"].to_numpy(), worst["predicted"].to_numpy(), worst["score"].to_numpy()


def patient_level(truth: np.ndarray, predicted: np.ndarray, referable_score: np.ndarray,
                  patients: np.ndarray, threshold: float | None = None,
                  resamples: int = RESAMPLES, seed: int = 0,
                  level: float = LEVEL) -> dict[str, Interval]:
    """Referable sensitivity, specificity and AUC per patient (worse eye), resampling patients."""
    check_inputs(truth, [predicted], [referable_score])
    worst = per_patient(truth, predicted, referable_score, patients)
    intervals = bootstrap_intervals(*worst, threshold=threshold, resamples=resamples,
                                    seed=seed, level=level)
    return {name: value for name, value in intervals.items() if name in REFERABLE_KEYS}
