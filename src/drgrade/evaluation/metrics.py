"""Grading metrics, with the baselines that keep accuracy honest, and their printed table."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from drgrade.agreement import kappa
from drgrade.grades import GRADE_NAMES, NUM_GRADES, REFERABLE_GRADE
from drgrade.operating_points import TARGET_SENSITIVITY, screening_threshold

GRADES = list(range(NUM_GRADES))
# The metrics that get a bootstrap confidence interval in metrics.json and the report.
INTERVAL_METRICS = ("accuracy", "quadratic_weighted_kappa", "macro_f1", "referable_sensitivity",
                    "referable_specificity", "referable_auc", "one_vs_rest_auc")


def _defined(value: float) -> float | None:
    """A metric, or None (JSON null) where it is undefined (e.g. a single class present)."""
    return None if value is None or math.isnan(value) else float(value)


def one_vs_rest_auc(grades: np.ndarray, probabilities: np.ndarray | None) -> float | None:
    """MedMNIST's AUC: the mean over the grades present of grade k's ROC AUC against the
    rest, on the per-grade probabilities (None for a regression head, which has none)."""
    if probabilities is None:
        return None
    present = [g for g in GRADES if 0 < (grades == g).sum() < len(grades)]
    if not present:
        return None
    return float(np.mean([roc_auc_score(grades == g, probabilities[:, g]) for g in present]))


def grading_metrics(grades: np.ndarray, predicted: np.ndarray, referable_score: np.ndarray,
                    majority_grade: int, probabilities: np.ndarray | None = None) -> dict:
    """Every number `metrics.json` holds, for true and predicted grades 0-4.

    `referable_score` grows with the chance of grade >= 2 (summed probabilities of grades
    2-4, or a regression score); `majority_grade` is the most common training grade;
    `probabilities` (classification heads) give the one-vs-rest AUC.
    """
    grades, predicted = np.asarray(grades), np.asarray(predicted)
    precision, recall, f1, support = precision_recall_fscore_support(
        grades, predicted, labels=GRADES, zero_division=0)
    present = support > 0
    return {
        "n_images": int(len(grades)),
        "accuracy": float(accuracy_score(grades, predicted)),
        "majority_grade": int(majority_grade),
        "majority_accuracy": float(np.mean(grades == majority_grade)),
        # Undefined (one grade only on both sides) is reported as None.
        "quadratic_weighted_kappa": _defined(kappa(grades, predicted)),
        # Macro over the grades that occur: an absent grade has no recall to average.
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "one_vs_rest_auc": one_vs_rest_auc(grades, probabilities),
        **referable_metrics(grades, predicted, referable_score),
        "confusion_matrix": confusion_matrix(grades, predicted, labels=GRADES).tolist(),
        "per_class": {
            f"{g} {GRADE_NAMES[g]}": {"precision": float(precision[g]), "recall": float(recall[g]),
                                      "f1": float(f1[g]), "support": int(support[g])}
            for g in GRADES
        },
    }


def referable_metrics(grades: np.ndarray, predicted: np.ndarray, score: np.ndarray) -> dict:
    """Referable DR (grade >= 2) at the model's decision, and a read-out of this split's ROC:
    the operating point reaching the target sensitivity here (for the ROC figure; the
    threshold a programme would use is fixed on validation, `validation_threshold`)."""
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
        threshold = screening_threshold(grades, score, TARGET_SENSITIVITY)
        result["screening_point"] = {
            "target_sensitivity": TARGET_SENSITIVITY, "threshold": threshold,
            "sensitivity": float((score[truth] >= threshold).mean()),
            "specificity": float((score[~truth] < threshold).mean()),
        }
    return result


def format_value(value: float | None, percent: bool = False) -> str:
    """A metric as printed: three decimals, or a percentage; n/a where undefined."""
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}%" if percent else f"{value:.3f}"


def format_interval(interval: dict | None, percent: bool = False) -> str:
    """`0.731 [0.702, 0.760]` from an {estimate, low, high} mapping."""
    if not interval or interval.get("estimate") is None:
        return "n/a"
    low, high = interval["low"], interval["high"]
    if low is None:
        return format_value(interval["estimate"], percent)
    bounds = f" [{format_value(low, percent)}, {format_value(high, percent)}]"
    return format_value(interval["estimate"], percent) + bounds


def metrics_table(metrics: dict) -> str:
    """The metrics as a readable text table: 95% intervals where computed, the baseline
    beside the accuracy, the screening threshold fixed on validation, patients, calibration,
    deployment."""
    intervals = metrics.get("intervals") or {}
    ci, fmt = format_interval, format_value

    def value(name: str, percent: bool = False) -> str:
        if name in intervals:
            return ci(intervals[name], percent)
        return fmt(metrics[name], percent)

    unreadable = metrics.get("n_unreadable")
    lines = [f"images: {metrics['n_images']:,}" + (
        f" scored, {unreadable:,} unreadable (rows in predictions.csv)" if unreadable else "")]
    if "bootstrap" in metrics:
        boot = metrics["bootstrap"]
        lines.append(f"[95% bootstrap intervals, {boot['resamples']:,} resamples of "
                     f"{boot['unit']}, seed {boot['seed']}]")
    lines += [
        f"accuracy: {value('accuracy', True)}   (majority baseline, always grade "
        f"{metrics['majority_grade']}: {fmt(metrics['majority_accuracy'], True)})",
    ]
    if "data_majority_grade" in metrics:
        lines.append(f"  (grade {metrics['majority_grade']} is the training data's majority; "
                     f"this data's own, grade {metrics['data_majority_grade']}, scores "
                     f"{fmt(metrics['data_majority_accuracy'], True)})")
    lines += [
        f"quadratic weighted kappa: {value('quadratic_weighted_kappa')}",
        f"macro F1: {value('macro_f1')}",
        f"one-vs-rest AUC (MedMNIST's AUC, mean over grades): {value('one_vs_rest_auc')}",
        "",
        f"  {'grade':<18}{'precision':>10}{'recall':>10}{'F1':>10}{'images':>10}",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(f"  {name:<18}{row['precision']:>10.3f}{row['recall']:>10.3f}"
                     f"{row['f1']:>10.3f}{row['support']:>10,}")
    lines += [
        "",
        f"referable DR (grade >= 2), prevalence {fmt(metrics['referable_prevalence'], True)}:",
        f"  at the model's grade: sensitivity {value('referable_sensitivity')}, "
        f"specificity {value('referable_specificity')}",
        f"  ROC AUC: {value('referable_auc')}",
    ]
    fixed = metrics.get("validation_threshold")
    if fixed:
        lines.append(f"  at the threshold fixed on validation ({fixed['threshold']:.4g}, for "
                     f"sensitivity >= {fixed['target_sensitivity']:.2f} there): sensitivity "
                     f"{ci(fixed['sensitivity'])}, specificity {ci(fixed['specificity'])}")
    point = metrics["screening_point"]
    if point:
        lines.append(f"  specificity at {point['target_sensitivity']:.0%} sensitivity on this "
                     f"split (ROC read-out): sensitivity {point['sensitivity']:.3f}, "
                     f"specificity {point['specificity']:.3f} (score threshold "
                     f"{point['threshold']:.4g})")
    patients = metrics.get("patient_level")
    if patients:
        lines.append(f"  per patient ({patients['n_patients']:,}; referable if either eye is): "
                     f"sensitivity {ci(patients['referable_sensitivity'])}, specificity "
                     f"{ci(patients['referable_specificity'])}, AUC "
                     f"{ci(patients['referable_auc'])}")
        if "threshold_sensitivity" in patients:
            lines.append(f"    at the validation threshold: sensitivity "
                         f"{ci(patients['threshold_sensitivity'])}, specificity "
                         f"{ci(patients['threshold_specificity'])}")
    calibration = metrics.get("calibration")
    if calibration:
        lines += ["", f"calibration: expected calibration error "
                      f"{calibration['expected_calibration_error']:.3f}, Brier score "
                      f"{calibration['brier_score']:.3f}"]
    deployment = metrics.get("deployment")
    if deployment:
        lines += ["", f"deployment: {deployment['parameters']:,} parameters, checkpoint "
                      f"{deployment['checkpoint_bytes'] / 1e6:.1f} MB, "
                      f"{deployment['images_per_second']:,.0f} images/s on "
                      f"{deployment['device']}"]
    return "\n".join(lines)
