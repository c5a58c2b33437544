"""`drgrade evaluate` on a real (tiny) run: metrics.json, the table, the figures."""

import json

import numpy as np
import pytest

from drgrade.cli import main
from drgrade.errors import DrgradeError
from drgrade.evaluation.evaluate import evaluate


def test_evaluate_cli_writes_metrics_and_figures(tiny_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "majority baseline, always grade 0: 43.50%" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("n_images", "accuracy", "majority_accuracy", "quadratic_weighted_kappa",
                "macro_f1", "referable_sensitivity", "referable_specificity",
                "referable_auc", "confusion_matrix", "per_class"):
        assert key in metrics
    assert metrics["n_images"] == 400 and metrics["split"] == "test"
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == 400
    assert matrix.sum(axis=1).tolist() == [174, 46, 92, 68, 20]  # RetinaMNIST test grades
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / 400)
    for name in ("confusion_test.png", "confusion_test_normalized.png",
                 "roc_referable_test.png"):
        assert (out / "figures" / name).stat().st_size > 10_000
    assert (tiny_run / "figures/curves.png").is_file()


def test_tta_and_val_split(tiny_run, tmp_path):
    plain = evaluate(tiny_run, split="val", out=tmp_path / "a", progress=False)
    flipped = evaluate(tiny_run, split="val", tta=True, out=tmp_path / "b", progress=False)
    assert plain["n_images"] == flipped["n_images"] == 120
    assert flipped["tta"] and not plain["tta"]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(DrgradeError, match="checkpoint not found"):
        evaluate(tmp_path / "nothing.ckpt")
