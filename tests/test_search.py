"""drgrade search: a seeded, resumable Optuna study of real RetinaMNIST trials, a few steps each."""

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from lightning.pytorch.callbacks import Callback

from drgrade import search as search_module
from drgrade.cli import main
from drgrade.errors import DrgradeError
from drgrade.search import STUDY_FILE, STUDY_NAME, load_search

REPO = Path(__file__).resolve().parents[1]
SPACE = {"lr": {"low": "1e-3", "high": 3e-3, "log": True},  # "1e-3": YAML 1.1 reads a string
         "rotation": {"low": 0, "high": 180, "step": 15},
         "head": ["classification", "regression"]}


def _search_file(tmp_path: Path, space: dict | None = None, **keys) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs/retinamnist.yaml"),
        "set": {"epochs": 2, "max_train_batches": 2, "batch_size": 32},
        "seed": 3, "space": SPACE if space is None else space, **keys,
    }, sort_keys=False))
    return path


def _trials(out: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / STUDY_FILE}")
    return study.get_trials()


def _search(path: Path, out: Path, trials: int, npz: Path) -> int:
    return main(["search", str(path), "--out", str(out), "--trials", str(trials),
                 "--data", str(npz)])


@pytest.fixture(scope="module")
def npz(shared_data) -> Path:
    return shared_data / "retinamnist/retinamnist.npz"


@pytest.fixture(scope="module")
def searched(npz, module_tmp) -> tuple[Path, Path]:
    """A real 3-trial search (its file and folder), run once for this module."""
    tmp = module_tmp
    path = _search_file(tmp)
    assert _search(path, tmp / "out", 3, npz) == 0
    return path, tmp / "out"


def test_search_runs_end_to_end(searched):
    _, out = searched
    trials = _trials(out)
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(t.params["rotation"] % 15 == 0 and 1e-3 <= t.params["lr"] <= 3e-3
               for t in trials)
    best = max(trials, key=lambda t: t.value)
    # The test split is scored for the chosen trial only.
    assert [(out / f"trial-{t.number}" / "metrics.json").is_file() for t in trials] == \
        [t is best for t in trials]
    metrics = json.loads((out / f"trial-{best.number}" / "metrics.json").read_text())
    report = (out / "search.md").read_text()
    assert f"## Chosen recipe: trial {best.number}" in report
    assert f"--lr {best.params['lr']!r}" in report and "--out" in report
    kappa = metrics["intervals"]["quadratic_weighted_kappa"]
    assert f"{kappa['estimate']:.3f} [{kappa['low']:.3f}, {kappa['high']:.3f}]" in report
    assert (out / "search.html").read_text().startswith("<!doctype html>")


def test_value_is_best_validation_kappa(searched):
    _, out = searched
    for trial in _trials(out):
        log = pd.read_csv(out / f"trial-{trial.number}" / "log.csv")
        assert trial.value == pytest.approx(log["val_kappa"].max())
        assert sorted(trial.intermediate_values) == list(log["epoch"])


def test_rerun_adds_only_missing_trials_and_seed_repeats(searched, npz, tmp_path):
    path, out = searched
    before = [(t.number, t.params, t.value) for t in _trials(out)]
    assert _search(path, out, 4, npz) == 0
    after = _trials(out)
    assert [(t.number, t.params, t.value) for t in after[:3]] == before
    assert len(after) == 4 and after[3].state == optuna.trial.TrialState.COMPLETE
    # The same seed in a new folder draws the same first trial.
    assert _search(path, tmp_path / "again", 1, npz) == 0
    assert _trials(tmp_path / "again")[0].params == before[0][1]


class Killed(Exception):
    """Stands in for a kill after the first epoch's checkpoints were written."""


class KillAtSecondEpoch(Callback):
    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == 1:
            raise Killed


def test_interrupted_trial_resumes_from_last_checkpoint(npz, tmp_path, monkeypatch):
    path, out = _search_file(tmp_path), tmp_path / "out"
    real_train = search_module.train
    monkeypatch.setattr(search_module, "train", lambda config, resume, extra_callbacks:
                        real_train(config, resume, extra_callbacks=[*extra_callbacks,
                                                                    KillAtSecondEpoch()]))
    with pytest.raises(Killed):
        _search(path, out, 1, npz)
    [trial] = _trials(out)
    assert trial.state == optuna.trial.TrialState.RUNNING
    assert (out / "trial-0/checkpoints/last.ckpt").is_file()
    monkeypatch.setattr(search_module, "train", real_train)
    assert _search(path, out, 1, npz) == 0
    [resumed] = _trials(out)
    assert resumed.state == optuna.trial.TrialState.COMPLETE
    assert resumed.params == trial.params
    assert "resumed" in json.loads((out / "trial-0/environment.json").read_text())
    assert len(pd.read_csv(out / "trial-0/log.csv")) == 2


@pytest.mark.parametrize(("space", "message"), [
    ({"weight_decy": {"low": 0, "high": 0.1}}, "unknown option 'weight_decy'; did you mean "
                                               "'weight_decay'"),
    ({"lr": {"low": 1e-3}}, r"space.lr: a range has low and high"),
    ({"lr": {"low": 1e-3, "high": 1e-2, "scale": "log"}}, r"space.lr: a range has low"),
    ({"lr": {"low": 0, "high": 1e-2, "log": True}}, r"space.lr: a log range needs low > 0"),
    ({"lr": {"low": 1e-2, "high": 1e-3}}, r"space.lr: low 0.01 is above high 0.001"),
    ({"lr": {"low": "fast", "high": 1e-3}}, r"space.lr.low: expected a number"),
    ({"image_size": {"low": 28.5, "high": 64}}, r"space.image_size.low: expected an integer"),
    ({"head": {"low": 0, "high": 1}}, r"space.head: head is not a number"),
    ({"head": []}, r"space.head: an empty list"),
    ({"lr": 0.01}, r"space.lr: expected a list of values or a range"),
    ({"head": ["classification", "ordinal"]}, r"space.head = 'ordinal': head: 'ordinal' is "
                                              r"not one of"),
    ({"lr": {"low": -1e-3, "high": 1e-3}}, r"space.lr = -0.001: lr: must be positive"),
    ({"epochs": [1, 2]}, r"epochs is both searched \(space\) and fixed"),
])
def test_bad_search_files(npz, tmp_path, space, message):
    with pytest.raises(DrgradeError, match=message):
        load_search(_search_file(tmp_path, space), {"data": str(npz)})


def test_bad_search_keys(npz, tmp_path):
    with pytest.raises(DrgradeError, match=r"pruner: 'hyperband' is not one of median, none"):
        load_search(_search_file(tmp_path, pruner="hyperband"), {"data": str(npz)})
    with pytest.raises(DrgradeError, match=r"unknown key\(s\) sampler"):
        load_search(_search_file(tmp_path, sampler="tpe"), {"data": str(npz)})


def test_rerun_with_another_plan_is_refused(searched, npz, tmp_path):
    _, out = searched
    changed = _search_file(tmp_path, {**SPACE, "head": ["regression"]}, seed=4)
    with pytest.raises(DrgradeError, match="started with another seed, space"):
        search_module.run_search(changed, out, 3, {"data": str(npz)})


def test_pruned_trial_stops_early_and_is_reported(npz, tmp_path, monkeypatch, capsys):
    # No validation kappa exceeds 2, so this pruner prunes each trial at its first report:
    # the median pruner's decision stood in for by one that is certain, the path is real.
    monkeypatch.setattr(optuna.pruners, "MedianPruner",
                        lambda: optuna.pruners.ThresholdPruner(upper=None, lower=2.0))
    path, out = _search_file(tmp_path, set={"epochs": 3, "max_train_batches": 2,
                                            "batch_size": 32}), tmp_path / "out"
    assert _search(path, out, 2, npz) == 0
    assert "trial-1: pruned after 1 of 3 epochs" in capsys.readouterr().out
    trials = _trials(out)
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    for trial in trials:
        assert sorted(trial.intermediate_values) == [0]  # stopped after its first epoch
        assert len(pd.read_csv(out / f"trial-{trial.number}" / "log.csv")) == 1
    report = (out / "search.md").read_text()
    assert "2 pruned" in report and "Chosen recipe" not in report
    assert all((out / f"trial-{t.number}/checkpoints/last.ckpt").is_file() for t in trials)
    # A rerun does not take a pruned trial for an interrupted one.
    assert _search(path, out, 2, npz) == 0
    assert len(_trials(out)) == 2
