"""`drgrade demo` end to end, small: synthetic photographs -> prepare -> train -> evaluate."""

import json

import pandas as pd

from drgrade.cli import main


def test_demo_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--images", "24", "--epochs", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[4/4] evaluating" in printed and "majority baseline" in printed
    metrics = json.loads((out / "run/metrics.json").read_text())
    for key in ("accuracy", "majority_accuracy", "quadratic_weighted_kappa"):
        assert key in metrics
    prepared = pd.read_csv(out / "prepared/manifest.csv")
    assert metrics["n_images"] == (prepared["split"] == "test").sum() > 0
    for name in ("log.csv", "config.yaml", "checkpoints/best.ckpt", "figures/curves.png"):
        assert (out / "run" / name).is_file(), name
    # A rerun reuses every finished stage.
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "reusing the synthetic photographs" in printed
    assert "written 0, skipped 24" in printed
    assert "reusing the trained run" in printed
