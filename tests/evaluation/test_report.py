"""Experiment grid and report: real RetinaMNIST runs, and synthetic run folders (new and old)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_compare import RESAMPLES, prediction_arrays, synthetic_scored, write_evaluation

from drgrade.cli import main
from drgrade.errors import DrgradeError
from drgrade.evaluation.compare import difference_text
from drgrade.evaluation.comparison import compare_models
from drgrade.evaluation.metrics import format_interval
from drgrade.evaluation.report import write_report
from drgrade.evaluation.report_data import (
    collect_evaluations,
    collect_runs,
    comparison_pairs,
    comparisons,
    curve_data,
)
from drgrade.evaluation.report_tables import (
    HEADLINE,
    PATIENTS,
    RECALL,
    REFERABLE,
    evaluation_table,
    lab_table,
    resolution_table,
)
from drgrade.experiment import load_experiment

REPO = Path(__file__).resolve().parents[2]


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every Markdown table row, stripped of tabulate's padding."""
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("|")]


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
def grid_run(shared_data, module_tmp) -> Path:
    """A real 2-size x 2-seed grid, a few steps a cell, trained once for this module."""
    tmp = module_tmp
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

    # Every run: its intervals, per-grade recall and referable sensitivity from metrics.json.
    evaluations = collect_evaluations(runs)
    assert [e.name for e in evaluations] == ["test (own data)"] * 4
    one = metrics["resnet18-scratch-28px-seed1"]
    headline = evaluation_table(evaluations, HEADLINE).set_index("run")
    assert headline.loc["resnet18-scratch-28px-seed1", "kappa"] == \
        format_interval(one["intervals"]["quadratic_weighted_kappa"])
    recall = evaluation_table(evaluations, RECALL).set_index("run")
    assert recall.loc["resnet18-scratch-28px-seed1", "recall 4 proliferative"] == \
        f"{one['per_class']['4 proliferative']['recall']:.3f}"
    referable = evaluation_table(evaluations, REFERABLE).set_index("run")
    assert referable.loc["resnet18-scratch-28px-seed1", "sensitivity (model's grade)"] == \
        format_interval(one["intervals"]["referable_sensitivity"])

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
    assert report_md.count("reliability_test.png") == 4
    # The two seeds' 28 -> 32 px pairs, from their predictions.csv.
    compared = [row for row in table_rows(report_md) if row[0] == "resolution"]
    assert [row[1:3] for row in compared] == [
        [f"resnet18-scratch-28px-seed{s}", f"resnet18-scratch-32px-seed{s}"] for s in (0, 1)]
    html = (grid_run / "report.html").read_text()
    assert "### 32 px" in report_md and "### 28 px" in report_md  # the lab's table per size
    assert "referable AUC @ 28 px" in report_md
    # 4 confusions, curves for 1 arch x 2 sizes, 1 resolution plot, 4 reliability diagrams,
    # 1 plot of the paired differences.
    assert html.count("data:image/png;base64,") == 4 + 2 + 1 + 4 + 1
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


def write_run(folder: Path, pretrained: bool, image_size: int, noise: float,
              model_seed: int, new_format: bool = True) -> Path:
    """A finished run folder: config, a 2-epoch log, and its test evaluation (synthetic)."""
    folder.mkdir(parents=True)
    config = {"data": "synthetic.npz", "out": str(folder), "arch": "resnet18",
              "pretrained": pretrained, "image_size": image_size, "seed": 0,
              "head": "classification", "epochs": 2, "track_test": True}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    pd.DataFrame({"epoch": [0, 1], "train_accuracy": [0.4, 0.5], "test_accuracy": [0.4, 0.45],
                  "val_kappa": [0.3, 0.4]}).to_csv(folder / "log.csv", index=False)
    write_evaluation(folder, synthetic_scored(noise, model_seed), new_format,
                     figures=new_format)
    return folder


@pytest.fixture(scope="module")
def synthetic_grid(tmp_path_factory) -> Path:
    """Pretrained and scratch at 28 and 64 px, one seed, one run also scored on other data."""
    out = tmp_path_factory.mktemp("synthetic") / "runs"
    for number, (pretrained, size) in enumerate([(True, 28), (False, 28), (True, 64),
                                                 (False, 64)]):
        # Pretrained and larger runs are better: the comparisons have something to find.
        noise = 1.6 - 0.5 * pretrained - 0.004 * size
        write_run(out / f"resnet18-{'pretrained' if pretrained else 'scratch'}-{size}px",
                  pretrained, size, noise, model_seed=number + 1)
    write_evaluation(out / "resnet18-pretrained-64px/evaluations/idrid-release-test",
                     synthetic_scored(1.0, seed=9, unreadable=2), data="data/idrid-release",
                     figures=True)
    write_report(out, resamples=RESAMPLES)
    return out


def test_report_shows_intervals_and_external_evaluations(synthetic_grid):
    runs = collect_runs(synthetic_grid)
    metrics = json.loads((synthetic_grid / "resnet18-scratch-64px/metrics.json").read_text())
    cell = lab_table(runs, 64).loc["resnet18", "scratch"]
    # One seed: the estimate with its own bootstrap interval, accuracy in percent.
    accuracy = metrics["intervals"]["accuracy"]
    assert (f"test accuracy: {100 * accuracy['estimate']:.2f}% [{100 * accuracy['low']:.2f}%, "
            f"{100 * accuracy['high']:.2f}%]") in cell
    kappa = format_interval(metrics["intervals"]["quadratic_weighted_kappa"])
    assert f"test kappa: {kappa}" in cell

    evaluations = collect_evaluations(runs)
    external = next(e for e in evaluations if e.name == "idrid-release-test")
    assert external.run == "resnet18-pretrained-64px"
    headline = evaluation_table(evaluations, HEADLINE)
    row = headline[headline["evaluation"] == "idrid-release-test"].iloc[0]
    assert row["data"] == "`data/idrid-release`"
    assert row["images"] == "238 (+2 unreadable)"
    referable = evaluation_table(evaluations, REFERABLE).set_index("evaluation")
    fixed = external.metrics["validation_threshold"]
    assert referable.loc["idrid-release-test", "sensitivity (that threshold)"] == \
        format_interval(fixed["sensitivity"])
    patients = evaluation_table(evaluations, PATIENTS).set_index("evaluation")
    assert patients.loc["idrid-release-test", "patients"] == "119"
    assert patients.loc["idrid-release-test", "AUC"] == \
        format_interval(external.metrics["patient_level"]["referable_auc"])

    text = (synthetic_grid / "report.md").read_text()
    assert ["resnet18-pretrained-64px", "idrid-release-test", "`data/idrid-release`",
            "238 (+2 unreadable)"] in [row[:4] for row in table_rows(text)]
    assert "1,000 resamples" not in text and f"{RESAMPLES} resamples of patients" in text
    assert "[n/a]" not in text
    assert text.count("reliability_test.png") == 5  # 4 runs' own + the external one
    assert "evaluations/idrid-release-test/figures/reliability_test.png" in text
    html = (synthetic_grid / "report.html").read_text()
    assert 'src="resnet18' not in html and "reliability" in html


def test_comparisons_are_compare_models_on_the_runs_files(synthetic_grid):
    runs = collect_runs(synthetic_grid)
    assert sorted(comparison_pairs(runs)) == [
        ("image_size", "resnet18-pretrained-28px", "resnet18-pretrained-64px"),
        ("image_size", "resnet18-scratch-28px", "resnet18-scratch-64px"),
        ("pretrained", "resnet18-scratch-28px", "resnet18-pretrained-28px"),
        ("pretrained", "resnet18-scratch-64px", "resnet18-pretrained-64px"),
    ]
    text = (synthetic_grid / "report.md").read_text()
    assert "## Comparisons" in text and "report_figures/comparisons.png" in text
    for option, a, b, comparison in comparisons(runs, resamples=RESAMPLES):
        x, y = prediction_arrays(synthetic_grid / a), prediction_arrays(synthetic_grid / b)
        expected = compare_models(x["truth"], x["predicted"], x["score"], y["predicted"],
                                  y["score"], x["patients"], resamples=RESAMPLES)
        for name in ("quadratic_weighted_kappa", "referable_auc"):
            assert comparison.differences[name].as_dict() == \
                pytest.approx(expected[name].as_dict())
            assert difference_text(expected[name]) in text
        kind = "resolution" if option == "image_size" else "pretrained vs scratch"
        row = next(row for row in table_rows(text) if row[:3] == [kind, a, b])
        assert row[3] == str(len(x["truth"]))
        assert row[-1] == f"{expected['referable_auc'].p_value:.3g}"
    # The better runs (pretrained, larger) are found better beyond chance on kappa.
    assert "(excludes 0)" in text


def test_report_of_older_run_folders(tmp_path):
    """Runs evaluated before intervals and predictions.csv: reported, with n/a for the rest."""
    out = tmp_path / "runs"
    old = write_run(out / "resnet18-scratch-28px", False, 28, 1.2, model_seed=1,
                    new_format=False)
    write_run(out / "resnet18-pretrained-28px", True, 28, 0.8, model_seed=2)
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    metrics = json.loads((old / "metrics.json").read_text())
    assert f"test kappa: {metrics['quadratic_weighted_kappa']:.3f} [n/a]" in text
    assert "`[n/a]`: evaluated before drgrade computed intervals" in text
    row = next(row for row in table_rows(text)
               if row[:2] == ["resnet18-scratch-28px", "test (own data)"])
    assert row[4] == f"{100 * metrics['accuracy']:.2f}% [n/a]"
    assert row[6] == "n/a"  # the data's own baseline
    assert "n/a for 1 evaluation(s)" in text  # per patient
    assert f"{old}/predictions.csv: not found" in text  # the one comparison, not made
    assert "`resnet18-scratch-28px`, test (own data): no reliability diagram" in text
