"""A hyperparameter search with Optuna: each trial a run folder, selected on validation kappa.

A search file names a base training config, values set for every trial, and the space:

    base: ../retinamnist.yaml        # relative to this file
    set: {epochs: 5}                 # optional, for every trial
    trials: 20                       # optional: how many in total (--trials overrides)
    seed: 0                          # optional: the sampler's seed
    pruner: median                   # optional: median (default) or none
    space:
      lr: {low: 1.0e-4, high: 1.0e-2, log: true}   # a range: int or float by the option
      rotation: {low: 0, high: 180, step: 15}
      head: [classification, regression]           # a list: one of these

The study lives in OUT/study.db (SQLite) and trial N trains into OUT/trial-N/. A rerun
continues the study up to the number of trials asked for; a trial cut off mid-training
(Ctrl+C, a kill) is still `running` in the study and is resumed from its last.ckpt, with the
same parameters and trial number. One process per study folder: a second one would take the
first one's running trial for an interrupted one.
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import FrozenTrial, Trial, TrialState
from optuna_integration import PyTorchLightningPruningCallback

from drgrade.config import TrainConfig, coerce_value, field_type, load_config, read_yaml_file
from drgrade.errors import DrgradeError
from drgrade.evaluation.evaluate import evaluate
from drgrade.evaluation.search_report import write_search_report
from drgrade.fit import train
from drgrade.run_folder import METRICS_FILE, chosen_epoch, epochs_logged, run_state

SEARCH_KEYS = {"base", "set", "space", "trials", "seed", "pruner"}
RANGE_KEYS = {"low", "high", "log", "step"}
PRUNERS = ("median", "none")
DEFAULT_TRIALS = 20
STUDY_FILE = "study.db"
STUDY_NAME = "drgrade-search"
MONITOR = "val_kappa"  # the only number a trial is chosen or pruned on: never test

# drgrade prints one line per trial; Optuna's own per-trial log lines would repeat them.
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Search:
    """A parsed search file: where trials start from, what they share, what they vary."""

    path: Path
    base: Path | None
    shared: dict
    space: dict[str, BaseDistribution]
    trials: int
    seed: int
    pruner: str

    def plan(self) -> dict:
        """What a study was started with; a rerun must match it (the trial count may grow)."""
        return {"base": str(self.base) if self.base else None, "set": self.shared,
                "space": {name: distribution_to_json(d) for name, d in self.space.items()},
                "seed": self.seed, "pruner": self.pruner}

    def config(self, params: dict, run: Path) -> TrainConfig:
        """The training config of one trial."""
        return load_config(self.base, {**self.shared, **params, "out": str(run)})

    def command(self, params: dict, run: Path) -> str:
        """The `drgrade train` command that trains `params` again into `run`."""
        words = ["drgrade", "train"]
        if self.base:
            words += ["--config", str(self.base)]
        for name, value in {**self.shared, **params}.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                words.append(flag if value else "--no-" + flag[2:])
            elif value is not None:
                words += [flag, str(value)]
        return shlex.join([*words, "--out", str(run)])


def _number(path: Path, where: str, value, kind: type):
    """A range bound as `kind`; YAML 1.1 reads 1e-4 (no dot) as a string, so convert here."""
    if isinstance(value, bool):
        raise DrgradeError(f"{path}: {where}: expected a number, got {value!r}")
    return coerce_value(where, value, kind, f"{path}: ")


def _distribution(path: Path, name: str, spec, kind: type) -> BaseDistribution:
    """The Optuna distribution of one `space:` entry, checked against the option's type."""
    where = f"space.{name}"
    if isinstance(spec, list):
        if not spec:
            raise DrgradeError(f"{path}: {where}: an empty list; give the values to try")
        return CategoricalDistribution([coerce_value(where, v, kind, f"{path}: ") for v in spec])
    if not isinstance(spec, dict):
        raise DrgradeError(f"{path}: {where}: expected a list of values or a range "
                           f"{{low: .., high: .., log: true|false, step: ..}}, got {spec!r}")
    unknown = set(spec) - RANGE_KEYS
    if unknown or not {"low", "high"} <= set(spec):
        raise DrgradeError(f"{path}: {where}: a range has low and high (and optionally log, "
                           f"step); got {', '.join(sorted(spec))}")
    if kind not in (int, float):
        raise DrgradeError(f"{path}: {where}: {name} is not a number, so it takes a list of "
                           f"values, not a range")
    low, high = (_number(path, f"{where}.{key}", spec[key], kind) for key in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise DrgradeError(f"{path}: {where}.log: expected true or false, got {log!r}")
    step = spec.get("step")
    step = None if step is None else _number(path, f"{where}.step", step, kind)
    if low > high:
        raise DrgradeError(f"{path}: {where}: low {low} is above high {high}")
    if log and low <= 0:
        raise DrgradeError(f"{path}: {where}: a log range needs low > 0, got {low}")
    if log and step is not None:
        raise DrgradeError(f"{path}: {where}: give log or step, not both (Optuna samples "
                           "log ranges continuously)")
    if step is not None and step <= 0:
        raise DrgradeError(f"{path}: {where}.step: must be positive, got {step}")
    if kind is int:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(low, high, log=log, step=step)


def load_search(path: Path | str, overrides: dict | None = None) -> Search:
    """A validated search: every option named exists, every value it may take is valid."""
    path = Path(path)
    spec = read_yaml_file(path, "search", SEARCH_KEYS)
    if not isinstance(spec.get("space"), dict) or not spec["space"]:
        raise DrgradeError(f"{path}: needs a `space:` mapping of option: values or range")
    known = {spec.name: spec for spec in fields(TrainConfig)}
    overrides = overrides or {}
    space = {}
    for name, values in spec["space"].items():
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise DrgradeError(f"{path}: space: unknown option {name!r}{hint}")
        if name == "out":
            raise DrgradeError(f"{path}: space.out: each trial's folder is OUT/trial-N; "
                               "remove out from the space")
        if name in (spec.get("set") or {}) or name in overrides:
            raise DrgradeError(f"{path}: {name} is both searched (space) and fixed (set: or a "
                               f"--{name.replace('_', '-')} flag); keep one")
        space[name] = _distribution(path, name, values, field_type(known[name]))
    pruner = str(spec.get("pruner", PRUNERS[0])).lower()
    if pruner not in PRUNERS:
        raise DrgradeError(f"{path}: pruner: {spec['pruner']!r} is not one of "
                           f"{', '.join(PRUNERS)}")
    trials = coerce_value("trials", spec.get("trials", DEFAULT_TRIALS), int, f"{path}: ")
    seed = coerce_value("seed", spec.get("seed", 0), int, f"{path}: ")
    # normpath: the recipe's command reads configs/x.yaml, not configs/searches/../x.yaml.
    base = Path(os.path.normpath(path.parent / spec["base"])) if spec.get("base") else None
    search = Search(path, base, {**(spec.get("set") or {}), **overrides}, space, trials, seed,
                    pruner)
    # Every value a trial may draw is checked now, not hours into the search.
    for name, distribution in space.items():
        ends = (distribution.choices if isinstance(distribution, CategoricalDistribution)
                else (distribution.low, distribution.high))
        for value in ends:
            try:
                search.config({name: value}, Path("trial"))
            except DrgradeError as error:
                raise DrgradeError(f"{path}: space.{name} = {value!r}: {error}") from None
    return search


def _suggest(trial: Trial, name: str, distribution: BaseDistribution):
    """The trial's value of one option (a resumed trial gets the value it was given)."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high,
                                 step=distribution.step, log=distribution.log)
    return trial.suggest_float(name, distribution.low, distribution.high,
                               step=distribution.step, log=distribution.log)


def best_val_kappa(run: Path) -> float:
    """A trial's value: the best validation kappa of its epochs (the epoch best.ckpt holds)."""
    return chosen_epoch(run)[1]


def trial_folder(out: Path, number: int) -> Path:
    """Where trial `number` trains."""
    return Path(out) / f"trial-{number}"


def _open_study(search: Search, out: Path) -> optuna.Study:
    """The study in OUT/study.db, created or continued; refused if started with another plan."""
    pruner = optuna.pruners.MedianPruner() if search.pruner == "median" \
        else optuna.pruners.NopPruner()
    study = optuna.create_study(storage=f"sqlite:///{(out / STUDY_FILE).resolve()}",
                                study_name=STUDY_NAME, direction="maximize", pruner=pruner,
                                load_if_exists=True)
    plan = json.loads(json.dumps(search.plan()))  # as the database gives it back
    started = study.user_attrs.get("plan")
    if started is None:
        study.set_user_attr("plan", plan)
    elif started != plan:
        changed = sorted(key for key in plan if plan[key] != started.get(key))
        raise DrgradeError(f"{out}: holds a search started with another {', '.join(changed)} "
                           f"than {search.path} gives now; use another --out")
    return study


class EpochEndPruning(PyTorchLightningPruningCallback):
    """Optuna's pruning callback, but a pruned trial stops at the end of its epoch instead
    of raising mid-validation, so its run folder keeps that epoch's log.csv row, curves and
    checkpoints like any other run's."""

    pruned = False

    def on_validation_end(self, trainer, module) -> None:
        try:
            super().on_validation_end(trainer, module)
        except optuna.TrialPruned:
            self.pruned = trainer.should_stop = True


def _run_trial(search: Search, study: optuna.Study, trial: Trial, params: dict,
               out: Path) -> str:
    """Train one trial (continuing its run folder if interrupted) and tell the study."""
    run = trial_folder(out, trial.number)
    config = search.config(params, run)
    state = run_state(run, config.epochs)
    if state in ("new", "interrupted"):
        pruning = EpochEndPruning(trial, monitor=MONITOR)
        try:
            train(config, resume=state == "interrupted", extra_callbacks=[pruning])
        except DrgradeError as error:
            # A diverging learning rate is an outcome of the search, not a reason to stop it.
            trial.set_user_attr("error", str(error))
            study.tell(trial, state=TrialState.FAIL)
            return f"failed: {error}"
        if pruning.pruned:
            study.tell(trial, state=TrialState.PRUNED)
            return f"pruned after {epochs_logged(run)} of {config.epochs} epochs"
    value = best_val_kappa(run)
    study.tell(trial, value)
    return f"val kappa {value:.3f}"


def run_search(path: Path | str, out: Path | str, trials: int | None = None,
               overrides: dict | None = None, say=print) -> tuple[Path, Path]:
    """Run the search up to `trials` in total, evaluate the best on test, write search.md."""
    out = Path(out)
    search = load_search(path, overrides)
    total = search.trials if trials is None else trials
    if total < 1:
        raise DrgradeError(f"--trials must be at least 1, got {total}")
    out.mkdir(parents=True, exist_ok=True)
    study = _open_study(search, out)
    started = time.monotonic()

    def attempt(trial: Trial, verb: str) -> None:
        # A resumed trial's suggestions return the values it was first given.
        params = {name: _suggest(trial, name, d) for name, d in search.space.items()}
        say(f"[trial {trial.number + 1}/{total}, {(time.monotonic() - started) / 60:.1f} min] "
            f"{verb} trial-{trial.number} {params}")
        say(f"  trial-{trial.number}: {_run_trial(search, study, trial, params, out)}")

    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attempt(Trial(study, frozen._trial_id), "resuming")
    while (number := len(study.get_trials(deepcopy=False))) < total:
        # Seeded per trial number, so a search resumed after a kill draws exactly what an
        # uninterrupted one would (a sampler seeded once per process would restart its stream).
        seed = int(np.random.SeedSequence([search.seed, number]).generate_state(1)[0])
        study.sampler = optuna.samplers.TPESampler(seed=seed)
        attempt(study.ask(), "training")
    return _report(search, study, out)


def _report(search: Search, study: optuna.Study, out: Path) -> tuple[Path, Path]:
    """Evaluate the chosen trial on its test split (once) and write search.md and .html."""
    trials: list[FrozenTrial] = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    metrics = command = None
    if best is not None:
        run = trial_folder(out, best.number)
        if not (run / METRICS_FILE).is_file():
            evaluate(run, split="test", progress=False)
        metrics = json.loads((run / METRICS_FILE).read_text())
        command = search.command(best.params, out / "recipe")
    return write_search_report(out, search.path, trials, best, command, metrics,
                               {"seed": search.seed, "pruner": search.pruner})
