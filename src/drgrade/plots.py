"""Figures as PNG: training curves, confusion matrices, referable-DR ROC."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from drgrade.atomic import atomic_write  # noqa: E402
from drgrade.grades import GRADE_NAMES, REFERABLE_GRADE  # noqa: E402

TICKS = [f"{g}\n{name}" for g, name in enumerate(GRADE_NAMES)]
POINT_MARKERS = "os^D"  # one per operating point marked on the ROC


def save_figure(figure, path: Path) -> Path:
    """Write `figure` as PNG (atomically: a kill leaves no half an image) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    with atomic_write(path, "wb") as handle:
        # bbox_inches="tight": a legend placed outside the axes is kept, not cut off.
        figure.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_curves(log: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Accuracy, kappa and loss per epoch for each split the log holds."""
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for axis, metric in zip(axes, ("accuracy", "kappa", "loss"), strict=True):
        for split in ("train", "val", "test"):
            column = f"{split}_{metric}"
            if column in log:
                axis.plot(log["epoch"] + 1, log[column], marker="o", label=split)
        axis.set(xlabel="epoch", ylabel=metric if metric != "kappa" else "quadratic kappa",
                 title=metric)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def plot_confusion(matrix: np.ndarray, path: Path, normalize: bool, title: str = "") -> Path:
    """Confusion matrix with grade names; row-normalised (recall per grade) if asked."""
    matrix = np.asarray(matrix, dtype=float)
    if normalize:
        totals = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    figure, axis = plt.subplots(figsize=(6, 5.4))
    display = ConfusionMatrixDisplay(matrix, display_labels=TICKS)
    display.plot(ax=axis, cmap="Blues", colorbar=False,
                 values_format=".2f" if normalize else ".0f")
    axis.set(xlabel="predicted grade", ylabel="true grade",
             title=title or ("confusion matrix (row-normalised)" if normalize
                             else "confusion matrix (counts)"))
    return save_figure(figure, path)


def plot_referable_roc(grades: np.ndarray, score: np.ndarray, path: Path, title: str = "",
                       points: dict[str, tuple[float, float]] | None = None) -> Path:
    """ROC of referable DR (grade >= 2) against the model's referable score.

    `points` marks operating points: label -> (sensitivity, specificity).
    """
    points = points or {}
    if len(points) > len(POINT_MARKERS):
        raise ValueError(f"at most {len(POINT_MARKERS)} operating points, got {len(points)}")
    figure, axis = plt.subplots(figsize=(5.5, 6.5))
    RocCurveDisplay.from_predictions(np.asarray(grades) >= REFERABLE_GRADE, score, ax=axis,
                                     name="referable DR", plot_chance_level=True)
    for (label, (sensitivity, specificity)), marker in zip(points.items(), POINT_MARKERS,
                                                           strict=False):
        axis.plot(1 - specificity, sensitivity, marker, markersize=8, fillstyle="none",
                  label=f"{label}: sens. {sensitivity:.2f}, spec. {specificity:.2f}")
    # Below the axes: inside, the entries hid the curve's low false-positive end.
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    # Screening reads sensitivity and specificity, not sklearn's TPR/FPR wording.
    axis.set(title=title or "referable DR (grade >= 2) ROC",
             xlabel="1 - specificity (false positive rate)",
             ylabel="sensitivity (true positive rate)")
    return save_figure(figure, path)


def plot_comparison(data: pd.DataFrame, path: Path, title: str = "") -> Path:
    """The lab's figure: train and test accuracy per epoch, pretrained vs scratch."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for init, group in data.groupby("init"):
        for split, style in (("train", "--"), ("test", "-")):
            column = f"{split}_accuracy"
            if column in group and group[column].notna().any():
                axis.plot(group["epoch"] + 1, 100 * group[column], style, marker="o",
                          label=f"{split} ({init})")
    axis.set(xlabel="epoch", ylabel="accuracy (%)", title=title or "accuracy per epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend()
    return save_figure(figure, path)


def plot_resolution(table: pd.DataFrame, path: Path) -> Path:
    """Test accuracy, kappa and referable AUC against image size, a line per arch/init.

    `table` has rows (arch, init) and columns (metric, image size).
    """
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for axis, metric, label in zip(axes, ("accuracy", "quadratic_weighted_kappa", "referable_auc"),
                                   ("test accuracy", "test quadratic kappa",
                                    "test referable-DR AUC"), strict=True):
        values = table[metric]
        for (arch, init), row in values.iterrows():
            axis.plot(row.index, row.values, marker="o", label=f"{arch} ({init})")
        axis.set(xlabel="image size (px)", ylabel=label, xticks=list(values.columns))
        axis.grid(alpha=0.3)
        axis.legend()
    return save_figure(figure, path)


def plot_differences(differences: pd.DataFrame, path: Path) -> Path:
    """Paired differences B - A with their intervals, a panel per metric, 0 marked.

    `differences` has columns comparison, metric, estimate, low, high.
    """
    metrics = list(dict.fromkeys(differences["metric"]))
    comparisons = list(dict.fromkeys(differences["comparison"]))
    figure, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics),
                                                           1.5 + 0.45 * len(comparisons)),
                                sharey=True, squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        rows = differences[differences["metric"] == metric]
        y = [comparisons.index(name) for name in rows["comparison"]]
        axis.errorbar(rows["estimate"], y, fmt="o", capsize=4,
                      xerr=[rows["estimate"] - rows["low"], rows["high"] - rows["estimate"]])
        # An interval crossing this line does not tell the two runs apart.
        axis.axvline(0, color="grey", linestyle="--")
        axis.set(xlabel=f"{metric}: B - A (95% paired interval)", yticks=range(len(comparisons)),
                 yticklabels=comparisons, ylim=(len(comparisons) - 0.5, -0.5))
        axis.grid(alpha=0.3, axis="x")
    return save_figure(figure, path)
