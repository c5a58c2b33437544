"""Checkpoints written before model cards (drgrade as of stop 7, commit d20dc6a) still load
and grade identically.

tests/fixtures/legacy/ holds two SqueezeNet 1.1 checkpoints (28 px RetinaMNIST, a few
steps: small, not good) saved by that version, and the outputs that version's Grader gave
on four IDRiD photographs (made by the script in that folder's README).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from drgrade.checkpoint import load_network
from drgrade.errors import DrgradeError
from drgrade.inference.torch_grader import TorchGrader

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy"


@pytest.fixture(scope="module")
def expected() -> dict:
    with np.load(LEGACY / "expected.npz") as saved:
        return {key: saved[key] for key in saved.files}


@pytest.mark.parametrize("head", ["classification", "regression"])
def test_legacy_checkpoint_grades_identically(head, expected, shared_data):
    grader = TorchGrader.from_checkpoint(LEGACY / f"{head}.ckpt", "cpu")
    assert grader.card.arch == "squeezenet1_1" and grader.card.head == head
    assert grader.card.drgrade_version == "0.1.0" and grader.card.image_size == 28
    photographs = [shared_data / "idrid-train/images" / name
                   for name in expected["photographs"]]
    predictions = [grader.predict_image(path) for path in photographs]
    outputs = [p.probabilities if p.probabilities else [p.score] for p in predictions]
    np.testing.assert_allclose(outputs, expected[f"{head}_outputs"], rtol=0, atol=1e-6)
    assert [p.grade for p in predictions] == expected[f"{head}_grades"].tolist()


def test_legacy_regression_cut_points_come_from_the_weights():
    _, card = load_network(LEGACY / "regression.ckpt")
    state = torch.load(LEGACY / "regression.ckpt", weights_only=True)["state_dict"]
    assert card.cut_points == pytest.approx(state["thresholds"].tolist())
    assert card.screening_threshold is None and card.training_grade_counts is None


def test_legacy_checkpoint_with_options_since_removed_loads(tmp_path):
    state = torch.load(LEGACY / "classification.ckpt", weights_only=True)
    state["hyper_parameters"]["config"]["an_option_long_gone"] = 1
    edited = tmp_path / "edited.ckpt"
    torch.save(state, edited)
    assert TorchGrader.from_checkpoint(edited).card.arch == "squeezenet1_1"
    del state["hyper_parameters"]["preprocessing"]["mean"]
    torch.save(state, edited)
    with pytest.raises(DrgradeError, match="another drgrade version .*lacks mean"):
        TorchGrader.from_checkpoint(edited)


def test_legacy_run_is_evaluated_with_baseline_and_threshold_from_its_data(shared_data,
                                                                           tmp_path):
    import shutil

    import yaml

    from drgrade.evaluation.evaluate import evaluate

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(LEGACY / "classification.ckpt", run / "checkpoints/best.ckpt")
    data = str(shared_data / "retinamnist/retinamnist.npz")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": data, "val_fraction": 0.1,
                                                     "seed": 0}))
    metrics = evaluate(run, progress=False, resamples=100)
    # The card has no training grades or threshold: both come from the run's own data.
    assert metrics["majority_grade"] == 0  # RetinaMNIST's training majority
    assert metrics["validation_threshold"]["threshold"] is not None
    with pytest.raises(DrgradeError, match="records no training grades"):
        evaluate(LEGACY / "classification.ckpt", data, out=tmp_path / "bare", progress=False)
