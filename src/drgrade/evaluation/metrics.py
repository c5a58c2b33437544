"""Grading metrics from scikit-learn, with the baselines that keep accuracy honest."""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from drgrade.grades import GRADE_NAMES, NUM_GRADES, REFERABLE_GRADE

GRADES = list(range(NUM_GRADES))
# The screening operating point: the highest threshold that still finds this share of
# referable eyes.
TARGET_SENSITIVITY = 0.90


def _defined(value: float) -> float | None:
    """A metric, or None (JSON null) where it is undefined (e.g. a single class present)."""
    return None if value is None or math.isnan(value) else float(value)


def grading_metrics(grades: np.ndarray, predicted: np.ndarray, referable_score: np.ndarray,
                    majority_grade: int) -> dict:
    """Every number `metrics.json` holds, for true and predicted grades 0-4.

    `referable_score` grows with the chance of grade >= 2 (summed probabilities of grades
    2-4, or a regression score); `majority_grade` is the most common training grade.
    """
    grades, predicted = np.asarray(grades), np.asarray(predicted)
    precision, recall, f1, support = precision_recall_fscore_support(
        grades, predicted, labels=GRADES, zero_division=0)
    present = support > 0
    with np.errstate(all="ignore"), warnings.catch_warnings():
        # Undefined (one grade only) comes back as NaN and is reported as None.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        kappa = cohen_kappa_score(grades, predicted, labels=GRADES, weights="quadratic")
    return {
        "n_images": int(len(grades)),
        "accuracy": float(accuracy_score(grades, predicted)),
        "majority_grade": int(majority_grade),
        "majority_accuracy": float(np.mean(grades == majority_grade)),
        "quadratic_weighted_kappa": _defined(kappa),
        # Macro over the grades that occur: an absent grade has no recall to average.
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        **referable_metrics(grades, predicted, referable_score),
        "confusion_matrix": confusion_matrix(grades, predicted, labels=GRADES).tolist(),
        "per_class": {
            f"{g} {GRADE_NAMES[g]}": {"precision": float(precision[g]), "recall": float(recall[g]),
                                      "f1": float(f1[g]), "support": int(support[g])}
            for g in GRADES
        },
    }


def referable_metrics(grades: np.ndarray, predicted: np.ndarray, score: np.ndarray) -> dict:
    """Referable DR (grade >= 2): at the model's decision and at the screening point."""
    truth = grades >= REFERABLE_GRADE
    flagged = predicted >= REFERABLE_GRADE
    both_present = truth.any() and (~truth).any()
    result = {
        "referable_prevalence": float(truth.mean()),
        "referable_sensitivity": _defined(flagged[truth].mean()) if truth.any() else None,
        "referable_specificity": _defined((~flagged[~truth]).mean()) if (~truth).any() else None,
        "referable_auc": float(roc_auc_score(truth, score)) if both_present else None,
        "screening_point": None,
    }
    if both_present:
        false_pos, true_pos, thresholds = roc_curve(truth, score)
        first = int(np.argmax(true_pos >= TARGET_SENSITIVITY))
        result["screening_point"] = {
            "target_sensitivity": TARGET_SENSITIVITY, "threshold": float(thresholds[first]),
            "sensitivity": float(true_pos[first]), "specificity": float(1 - false_pos[first]),
        }
    return result


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}%" if percent else f"{value:.3f}"


def metrics_table(metrics: dict) -> str:
    """The metrics as a readable text table, the baseline beside the accuracy."""
    lines = [
        f"images: {metrics['n_images']:,}",
        f"accuracy: {_fmt(metrics['accuracy'], True)}   (majority baseline, always grade "
        f"{metrics['majority_grade']}: {_fmt(metrics['majority_accuracy'], True)})",
        f"quadratic weighted kappa: {_fmt(metrics['quadratic_weighted_kappa'])}",
        f"macro F1: {_fmt(metrics['macro_f1'])}",
        "",
        f"  {'grade':<18}{'precision':>10}{'recall':>10}{'F1':>10}{'images':>10}",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(f"  {name:<18}{row['precision']:>10.3f}{row['recall']:>10.3f}"
                     f"{row['f1']:>10.3f}{row['support']:>10,}")
    lines += [
        "",
        f"referable DR (grade >= 2), prevalence {_fmt(metrics['referable_prevalence'], True)}:",
        f"  at the model's grade: sensitivity {_fmt(metrics['referable_sensitivity'])}, "
        f"specificity {_fmt(metrics['referable_specificity'])}",
        f"  ROC AUC: {_fmt(metrics['referable_auc'])}",
    ]
    point = metrics["screening_point"]
    if point:
        lines.append(f"  at sensitivity >= {point['target_sensitivity']:.2f}: sensitivity "
                     f"{point['sensitivity']:.3f}, specificity {point['specificity']:.3f} "
                     f"(score threshold {point['threshold']:.4g})")
    return "\n".join(lines)
