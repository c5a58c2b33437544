"""Calibration of a classification head: ECE, multiclass Brier score, reliability diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import brier_score_loss  # noqa: E402

from drgrade.errors import DrgradeError  # noqa: E402
from drgrade.grades import NUM_GRADES  # noqa: E402
from drgrade.plots import save_figure  # noqa: E402

BINS = 15


def _check(probabilities: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities, truth = np.asarray(probabilities, np.float64), np.asarray(truth)
    if probabilities.ndim != 2 or probabilities.shape[1] != NUM_GRADES:
        raise DrgradeError(f"calibration needs (images, {NUM_GRADES}) grade probabilities, got "
                           f"shape {probabilities.shape} (a regression head has none)")
    if len(probabilities) != len(truth) or not len(truth):
        raise DrgradeError(f"{len(probabilities)} probability rows for {len(truth)} images")
    return probabilities, truth


def reliability_bins(probabilities: np.ndarray, truth: np.ndarray,
                     bins: int = BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: (bins,) mean top-label confidence, accuracy, count.

    Bins are right-closed, (k/bins, (k+1)/bins] as in Guo et al. (2017), so a confidence of
    exactly 1 falls in the last one; empty bins hold NaN confidence and accuracy.
    """
    probabilities, truth = _check(probabilities, truth)
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == truth
    index = np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1], right=True)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        return (np.bincount(index, confidence, bins) / counts,
                np.bincount(index, correct, bins) / counts, counts)


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray,
                               bins: int = BINS) -> float:
    """Top-label ECE in numpy: |accuracy - confidence| per bin, weighted by the bin's images.

    numpy rather than torchmetrics' `multiclass_calibration_error` so that the number and the
    reliability diagram come from the same bins; the two agree (tests) except for
    confidences exactly on a bin edge, which torchmetrics puts in the bin above.
    """
    confidence, accuracy, counts = reliability_bins(probabilities, truth, bins)
    filled = counts > 0
    return float((counts[filled] * np.abs(accuracy - confidence)[filled]).sum() / counts.sum())


def brier_score(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Multiclass Brier score: mean over images of the squared distance to the one-hot grade."""
    probabilities, truth = _check(probabilities, truth)
    # float32 softmax rows miss 1 by ~1e-7, which scikit-learn warns about; renormalise.
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    return float(brier_score_loss(truth, probabilities, labels=list(range(NUM_GRADES))))


def plot_reliability(probabilities: np.ndarray, truth: np.ndarray, path: Path, title: str = "",
                     bins: int = BINS) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with counts."""
    confidence, accuracy, counts = reliability_bins(probabilities, truth, bins)
    ece = expected_calibration_error(probabilities, truth, bins)
    edges = np.linspace(0, 1, bins + 1)
    figure, axis = plt.subplots(figsize=(5.5, 5))
    filled = counts > 0
    axis.bar(edges[:-1][filled], accuracy[filled], width=1 / bins, align="edge",
             edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy")
    # The gap from each bar up (over-) or down (under-confident) to the bin's mean confidence.
    axis.bar(edges[:-1][filled], (confidence - accuracy)[filled], bottom=accuracy[filled],
             width=1 / bins, align="edge", color="tab:red", alpha=0.3, hatch="//",
             label="gap to mean confidence")
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    tops = np.maximum(accuracy, confidence)[filled]
    for left, top, count in zip(edges[:-1][filled], tops, counts[filled], strict=True):
        axis.text(left + 0.5 / bins, top + 0.01, f"{count:,}", ha="center", va="bottom",
                  fontsize=7, rotation=90)
    axis.set(xlim=(0, 1), ylim=(0, 1.15), xlabel="top-grade confidence",
             ylabel="accuracy (images per bin above the bars)",
             title=f"{title + ': ' if title else ''}reliability (ECE {ece:.3f})")
    axis.legend(loc="upper left")
    return save_figure(figure, path)
