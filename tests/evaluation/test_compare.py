"""`drgrade compare` on synthetic evaluation folders written by evaluate's own writers."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drgrade.cli import main
from drgrade.errors import DrgradeError
from drgrade.evaluation.compare import compare_evaluations, evaluation_folder, run_compare
from drgrade.evaluation.comparison import compare_models
from drgrade.evaluation.evaluate import (
    Scored,
    evaluation_metrics,
    predictions_table,
    write_figures,
)
from drgrade.evaluation.metrics import grading_metrics
from drgrade.inference.grader import GraderBase
from drgrade.model_card import ModelCard
from drgrade.run_folder import METRICS_FILE, PREDICTIONS_FILE

N_IMAGES = 240
RESAMPLES = 200  # enough to separate a clearly better model; keeps each test well under 1 s


def grader(threshold: float | None = 0.5) -> GraderBase:
    """A classification grader's decoding and card without a network: all evaluate needs."""
    return GraderBase(ModelCard(arch="resnet18", head="classification", image_size=28,
                                mean=(0.5,) * 3, std=(0.5,) * 3, screening_threshold=threshold))


def synthetic_scored(noise: float, seed: int, n: int = N_IMAGES,
                     unreadable: int = 0) -> Scored:
    """Two eyes of n/2 patients, the same true grades for every seed; `noise`: how wrong."""
    truth = np.random.default_rng(0).choice(5, n, p=[0.45, 0.15, 0.2, 0.12, 0.08])
    rng = np.random.default_rng(seed)
    # Probabilities peaked at the true grade, blurred towards random grades by `noise`.
    logits = 4 * np.eye(5)[truth] + noise * rng.normal(0, 3, (n, 5))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    table = pd.DataFrame({"image_id": [f"{i // 2:03d}_{'left' if i % 2 else 'right'}"
                                       for i in range(n)],
                          "grade": truth, "patient": [f"{i // 2:03d}" for i in range(n)],
                          "eye": ["left" if i % 2 else "right" for i in range(n)],
                          "split": "test"})
    kept = table.iloc[unreadable:].reset_index(drop=True)
    failed = table.iloc[:unreadable].assign(reason="no fundus disc found")
    return Scored(kept, probabilities[unreadable:], failed.reset_index(drop=True))


def write_evaluation(folder: Path, scored: Scored, new_format: bool = True,
                     data: str = "synthetic.npz", split: str = "test",
                     figures: bool = False) -> Path:
    """An evaluation folder as `drgrade evaluate` writes it; `new_format=False`: an older one.

    The older format is metrics.json without intervals and sections, and no predictions.csv.
    """
    folder.mkdir(parents=True, exist_ok=True)
    model = grader()
    header = {"checkpoint": str(folder / "checkpoints/best.ckpt"), "data": data,
              "split": split, "tta": False}
    truth = scored.table["grade"].to_numpy()
    if new_format:
        metrics = header | evaluation_metrics(model, scored, 0, model.card.screening_threshold,
                                              resamples=RESAMPLES)
        predictions_table(model, scored).to_csv(folder / PREDICTIONS_FILE, index=False)
    else:
        metrics = header | grading_metrics(truth, model.decode(scored.outputs),
                                           model.referable_score(scored.outputs), 0)
    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    if figures:
        write_figures(folder / "figures", split, metrics, scored, model)
    return folder


def prediction_arrays(folder: Path) -> dict[str, np.ndarray]:
    table = pd.read_csv(folder / PREDICTIONS_FILE, dtype={"patient": str})
    return {"truth": table["grade"].to_numpy(), "predicted": table["predicted"].to_numpy(),
            "score": table["referable_score"].to_numpy(), "patients": table["patient"].to_numpy()}


def test_a_clearly_better_model_excludes_zero(tmp_path, capsys):
    a = write_evaluation(tmp_path / "a", synthetic_scored(noise=1.5, seed=1))
    b = write_evaluation(tmp_path / "b", synthetic_scored(noise=0.3, seed=2))
    out = tmp_path / "comparison.json"
    assert main(["compare", str(a), str(b), "--resamples", str(RESAMPLES),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{N_IMAGES} images of {N_IMAGES // 2} patients" in text
    assert "bootstrap of patients" in text
    kappa_line = next(line for line in text.splitlines() if line.startswith("kappa:"))
    assert kappa_line.endswith("(excludes 0)")
    assert "DeLong p = " in next(line for line in text.splitlines()
                                 if line.startswith("referable AUC:"))

    # The JSON holds exactly compare_models on the two files, patients resampled.
    saved = json.loads(out.read_text())
    x, y = prediction_arrays(a), prediction_arrays(b)
    expected = compare_models(x["truth"], x["predicted"], x["score"], y["predicted"],
                              y["score"], x["patients"], resamples=RESAMPLES)
    for name, difference in expected.items():
        assert saved[name] == pytest.approx(difference.as_dict())
        assert saved[name]["estimate"] > 0
    assert saved["bootstrap"] == {"resamples": RESAMPLES, "level": 0.95, "seed": 0,
                                  "unit": "patients"}
    assert f"A 0.{round(1000 * expected['quadratic_weighted_kappa'].a):03d}" in kappa_line


def test_identical_models_include_zero(tmp_path, capsys):
    a = write_evaluation(tmp_path / "a", synthetic_scored(noise=1.0, seed=1))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert main(["compare", str(a), str(b), "--resamples", str(RESAMPLES)]) == 0
    text = capsys.readouterr().out
    assert "kappa: " in text and "B - A +0.000 [+0.000, +0.000] (includes 0)" in text
    # The same scores twice: the AUC difference has no variance, so DeLong has no p.
    assert "DeLong p = n/a" in text


def test_rows_are_paired_by_image_id_and_unreadable_ones_left_out(tmp_path):
    a = write_evaluation(tmp_path / "a", synthetic_scored(noise=1.0, seed=1, unreadable=3))
    b = write_evaluation(tmp_path / "b", synthetic_scored(noise=0.5, seed=2))
    # Another row order in B must not matter.
    table = pd.read_csv(b / PREDICTIONS_FILE, dtype={"image": str, "patient": str})
    table.sample(frac=1, random_state=0).to_csv(b / PREDICTIONS_FILE, index=False)
    comparison = compare_evaluations(a, b, resamples=RESAMPLES)
    assert comparison.n_unreadable == 3 and comparison.n_images == N_IMAGES - 3
    assert "3 unreadable for A or B left out" in comparison.lines()[2]
    x, y = prediction_arrays(a), prediction_arrays(b)
    order = pd.Series(range(len(y["truth"])),
                      index=pd.read_csv(b / PREDICTIONS_FILE)["image"])
    keep = ~np.isnan(x["predicted"])
    ids = pd.read_csv(a / PREDICTIONS_FILE)["image"][keep]
    rows = order.loc[ids].to_numpy()
    expected = compare_models(x["truth"][keep], x["predicted"][keep].astype(int),
                              x["score"][keep], y["predicted"][rows], y["score"][rows],
                              x["patients"][keep], resamples=RESAMPLES)
    assert comparison.differences["referable_auc"].as_dict() == \
        pytest.approx(expected["referable_auc"].as_dict())


def test_data_names_the_evaluation_folder_of_both_runs(tmp_path, capsys):
    runs = []
    for name, noise in (("a", 1.5), ("b", 0.3)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text("arch: resnet18\n")
        write_evaluation(run / "evaluations/idrid-release-test",
                         synthetic_scored(noise, seed=len(runs) + 1), data="idrid-release")
        runs.append(run)
    # With or without the split suffix that `drgrade evaluate` adds.
    assert evaluation_folder(runs[0], "idrid-release") == \
        evaluation_folder(runs[0], "idrid-release-test") == \
        runs[0] / "evaluations/idrid-release-test"
    assert main(["compare", *map(str, runs), "--data", "idrid-release",
                 "--resamples", str(RESAMPLES)]) == 0
    assert "evaluations/idrid-release-test" in capsys.readouterr().out
    with pytest.raises(DrgradeError, match="no evaluation on 'messidor2'.*present: "
                                           "idrid-release-test.*drgrade evaluate"):
        evaluation_folder(runs[0], "messidor2")
    with pytest.raises(DrgradeError, match="holds the 'test' split, not 'val'.*--split test"):
        evaluation_folder(runs[0], "idrid-release-test", split="val")
    with pytest.raises(DrgradeError, match="not a run folder"):
        evaluation_folder(runs[0] / "evaluations/idrid-release-test", "idrid-release")


def test_different_image_sets_are_refused(tmp_path, capsys):
    a = write_evaluation(tmp_path / "a", synthetic_scored(noise=1.0, seed=1))
    b = write_evaluation(tmp_path / "b", synthetic_scored(noise=1.0, seed=2, n=N_IMAGES - 4))
    with pytest.raises(DrgradeError, match=r"(?s)different images:\n.*4 image\(s\) in "
                                           r".*a/predictions.csv but not in .*b/predictions"
                                           r".*same data and split"):
        run_compare(a, b, resamples=RESAMPLES)
    assert main(["compare", str(a), str(b)]) == 2
    assert "error: the two models were scored on different images" in capsys.readouterr().err


def test_disagreeing_true_grades_are_refused(tmp_path):
    a = write_evaluation(tmp_path / "a", synthetic_scored(noise=1.0, seed=1))
    b = write_evaluation(tmp_path / "b", synthetic_scored(noise=1.0, seed=2))
    table = pd.read_csv(b / PREDICTIONS_FILE, dtype={"image": str, "patient": str})
    table.loc[5, "grade"] = (table.loc[5, "grade"] + 1) % 5
    table.to_csv(b / PREDICTIONS_FILE, index=False)
    with pytest.raises(DrgradeError, match=r"1 image\(s\) have a different grade.*"
                                           f"{table.loc[5, 'image']}.*same data"):
        compare_evaluations(a, b, resamples=RESAMPLES)


def test_missing_predictions_say_to_evaluate_first(tmp_path, capsys):
    run = tmp_path / "old-run"
    write_evaluation(run, synthetic_scored(noise=1.0, seed=1), new_format=False)
    (run / "config.yaml").write_text("arch: resnet18\n")
    other = write_evaluation(tmp_path / "b", synthetic_scored(noise=1.0, seed=2))
    assert main(["compare", str(run), str(other)]) == 2
    error = capsys.readouterr().err
    assert "old-run/predictions.csv: not found" in error
    assert f"run `drgrade evaluate {run}` first" in error
    assert main(["compare", str(tmp_path / "nowhere"), str(other)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["compare", str(other), str(other), "--resamples", "0"]) == 2
    assert "--resamples must be at least 1" in capsys.readouterr().err
