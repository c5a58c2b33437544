"""Operating points fitted on validation: regression cut points (max kappa), the screening
threshold; and the two decoders of regression scores (numpy and torch) agree."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from drgrade.errors import DrgradeError
from drgrade.network import decode_regression
from drgrade.operating_points import (
    DEFAULT_CUT_POINTS,
    decode_scores,
    fit_cut_points,
    screening_threshold,
)

GRADES = list(range(5))

def qwk(grades, predicted) -> float:
    return cohen_kappa_score(grades, predicted, weights="quadratic", labels=GRADES)




def shifted_scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """EyePACS-like grades and a regressor that over-grades and squashes the scale."""
    rng = np.random.default_rng(seed)
    grades = rng.choice(5, size=n, p=[0.73, 0.07, 0.15, 0.025, 0.025])
    scores = 0.6 + 0.7 * grades + rng.normal(0, 0.35, size=n)
    return scores, grades


def decoded(scores, cuts) -> np.ndarray:
    return decode_regression(torch.as_tensor(scores), torch.as_tensor(cuts)).numpy()


@pytest.mark.parametrize("n", [200, 5000])
def test_fit_cut_points_beats_the_defaults(n):
    scores, grades = shifted_scores(n)
    cuts = fit_cut_points(scores, grades)
    assert cuts.shape == (4,) and cuts.dtype == np.float64
    assert np.all(np.diff(cuts) > 0)
    default = qwk(grades, decoded(scores, DEFAULT_CUT_POINTS))
    fitted = qwk(grades, decoded(scores, cuts))
    assert fitted > default + 0.1, (default, fitted)
    # At least as good as the natural cut points of this synthetic regressor: the midpoints
    # between its grade means (QWK's own optimum sits elsewhere on imbalanced grades).
    assert fitted >= qwk(grades, decoded(scores, [0.95, 1.65, 2.35, 3.05]))


def test_fit_cut_points_matches_a_grid_search():
    scores, grades = shifted_scores(200, seed=1)
    grid = np.linspace(0.5, 4.0, 11)
    best = max(qwk(grades, decoded(scores, cuts)) for cuts in itertools.combinations(grid, 4))
    assert qwk(grades, decoded(scores, fit_cut_points(scores, grades))) >= best


@pytest.mark.parametrize("seed", range(5))
def test_fit_cut_points_never_worse_than_defaults(seed):
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, size=60)
    scores = rng.normal(2, 1.5, size=60)
    cuts = fit_cut_points(scores, grades)
    assert np.all(np.diff(cuts) > 0)
    assert qwk(grades, decoded(scores, cuts)) >= qwk(grades, decoded(scores, DEFAULT_CUT_POINTS))


def test_fit_cut_points_is_exact_on_separable_scores():
    grades = np.array([0, 0, 1, 1, 2, 2, 3, 4, 4])
    scores = grades * 10.0 + 3  # every default cut point is wrong
    cuts = fit_cut_points(scores, grades)
    assert np.array_equal(decoded(scores, cuts), grades)


@pytest.mark.parametrize("scores, grades", [
    ([], []),
    ([0.3], [2]),
    ([0.1, 2.0, 3.0], [1, 1, 1]),  # one grade: kappa undefined
    (np.full(10, 1.0), np.zeros(10, int)),
])
def test_fit_cut_points_degenerate_inputs_keep_the_defaults(scores, grades):
    cuts = fit_cut_points(np.array(scores, float), np.array(grades, int))
    assert cuts.tolist() == list(DEFAULT_CUT_POINTS)


def test_fit_cut_points_few_samples_and_ties():
    cuts = fit_cut_points(np.array([1.0, 1.0, 1.0, 2.0]), np.array([0, 0, 2, 2]))
    assert cuts.shape == (4,) and np.all(np.diff(cuts) > 0)
    cuts = fit_cut_points(np.array([5.0, 6.0]), np.array([0, 4]))
    assert np.array_equal(decoded([5.0, 6.0], cuts), [0, 4])


def test_fit_cut_points_rejects_nan_scores():
    with pytest.raises(DrgradeError, match="NaN"):
        fit_cut_points(np.array([0.0, np.nan]), np.array([0, 1]))


def test_fit_cut_points_accepts_float16_column_scores():
    scores, grades = shifted_scores(300, seed=3)
    cuts = fit_cut_points(scores.astype(np.float16)[:, None], grades)
    assert np.all(np.diff(cuts) > 0)


def test_decode_regression_boundaries():
    cuts = torch.tensor(DEFAULT_CUT_POINTS)
    scores = torch.tensor([-1.0, 0.5, 0.5001, 1.5, 2.0, 2.5, 3.4999, 3.5, 3.5001, 10.0])
    grades = decode_regression(scores, cuts)
    assert grades.dtype == torch.int64
    assert grades.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_decode_regression_half_precision_and_errors():
    cuts = torch.tensor(DEFAULT_CUT_POINTS)
    scores = torch.tensor([0.49, 0.51, 3.6], dtype=torch.float16)
    assert decode_regression(scores, cuts).tolist() == [0, 1, 4]
    with pytest.raises(ValueError, match="increase"):
        decode_regression(scores, torch.tensor([0.5, 2.5, 1.5, 3.5]))
    with pytest.raises(ValueError, match="4 cut points"):
        decode_regression(scores, torch.tensor([0.5, 1.5]))


def test_numpy_and_torch_decoders_agree():
    scores = np.array([-1.0, 0.5, 0.5001, 1.5, 2.0, 2.5, 3.4999, 3.5, 3.5001, 10.0])
    cuts = np.array([0.5, 1.5, 2.5, 3.5])
    expected = decode_regression(torch.as_tensor(scores), torch.as_tensor(cuts)).numpy()
    assert decode_scores(scores, cuts).tolist() == expected.tolist()


def test_screening_threshold_finds_the_target_share_of_referable_eyes():
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 5, 500)
    score = grades + rng.normal(0, 1, 500)
    threshold = screening_threshold(grades, score, 0.9)
    referable = grades >= 2
    sensitivity = (score[referable] >= threshold).mean()
    assert sensitivity >= 0.9
    # The highest such threshold: any higher one misses the target.
    higher = np.sort(score[referable][score[referable] > threshold])
    assert not len(higher) or (score[referable] >= higher[0]).mean() < 0.9
    assert screening_threshold(np.zeros(5, int), np.ones(5)) is None
