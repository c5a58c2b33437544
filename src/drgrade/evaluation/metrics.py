"""Grading metrics from scikit-learn, with the baselines that keep accuracy honest."""

from __future__ import annotations

import math

import numpy as np
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
    with np.errstate(all="ignore"):
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
