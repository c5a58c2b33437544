"""Calibration: ECE against torchmetrics and by hand, Brier on a known case, the diagram."""

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from drgrade.errors import DrgradeError
from drgrade.evaluation.calibration import (
    brier_score,
    expected_calibration_error,
    plot_reliability,
    reliability_bins,
)


def softmax_outputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overconfident probabilities for 5 grades and true grades that follow them loosely."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 5, n)
    logits = rng.normal(0, 1, (n, 5)) * 2.5
    logits[np.arange(n), truth] += rng.normal(1.5, 1, n)
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probabilities, truth


def test_ece_agrees_with_torchmetrics():
    probabilities, truth = softmax_outputs(2000)
    expected = multiclass_calibration_error(torch.from_numpy(probabilities),
                                            torch.from_numpy(truth), num_classes=5, n_bins=15,
                                            norm="l1")
    assert expected_calibration_error(probabilities, truth) == pytest.approx(float(expected))
    assert expected_calibration_error(probabilities, truth) > 0.05  # it is overconfident


def test_ece_by_hand():
    # Two bins of 0.5 width: (0, 0.5] holds the 0.4 image (wrong), (0.5, 1] the 0.6, 0.6
    # and 1.0 ones (two right): |0 - 0.4| * 1/4 + |2/3 - 2.2/3| * 3/4 = 0.15.
    probabilities = np.array([[0.4, 0.3, 0.3, 0, 0], [0.6, 0.4, 0, 0, 0],
                              [0, 0.6, 0.4, 0, 0], [0, 0, 0, 0, 1.0]])
    truth = np.array([1, 0, 2, 4])
    confidence, accuracy, counts = reliability_bins(probabilities, truth, bins=2)
    assert counts.tolist() == [1, 3]
    assert accuracy == pytest.approx([0, 2 / 3])
    assert confidence == pytest.approx([0.4, 2.2 / 3])
    assert expected_calibration_error(probabilities, truth, bins=2) == pytest.approx(0.15)


def test_brier_on_a_known_case():
    probabilities = np.array([[1.0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0, 0, 0.2, 0.8, 0]])
    truth = np.array([0, 1, 4])
    # Per image: 0; 0.25 + 0.25; 0.04 + 0.64 + 1.
    assert brier_score(probabilities, truth) == pytest.approx((0 + 0.5 + 1.68) / 3)


def test_reliability_diagram(tmp_path):
    probabilities, truth = softmax_outputs(500)
    path = plot_reliability(probabilities, truth, tmp_path / "figures/reliability.png",
                            title="test")
    assert path.stat().st_size > 10_000
    with pytest.raises(DrgradeError, match="regression head"):
        plot_reliability(probabilities[:, 0], truth, tmp_path / "x.png")
    with pytest.raises(DrgradeError, match="499 probability rows for 500 images"):
        brier_score(probabilities[:-1], truth)
