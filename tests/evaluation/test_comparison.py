"""Paired comparison of two models: bootstrap of the difference, DeLong, image alignment."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from drgrade.errors import DrgradeError
from drgrade.evaluation.comparison import (
    align_predictions,
    compare_models,
    delong_covariance,
    delong_test,
)


def two_models(n: int = 400, seed: int = 0):
    """True grades, then grades and scores of a weak model A and a clearly better model B."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(5, n, p=[0.45, 0.15, 0.2, 0.12, 0.08])
    weak = np.clip(truth + rng.choice([-2, -1, 0, 1, 2], n), 0, 4)
    strong = np.where(rng.random(n) < 0.9, truth, weak)
    weak_score = np.clip(truth / 4 + rng.normal(0, 0.5, n), 0, 1)
    strong_score = np.clip(truth / 4 + rng.normal(0, 0.15, n), 0, 1)
    return truth, weak, weak_score, strong, strong_score


def brute_force_delong(positive, scores):
    """DeLong's structural components pair by pair (DeLong et al. 1988), then the covariance."""
    components10, components01 = [], []
    for score in scores:
        x, y = score[positive][:, None], score[~positive][None, :]
        psi = (x > y) + 0.5 * (x == y)  # (positives, negatives)
        components10.append(psi.mean(1))
        components01.append(psi.mean(0))
    m, n = positive.sum(), (~positive).sum()
    aucs = np.array([c.mean() for c in components10])
    return aucs, np.cov(components10) / m + np.cov(components01) / n


def test_fast_delong_matches_the_structural_components():
    truth, _, weak_score, _, strong_score = two_models(300)
    positive = truth >= 2
    scores = np.vstack([np.round(weak_score, 1), strong_score])  # ties in the first
    aucs, covariance = delong_covariance(positive, scores)
    expected_aucs, expected_covariance = brute_force_delong(positive, scores)
    assert aucs == pytest.approx(expected_aucs)
    assert aucs == pytest.approx([roc_auc_score(positive, s) for s in scores])
    np.testing.assert_allclose(covariance, expected_covariance, rtol=1e-10)
    variance = expected_covariance[0, 0] + expected_covariance[1, 1] - 2 * expected_covariance[0, 1]
    z = (expected_aucs[1] - expected_aucs[0]) / np.sqrt(variance)
    assert delong_test(positive, *scores) == pytest.approx(2 * norm.sf(abs(z)))


def test_a_clearly_better_model_excludes_zero():
    truth, weak, weak_score, strong, strong_score = two_models()
    patients = np.arange(400) // 2
    result = compare_models(truth, weak, weak_score, strong, strong_score, patients,
                            resamples=500)
    for name in ("accuracy", "quadratic_weighted_kappa", "referable_auc"):
        difference = result[name]
        assert difference.excludes_zero and difference.difference.low > 0, name
        assert difference.difference.estimate == pytest.approx(difference.b - difference.a)
    assert result["referable_auc"].p_value < 1e-4
    assert result["accuracy"].p_value is None
    assert str(result["accuracy"]).startswith("+0.")


def test_identical_models_include_zero():
    truth, weak, weak_score, _, _ = two_models()
    result = compare_models(truth, weak, weak_score, weak, weak_score, resamples=200)
    for difference in result.values():
        assert not difference.excludes_zero
        assert difference.difference.low <= 0 <= difference.difference.high
    assert result["referable_auc"].p_value is None  # nothing to test: no variance
    assert result["quadratic_weighted_kappa"].as_dict()["excludes_zero"] is False


def test_two_similar_models_include_zero():
    truth, weak, weak_score, _, _ = two_models(seed=1)
    rng = np.random.default_rng(3)
    # Model B: A's grades, and A's scores with half of them redrawn from the same noise.
    swap = rng.random(len(truth)) < 0.5
    other_score = np.where(swap, np.clip(truth / 4 + rng.normal(0, 0.5, len(truth)), 0, 1),
                           weak_score)
    result = compare_models(truth, weak, weak_score, weak, other_score, resamples=300)
    assert not result["referable_auc"].excludes_zero
    assert result["referable_auc"].p_value > 0.05


def test_align_predictions_orders_b_as_a():
    a = pd.DataFrame({"image": ["x", "y", "z"], "predicted": [0, 1, 2]})
    b = pd.DataFrame({"predicted": [4, 3, 2], "image": ["z", "x", "y"]})
    left, right = align_predictions(a, b)
    assert right["image"].tolist() == ["x", "y", "z"]
    assert right["predicted"].tolist() == [3, 2, 4]
    assert list(right.columns) == ["predicted", "image"]
    assert left.equals(a)


def test_align_predictions_names_the_missing_images():
    a = pd.DataFrame({"image": ["x", "y", "q"]})
    b = pd.DataFrame({"image": ["y", "x", "w", "v"]})
    with pytest.raises(DrgradeError) as error:
        align_predictions(a, b, names=("run-a", "run-b"))
    assert "1 image(s) in run-a but not in run-b: q" in str(error.value)
    assert "2 image(s) in run-b but not in run-a: w, v" in str(error.value)
    with pytest.raises(DrgradeError, match="more than once.*: y"):
        align_predictions(a, pd.DataFrame({"image": ["y", "x", "y", "q"]}))
    with pytest.raises(DrgradeError, match="no 'image' column"):
        align_predictions(a, pd.DataFrame({"id": ["x"]}))


def test_delong_needs_both_classes():
    assert delong_test(np.array([True, False, False]), np.arange(3), np.arange(3)) is None
    with pytest.raises(DrgradeError, match="2 positives and 2 negatives"):
        delong_covariance(np.array([True, False, False]), np.arange(3))
