"""An experiment: a grid of training configs, each cell its own run folder, then the report.

An experiment file names a base training config, values set for every cell, and the grid:

    base: ../retinamnist.yaml        # relative to this file
    set: {epochs: 8}                 # optional, for every cell
    grid:
      arch: [resnet18, resnet50]
      pretrained: [false]
      image_size: [28, 64]
      seed: [0, 1, 2]

A grid value may be a mapping that sets several options at once, named by its own key:
`arch: [{arch: resnet18, epochs: 10}, {arch: resnet50, epochs: 5}]`.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from drgrade.atomic import write_text
from drgrade.config import TrainConfig, load_config, read_yaml_file
from drgrade.errors import DrgradeError
from drgrade.evaluation.evaluate import evaluate
from drgrade.fit import train
from drgrade.run_folder import PLAN_FILE, run_state

EXPERIMENT_KEYS = {"base", "set", "grid"}


@dataclass
class Cell:
    """One grid cell: its run folder name and its training config."""

    name: str
    config: TrainConfig


def cell_name(values: dict) -> str:
    """A readable, unique folder name from a cell's grid values, e.g. resnet18-scratch-28px."""
    parts = []
    for key, value in values.items():
        if key == "pretrained":
            parts.append("pretrained" if value else "scratch")
        elif key == "image_size":
            parts.append(f"{value}px")
        elif key == "seed":
            parts.append(f"seed{value}")
        elif key == "arch":
            parts.append(str(value))
        else:
            parts.append(f"{key}={value}")
    return "-".join(parts)


def load_experiment(path: Path | str, out: Path | str,
                    overrides: dict | None = None) -> tuple[dict, list[Cell]]:
    """The experiment plan (as written to OUT/experiment.yaml) and its cells."""
    path, out = Path(path), Path(out)
    spec = read_yaml_file(path, "experiment", EXPERIMENT_KEYS)
    if not isinstance(spec.get("grid"), dict) or not spec["grid"]:
        raise DrgradeError(f"{path}: needs a `grid:` mapping of option: [values, ...]")
    base = (path.parent / spec["base"]) if spec.get("base") else None
    grid = {key: values if isinstance(values, list) else [values]
            for key, values in spec["grid"].items()}
    shared = {**(spec.get("set") or {}), **(overrides or {})}
    cells = []
    for combination in itertools.product(*grid.values()):
        values: dict = {}
        for key, value in zip(grid, combination, strict=True):
            # A mapping sets several options with one grid value: {arch: resnet50, epochs: 5}.
            values.update(value if isinstance(value, dict) else {key: value})
        name = cell_name({key: values[key] for key in grid})
        # Test curves are needed for the lab's comparison figure (never for selection).
        settings = {**shared, **values, "out": str(out / name), "track_test": True}
        try:
            cells.append(Cell(name, load_config(base, settings)))
        except DrgradeError as error:
            raise DrgradeError(f"{path}, cell {name}: {error}") from None
    plan = {"experiment": str(path), "base": str(base) if base else None, "set": shared,
            "grid": grid, "cells": [cell.name for cell in cells]}
    return plan, cells


def run_experiment(path: Path | str, out: Path | str, overrides: dict | None = None,
                   say=print) -> list[Cell]:
    """Train and evaluate every cell not yet done; resume an interrupted one."""
    out = Path(out)
    plan, cells = load_experiment(path, out, overrides)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / PLAN_FILE, yaml.safe_dump(plan, sort_keys=False))
    started = time.monotonic()
    for number, cell in enumerate(cells, start=1):
        run = Path(cell.config.out)
        state = run_state(run, cell.config.epochs)
        elapsed = time.monotonic() - started
        say(f"[cell {number}/{len(cells)}, {elapsed / 60:.1f} min] {cell.name}: {state}")
        if state in ("new", "interrupted"):
            train(cell.config, resume=state == "interrupted")
        if state != "done":
            evaluate(run, split="test", progress=False)
    return cells
