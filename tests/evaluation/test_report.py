"""Experiment grid and report on real RetinaMNIST: the numbers behind tables and figures."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from drgrade.cli import main
from drgrade.errors import DrgradeError
from drgrade.evaluation.report import (
    collect_runs,
    curve_data,
    lab_table,
    resolution_table,
    run_metrics_table,
    write_report,
)
from drgrade.experiment import load_experiment

REPO = Path(__file__).resolve().parents[2]


def _experiment(tmp_path: Path, sizes: list[int], seeds: list[int]) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs/retinamnist.yaml"),
        "set": {"epochs": 2, "max_train_batches": 2, "batch_size": 32},
        "grid": {"arch": ["resnet18"], "pretrained": [False], "image_size": sizes,
                 "seed": seeds},
    }, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def grid_run(shared_data, tmp_path_factory) -> Path:
    """A real 2-size x 2-seed grid, a few steps a cell, trained once for this module."""
    tmp = tmp_path_factory.mktemp("grid")
    out = tmp / "runs"
    npz = str(shared_data / "retinamnist/retinamnist.npz")
    assert main(["experiment", str(_experiment(tmp, [28, 32], [0, 1])), "--out", str(out),
                 "--data", npz]) == 0
    return out


def test_grid_cells_and_names(shared_data, tmp_path):
    plan, cells = load_experiment(_experiment(tmp_path, [28, 32], [0, 1]), tmp_path / "o",
                                  {"data": str(shared_data / "retinamnist/retinamnist.npz")})
    assert [c.name for c in cells] == [
        "resnet18-scratch-28px-seed0", "resnet18-scratch-28px-seed1",
        "resnet18-scratch-32px-seed0", "resnet18-scratch-32px-seed1",
    ]
    assert all(c.config.track_test and c.config.epochs == 2 for c in cells)
    assert plan["cells"] == [c.name for c in cells]


def test_grid_value_setting_several_options(shared_data, tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs/retinamnist.yaml"),
        "grid": {"arch": [{"arch": "resnet18", "epochs": 10}, {"arch": "resnet50", "epochs": 5}],
                 "pretrained": [True, False]},
    }))
    _, cells = load_experiment(path, tmp_path / "o",
                               {"data": str(shared_data / "retinamnist/retinamnist.npz")})
    assert {(c.name, c.config.epochs) for c in cells} == {
        ("resnet18-pretrained", 10), ("resnet18-scratch", 10),
        ("resnet50-pretrained", 5), ("resnet50-scratch", 5),
    }


def test_bad_experiment_files(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("grid: {arch: [resnet18]}\nseeds: [1]\n")
    with pytest.raises(DrgradeError, match="unknown key\\(s\\) seeds"):
        load_experiment(path, tmp_path)
    path.write_text("base: x.yaml\n")
    with pytest.raises(DrgradeError, match="needs a `grid:`"):
        load_experiment(path, tmp_path)


def test_report_numbers_come_from_the_runs(grid_run):
    runs = collect_runs(grid_run)
    assert list(runs["state"]) == ["done"] * 4
    metrics = {name: json.loads((grid_run / name / "metrics.json").read_text())
               for name in runs["name"]}

    # The lab's table at the largest size: mean of the two seeds' test metrics.
    table = lab_table(runs, 32)
    accuracies = [metrics[f"resnet18-scratch-32px-seed{s}"]["accuracy"] for s in (0, 1)]
    mean = 100 * sum(accuracies) / 2
    assert f"test accuracy: {mean:.2f}" in table.loc["resnet18", "scratch"]
    assert "(n=2)" in table.loc["resnet18", "scratch"]

    # Resolution: one column per size, the seed mean of each.
    resolution = resolution_table(runs)
    kappas = [metrics[f"resnet18-scratch-28px-seed{s}"]["quadratic_weighted_kappa"]
              for s in (0, 1)]
    assert resolution.loc[("resnet18", "scratch"), ("quadratic_weighted_kappa", 28)] == \
        pytest.approx(sum(kappas) / 2)
    aucs = [metrics[f"resnet18-scratch-32px-seed{s}"]["referable_auc"] for s in (0, 1)]
    assert resolution.loc[("resnet18", "scratch"), ("referable_auc", 32)] == \
        pytest.approx(sum(aucs) / 2)

    # Every run: per-grade recall and referable sensitivity from its metrics.json.
    per_run = run_metrics_table(runs)
    one = metrics["resnet18-scratch-28px-seed1"]
    assert per_run.loc["resnet18-scratch-28px-seed1", "recall 4 proliferative"] == \
        pytest.approx(one["per_class"]["4 proliferative"]["recall"])
    assert per_run.loc["resnet18-scratch-28px-seed1", "referable sensitivity"] == \
        pytest.approx(one["referable_sensitivity"])

    # Curves: per epoch, the seed mean of the logged train and test accuracy.
    curves = curve_data(runs, "resnet18", 28)
    logs = [pd.read_csv(grid_run / f"resnet18-scratch-28px-seed{s}/log.csv") for s in (0, 1)]
    assert curves["epoch"].tolist() == [0, 1]
    assert curves["test_accuracy"].tolist() == pytest.approx(
        ((logs[0]["test_accuracy"] + logs[1]["test_accuracy"]) / 2).tolist())

    # The chosen epoch is the one of best validation kappa, as best.ckpt.
    first = runs.set_index("name").loc["resnet18-scratch-28px-seed0"]
    assert first["chosen_epoch"] == logs[0]["val_kappa"].idxmax() + 1


def test_report_files(grid_run):
    report_md = (grid_run / "report.md").read_text()
    assert "Majority-class baseline" in report_md and "43.50%" in report_md
    assert "tracked for these curves only" in report_md
    assert "## Resolution" in report_md
    assert report_md.count("confusion_test_normalized.png") == 4
    html = (grid_run / "report.html").read_text()
    assert "### 32 px" in report_md and "### 28 px" in report_md  # the lab's table per size
    assert "referable AUC @ 28 px" in report_md
    # 4 confusions, curves for 1 arch x 2 sizes, 1 resolution plot.
    assert html.count("data:image/png;base64,") == 4 + 2 + 1
    assert 'src="report_figures' not in html and "<table>" in html


def test_report_marks_unfinished_cells(grid_run, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(grid_run, partial)
    shutil.rmtree(partial / "resnet18-scratch-32px-seed1")
    (partial / "resnet18-scratch-28px-seed1/metrics.json").unlink()
    assert main(["report", str(partial)]) == 0
    states = collect_runs(partial).set_index("name")["state"]
    assert states["resnet18-scratch-32px-seed1"] == "missing"
    assert states["resnet18-scratch-28px-seed1"] == "trained"
    text = (partial / "report.md").read_text()
    for count in ("2 done", "1 trained", "1 missing", "of 4."):
        assert count in text
    assert "`resnet18-scratch-32px-seed1`: missing" in text
    assert "(n=1)" in text  # the 32 px cell has one finished seed left


def test_experiment_skips_finished_cells(grid_run, shared_data, capsys, tmp_path):
    experiment = yaml.safe_load((grid_run / "experiment.yaml").read_text())["experiment"]
    assert main(["experiment", experiment, "--out", str(grid_run), "--data",
                 str(shared_data / "retinamnist/retinamnist.npz")]) == 0
    assert capsys.readouterr().out.count(": done") == 4


def test_report_on_an_empty_folder(tmp_path):
    with pytest.raises(DrgradeError, match="no runs found"):
        write_report(tmp_path)
