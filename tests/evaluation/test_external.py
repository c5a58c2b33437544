"""External validation: a run scored on another dataset's official test split, raw
photographs prepared as its model card says, with intervals, predictions.csv and the
baseline from the run's own training data."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from drgrade.cli import main
from drgrade.data.prepare import prepare_dataset
from drgrade.data.sources import read_source
from drgrade.errors import DrgradeError
from drgrade.evaluation.evaluate import evaluate


@pytest.fixture(scope="module")
def external(tiny_run, idrid_release, tmp_path_factory):
    """tiny_run (RetinaMNIST, 28 px) scored on the IDRiD release's Testing Set."""
    out = tmp_path_factory.mktemp("external")
    metrics = evaluate(tiny_run, str(idrid_release), split="test", out=out, progress=False,
                       resamples=500)
    return out, metrics


def test_scores_exactly_the_testing_set(external, idrid_release):
    out, metrics = external
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    testing = sorted(p.stem for p in (idrid_release / "1. Original Images/b. Testing Set")
                     .glob("*.jpg"))
    assert sorted(predictions["image"]) == [f"test/{name}" for name in testing]
    assert metrics["n_images"] == len(testing) and metrics["n_unreadable"] == 0
    # Colliding names stay apart: IDRiD_001 of the Testing Set is not the training one.
    assert "train/IDRiD_001" not in set(predictions["image"])
    expected = read_source(idrid_release).table.set_index("image_id")["grade"]
    assert (predictions.set_index("image")["grade"] == expected[predictions["image"]]).all()
    assert {"patient", "eye", "predicted", "p0", "p4", "referable_score", "error"} <= set(
        predictions.columns)


def test_baseline_is_the_runs_training_majority(external, tiny_run):
    _, metrics = external
    # RetinaMNIST's training majority is grade 0; the IDRiD test split's is its own.
    assert metrics["majority_grade"] == 0
    truth = np.array(metrics["confusion_matrix"]).sum(axis=1)
    assert metrics["data_majority_grade"] == int(truth.argmax())
    assert metrics["majority_accuracy"] == pytest.approx(truth[0] / truth.sum())


def test_every_headline_number_has_an_interval(external):
    _, metrics = external
    for name in ("accuracy", "quadratic_weighted_kappa", "macro_f1", "referable_auc"):
        interval = metrics["intervals"][name]
        assert interval["low"] <= interval["estimate"] <= interval["high"], name
    assert metrics["bootstrap"] == {"resamples": 500, "level": 0.95, "seed": 0,
                                    "unit": "images"}
    # The screening threshold was fixed on the run's own validation split, not here.
    fixed = metrics["validation_threshold"]
    assert fixed is not None and fixed["target_sensitivity"] == 0.9
    assert metrics["calibration"]["brier_score"] >= 0


def test_second_evaluation_reuses_the_cache(tiny_run, idrid_release, external, capsys):
    out, first = external
    assert main(["evaluate", str(tiny_run), "--data", str(idrid_release), "--split", "test",
                 "--out", str(out), "--resamples", "500"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 20" in printed  # the Testing Set was cached by the first run
    assert len(list((out / "cache/images").iterdir())) == 20  # and nothing else
    assert "accuracy: " in printed and "[" in printed  # the interval beside the estimate
    again = json.loads((out / "metrics.json").read_text())
    assert again["accuracy"] == first["accuracy"]


def test_default_folder_is_inside_the_run(tiny_run, idrid_release, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    metrics = evaluate(run, str(idrid_release), split="test", progress=False, resamples=100,
                       cache=tmp_path / "cache")
    assert metrics["out"] == str(run / "evaluations" / "b-disease-grading-test")
    assert (run / "evaluations/b-disease-grading-test/predictions.csv").is_file()


def test_unreadable_photographs_are_rows_with_the_reason(tiny_run, idrid_release, tmp_path):
    broken = tmp_path / "release"
    shutil.copytree(idrid_release, broken, symlinks=False)
    victim = broken / "1. Original Images/b. Testing Set/IDRiD_005.jpg"
    victim.unlink()
    Image.new("RGB", (300, 200)).save(victim, format="JPEG")  # all black: no fundus
    metrics = evaluate(tiny_run, str(broken), split="test", out=tmp_path / "e", progress=False,
                       resamples=100)
    predictions = pd.read_csv(tmp_path / "e/predictions.csv", keep_default_na=False)
    row = predictions.set_index("image").loc["test/IDRiD_005"]
    assert row["error"] and row["predicted"] == ""
    assert metrics["n_unreadable"] == 1 and metrics["n_images"] == len(predictions) - 1


def test_a_cache_prepared_otherwise_is_refused(tiny_run, idrid_release, tmp_path):
    manifest = read_source(idrid_release).require_images()
    prepare_dataset(manifest, tmp_path / "p64", size=64, workers=1)
    with pytest.raises(DrgradeError, match="prepared with size 64, but the model was trained "
                                           "on size 28"):
        evaluate(tiny_run, str(tmp_path / "p64"), out=tmp_path / "e", progress=False)


def test_a_split_the_data_lacks_is_a_clear_error(tiny_run, idrid_release, tmp_path):
    with pytest.raises(DrgradeError, match=r"no graded images in the 'val' split "
                                           r"\(splits present: test, train\)"):
        evaluate(tiny_run, str(idrid_release), split="val", out=tmp_path / "e",
                 progress=False, cache=tmp_path / "c")
