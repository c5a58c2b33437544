"""Metrics against scikit-learn on known inputs, including the edge cases."""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score

from drgrade.evaluation.metrics import grading_metrics, metrics_table


def test_known_inputs():
    grades = np.array([0, 0, 0, 0, 1, 2, 2, 3, 4, 4])
    predicted = np.array([0, 0, 1, 0, 1, 2, 3, 3, 4, 2])
    score = np.array([.1, .2, .3, .1, .4, .7, .8, .9, .95, .6])
    m = grading_metrics(grades, predicted, score, majority_grade=0)
    assert m["n_images"] == 10
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["majority_accuracy"] == pytest.approx(0.4)
    assert m["quadratic_weighted_kappa"] == pytest.approx(
        cohen_kappa_score(grades, predicted, weights="quadratic"))
    assert m["macro_f1"] == pytest.approx(f1_score(grades, predicted, average="macro"))
    # Referable: grades 2,2,3,4,4 are referable; predicted >= 2 for all of them, none else.
    assert m["referable_sensitivity"] == 1.0 and m["referable_specificity"] == 1.0
    assert m["referable_auc"] == pytest.approx(roc_auc_score(grades >= 2, score))
    assert m["confusion_matrix"][0] == [3, 1, 0, 0, 0]
    assert m["confusion_matrix"][4] == [0, 0, 1, 0, 1]
    assert m["per_class"]["4 proliferative"]["recall"] == 0.5
    assert m["screening_point"]["sensitivity"] >= 0.9


def test_sensitivity_and_specificity_count_the_right_eyes():
    grades = np.array([0, 0, 0, 0, 2, 2, 3, 4])
    predicted = np.array([0, 2, 0, 0, 1, 2, 3, 0])
    m = grading_metrics(grades, predicted, predicted / 4, majority_grade=0)
    assert m["referable_sensitivity"] == pytest.approx(2 / 4)
    assert m["referable_specificity"] == pytest.approx(3 / 4)


def test_a_grade_missing_from_the_predictions():
    grades = np.array([0, 1, 2, 3, 4, 0])
    predicted = np.array([0, 0, 2, 2, 2, 0])
    m = grading_metrics(grades, predicted, np.linspace(0, 1, 6), majority_grade=0)
    assert m["per_class"]["1 mild"]["precision"] == 0.0
    assert m["per_class"]["4 proliferative"]["recall"] == 0.0
    assert m["quadratic_weighted_kappa"] == pytest.approx(
        cohen_kappa_score(grades, predicted, weights="quadratic"))


def test_a_single_class_present():
    grades = np.zeros(5, dtype=int)
    m = grading_metrics(grades, grades, np.zeros(5), majority_grade=0)
    assert m["accuracy"] == 1.0
    assert m["quadratic_weighted_kappa"] is None  # undefined, not a made-up number
    assert m["referable_auc"] is None and m["referable_sensitivity"] is None
    assert m["referable_specificity"] == 1.0
    assert m["macro_f1"] == 1.0  # over the grades that occur
    text = metrics_table(m)
    assert "kappa: n/a" in text and "ROC AUC: n/a" in text
