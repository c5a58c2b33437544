"""What the report reads from run folders: the runs, their evaluations, the pairs it compares.

Everything comes from config.yaml, environment.json, log.csv and each evaluation folder's
metrics.json, so every number can be traced to the command and config that produced it.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from drgrade.errors import DrgradeError
from drgrade.evaluation.compare import (
    Comparison,
    compare_evaluations,
    evaluation_folder,
    evaluations_of,
)
from drgrade.evaluation.intervals import RESAMPLES
from drgrade.run_folder import (
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    LOG_FILE,
    METRICS_FILE,
    PLAN_FILE,
    chosen_epoch,
    epochs_logged,
    read_run_config,
    run_state,
)

METRICS = {"accuracy": "test accuracy", "quadratic_weighted_kappa": "test kappa",
           "referable_auc": "referable AUC"}
# Options a comparison pairs runs on: B - A is pretrained - scratch, larger - smaller size,
# both eyes - single eye.
PAIRED = {"pretrained": "pretrained vs scratch", "image_size": "resolution",
          "eyes": "both eyes vs single eye"}
EYES = ("single", "both")  # the order of `eyes` in a pair: A single, B both


def _init(pretrained: bool) -> str:
    return "pretrained" if pretrained else "scratch"


def collect_runs(runs_dir: Path) -> pd.DataFrame:
    """One row per run (or planned cell): settings, state, chosen epoch, test metrics."""
    runs_dir = Path(runs_dir)
    plan_file = runs_dir / PLAN_FILE
    if plan_file.is_file():
        names = yaml.safe_load(plan_file.read_text())["cells"]
    else:
        names = sorted(p.name for p in runs_dir.iterdir() if (p / CONFIG_FILE).is_file())
    if not names:
        raise DrgradeError(f"{runs_dir}: no runs found (folders with {CONFIG_FILE})")
    runs = pd.DataFrame([_run_row(runs_dir / name) for name in names])
    # Missing cells leave gaps that would turn sizes into floats ("28.0 px").
    for column in ("image_size", "seed", "epochs"):
        if column in runs:
            runs[column] = runs[column].astype("Int64")
    return runs


def _run_row(run: Path) -> dict:
    row: dict = {"name": run.name, "run": str(run)}
    if not (run / CONFIG_FILE).is_file():
        return row | {"state": "missing"}
    config = read_run_config(run)
    row |= {key: config[key] for key in ("arch", "pretrained", "image_size", "seed", "head",
                                         "epochs", "track_test")}
    row["init"] = _init(config["pretrained"])
    row["state"] = run_state(run, config["epochs"])
    if (run / ENVIRONMENT_FILE).is_file():
        row["command"] = json.loads((run / ENVIRONMENT_FILE).read_text())["command"]
    if (chosen := chosen_epoch(run)) is not None:
        row["epochs_done"] = epochs_logged(run)
        row["chosen_epoch"] = chosen[0]
    if (run / METRICS_FILE).is_file():
        metrics = json.loads((run / METRICS_FILE).read_text())
        row |= {key: metrics[key] for key in METRICS}
        row["metrics"] = metrics
    return row


@dataclass(frozen=True)
class Evaluation:
    """One evaluation folder of a finished run: its own split, or RUN/evaluations/NAME."""

    run: str
    name: str
    folder: Path
    metrics: dict


def collect_evaluations(runs: pd.DataFrame) -> list[Evaluation]:
    """Every finished run's own evaluation, each followed by its evaluations on other data."""
    evaluations = []
    for _, run in runs[runs["state"] == "done"].iterrows():
        own = run["metrics"]
        evaluations.append(Evaluation(run["name"], f"{own.get('split', 'test')} (own data)",
                                      Path(run["run"]), own))
        evaluations += [Evaluation(run["name"], folder.name, folder,
                                   json.loads((folder / METRICS_FILE).read_text()))
                        for folder in evaluations_of(run["run"])]
    return evaluations


def comparison_pairs(runs: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(option, A, B) for finished runs whose configs differ in one PAIRED option only.

    B is the pretrained run of a pretrained/scratch pair, the next larger size of a
    resolution pair, the binocular run of an eyes pair; every other option (arch, seed,
    epochs, ...) is equal.
    """
    done = runs[runs["state"] == "done"]
    # Runs from before the `eyes` option were single-eye runs.
    configs = {name: {"eyes": EYES[0]} | read_run_config(Path(run))
               for name, run in zip(done["name"], done["run"], strict=True)}
    pairs = []
    for option in PAIRED:
        groups: dict[str, list[str]] = {}
        for name, config in configs.items():
            rest = {key: value for key, value in config.items() if key not in ("out", option)}
            groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(name)
        for names in groups.values():
            ordered = sorted(names, key=lambda name: _rank(option, configs[name][option]))
            pairs += [(option, a, b) for a, b in itertools.pairwise(ordered)
                      if configs[a][option] != configs[b][option]]
    return pairs


def _rank(option: str, value):
    """Where a value of a PAIRED option sorts: A before B."""
    return EYES.index(value) if option == "eyes" else value


def comparisons(runs: pd.DataFrame, resamples: int = RESAMPLES,
                seed: int = 0) -> list[tuple[str, str, str, Comparison | str]]:
    """Each pair of `comparison_pairs` with its paired comparison, or why there is none."""
    folders = dict(zip(runs["name"], runs["run"], strict=True))
    result = []
    for option, a, b in comparison_pairs(runs):
        try:
            outcome = compare_evaluations(evaluation_folder(folders[a]),
                                          evaluation_folder(folders[b]), resamples, seed)
        except DrgradeError as error:
            # One pair that cannot be compared (an older run) must not stop the report.
            outcome = str(error).splitlines()[0]
        result.append((option, a, b, outcome))
    return result


def curve_data(runs: pd.DataFrame, arch: str, image_size: int) -> pd.DataFrame:
    """Per-epoch train/test accuracy of one architecture, by initialisation (seed-averaged)."""
    frames = []
    chosen = runs[(runs["arch"] == arch) & (runs["image_size"] == image_size)
                  & runs["state"].isin(["done", "trained"])]
    for _, run in chosen.iterrows():
        log = pd.read_csv(Path(run["run"]) / LOG_FILE)
        columns = ["epoch", "train_accuracy"] + (["test_accuracy"] if "test_accuracy" in log
                                                 else [])
        frames.append(log[columns].assign(init=run["init"]))
    if not frames:
        return pd.DataFrame(columns=["init", "epoch", "train_accuracy", "test_accuracy"])
    return pd.concat(frames).groupby(["init", "epoch"], as_index=False).mean()
