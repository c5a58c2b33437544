"""Bootstrap intervals against direct, one-resample-at-a-time scikit-learn computations."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    recall_score,
    roc_auc_score,
)

from drgrade.errors import DrgradeError
from drgrade.evaluation.intervals import (
    Interval,
    bootstrap_intervals,
    patient_level,
    per_patient,
    resample_metrics,
    resample_weights,
)
from drgrade.evaluation.metrics import grading_metrics


def graded(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True grades, a model's grades (right ~60%, off by one otherwise), a tied score."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(5, n, p=[0.45, 0.15, 0.2, 0.12, 0.08])
    predicted = np.clip(truth + rng.choice([-1, 0, 0, 0, 1], n), 0, 4)
    score = np.round(np.clip(truth / 4 + rng.normal(0, 0.25, n), 0, 1), 1)  # many ties
    return truth, predicted, score


def all_weights(patients, n, resamples, seed=0) -> np.ndarray:
    return np.concatenate(list(resample_weights(patients, n, resamples, seed)))


def test_kappa_interval_matches_a_loop_over_the_same_resamples():
    truth, predicted, score = graded(150)
    weights = all_weights(None, 150, 300)
    kappas, accuracies, f1s = [], [], []
    for row in weights:
        drawn = np.repeat(np.arange(150), row.astype(int))  # the resample's image indices
        kappas.append(cohen_kappa_score(truth[drawn], predicted[drawn], labels=range(5),
                                        weights="quadratic"))
        accuracies.append(accuracy_score(truth[drawn], predicted[drawn]))
        f1s.append(f1_score(truth[drawn], predicted[drawn], labels=range(5), average="macro",
                            zero_division=0))
    intervals = bootstrap_intervals(truth, predicted, score, resamples=300)
    for name, samples in (("quadratic_weighted_kappa", kappas), ("accuracy", accuracies),
                          ("macro_f1", f1s)):
        assert [intervals[name].low, intervals[name].high] == pytest.approx(
            np.percentile(samples, [2.5, 97.5]), abs=1e-9), name
    assert intervals["quadratic_weighted_kappa"].estimate == pytest.approx(
        cohen_kappa_score(truth, predicted, weights="quadratic"))


def test_estimates_are_the_full_sample_metrics():
    truth, predicted, score = graded(400, seed=1)
    intervals = bootstrap_intervals(truth, predicted, score, resamples=50)
    expected = grading_metrics(truth, predicted, score, majority_grade=0)
    for name in ("accuracy", "quadratic_weighted_kappa", "macro_f1", "referable_sensitivity",
                 "referable_specificity", "referable_auc"):
        assert intervals[name].estimate == pytest.approx(expected[name]), name
        assert intervals[name].low <= intervals[name].estimate <= intervals[name].high, name


def test_auc_and_sensitivity_match_sklearn_on_weighted_samples():
    truth, predicted, score = graded(300, seed=2)
    referable = truth >= 2
    weights = all_weights(None, 300, 5, seed=3)
    metrics = resample_metrics(truth, predicted, score, weights, threshold=0.5)
    for b, row in enumerate(weights):
        assert metrics["referable_auc"][b] == pytest.approx(
            roc_auc_score(referable, score, sample_weight=row))
        assert metrics["threshold_sensitivity"][b] == pytest.approx(
            recall_score(referable, score >= 0.5, sample_weight=row))
        assert metrics["threshold_specificity"][b] == pytest.approx(
            recall_score(~referable, score < 0.5, sample_weight=row))
        assert metrics["referable_sensitivity"][b] == pytest.approx(
            recall_score(referable, predicted >= 2, sample_weight=row))


def test_interval_narrows_as_the_sample_grows():
    widths = []
    for n in (100, 1600):
        kappa = bootstrap_intervals(*graded(n), resamples=400)["quadratic_weighted_kappa"]
        widths.append(kappa.high - kappa.low)
    # Sixteen times the images: about a quarter of the width.
    assert 2.5 < widths[0] / widths[1] < 6


def test_both_eyes_of_a_patient_are_drawn_together():
    truth, predicted, score = graded(200, seed=4)
    patients = np.repeat([f"p{i}" for i in range(100)], 2)
    weights = all_weights(patients, 200, 250)
    assert weights.shape == (250, 200)
    assert (weights[:, 0::2] == weights[:, 1::2]).all()
    assert (weights.sum(1) == 200).all()  # 100 patients drawn, two eyes each
    # Identical eyes add no information: resampling eyes as if independent understates
    # the uncertainty by about sqrt(2).
    eyes = [np.repeat(values, 2) for values in graded(200, seed=4)]
    by_patient = bootstrap_intervals(*eyes, patients=np.repeat(np.arange(200), 2),
                                     resamples=500)
    by_eye = bootstrap_intervals(*eyes, resamples=500)
    for name in ("quadratic_weighted_kappa", "referable_auc", "accuracy"):
        wide, narrow = by_patient[name], by_eye[name]
        assert wide.estimate == narrow.estimate
        assert (wide.high - wide.low) / (narrow.high - narrow.low) > 1.2, name


def test_seeded_and_undefined_metrics():
    truth, predicted, score = graded(100)
    first = bootstrap_intervals(truth, predicted, score, resamples=100, seed=7)
    assert first == bootstrap_intervals(truth, predicted, score, resamples=100, seed=7)
    assert first != bootstrap_intervals(truth, predicted, score, resamples=100, seed=8)
    zeros = np.zeros(20, dtype=int)
    single = bootstrap_intervals(zeros, zeros, np.linspace(0, 1, 20), resamples=100)
    assert single["referable_auc"] == Interval(None, None, None)
    assert single["quadratic_weighted_kappa"].estimate is None
    assert str(single["referable_auc"]) == "n/a"
    assert single["accuracy"] == Interval(1.0, 1.0, 1.0)
    assert str(Interval(0.7312, 0.7021, 0.76)) == "0.731 [0.702, 0.760]"


def test_patient_level_takes_the_worse_eye():
    truth = np.array([0, 2, 0, 0, 3, 1])
    predicted = np.array([0, 1, 0, 2, 2, 0])
    score = np.array([0.1, 0.4, 0.2, 0.6, 0.8, 0.3])
    patients = np.array(["a", "a", "b", "b", "c", "c"])
    worst_truth, worst_predicted, worst_score = per_patient(truth, predicted, score, patients)
    assert worst_truth.tolist() == [2, 0, 3]
    assert worst_predicted.tolist() == [1, 2, 2]
    assert worst_score.tolist() == [0.4, 0.6, 0.8]
    result = patient_level(truth, predicted, score, patients, threshold=0.5, resamples=50)
    assert result["referable_sensitivity"].estimate == 0.5  # a missed, c found
    assert result["referable_specificity"].estimate == 0.0  # b flagged
    assert result["referable_auc"].estimate == pytest.approx(0.5)
    assert result["threshold_sensitivity"].estimate == 0.5
    assert "quadratic_weighted_kappa" not in result


def test_patient_level_intervals_resample_patients():
    truth, predicted, score = graded(600, seed=5)
    patients = np.arange(600) // 2
    result = patient_level(truth, predicted, score, patients, resamples=200)
    worst = per_patient(truth, predicted, score, patients)
    assert result["referable_auc"].estimate == pytest.approx(roc_auc_score(worst[0] >= 2,
                                                                           worst[2]))
    assert result["referable_auc"].low < result["referable_auc"].estimate


def test_bad_inputs():
    truth, predicted, score = graded(10)
    with pytest.raises(DrgradeError, match="9 predictions for 10 images"):
        bootstrap_intervals(truth, predicted[:9], score)
    with pytest.raises(DrgradeError, match="grades must be 0-4"):
        bootstrap_intervals(truth, predicted + 5, score)
    with pytest.raises(DrgradeError, match="1 image.* no patient id"):
        bootstrap_intervals(truth, predicted, score, patients=[*"abcdefghi", None])
    with pytest.raises(DrgradeError, match="no images"):
        bootstrap_intervals([], [], [])


def probabilities_for(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """Softmax probabilities that lean towards the true grade."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(truth), 5)) + 1.5 * np.eye(5)[truth]
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_one_vs_rest_auc_is_medmnists_and_its_interval_matches_a_loop():
    truth, predicted, score = graded(150, seed=2)
    probabilities = probabilities_for(truth)
    metrics = grading_metrics(truth, predicted, score, 0, probabilities)
    assert metrics["one_vs_rest_auc"] == pytest.approx(
        roc_auc_score(truth, probabilities, multi_class="ovr", average="macro"))
    weights = all_weights(None, 150, 300)
    direct = []
    for row in weights:
        drawn = np.repeat(np.arange(150), row.astype(int))
        direct.append(np.mean([roc_auc_score(truth[drawn] == g, probabilities[drawn, g])
                               for g in range(5) if 0 < (truth[drawn] == g).sum() < len(drawn)]))
    intervals = bootstrap_intervals(truth, predicted, score, resamples=300,
                                    probabilities=probabilities)
    found = intervals["one_vs_rest_auc"]
    assert found.estimate == pytest.approx(metrics["one_vs_rest_auc"])
    assert [found.low, found.high] == pytest.approx(np.percentile(direct, [2.5, 97.5]), abs=1e-9)
    # A regression head has no per-grade probabilities: no such metric.
    assert "one_vs_rest_auc" not in bootstrap_intervals(truth, predicted, score, resamples=10)
    assert grading_metrics(truth, predicted, score, 0)["one_vs_rest_auc"] is None
