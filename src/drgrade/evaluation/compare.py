"""`drgrade compare`: is model B better than model A on the same images, beyond chance?

Reads two evaluation folders' predictions.csv (a run folder holds its own test split's,
RUN/evaluations/NAME an external dataset's), pairs the images by id and runs the paired
bootstrap of `compare_models`, resampling patients. Imports no torch: it reads files only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from drgrade.atomic import write_text
from drgrade.errors import DrgradeError
from drgrade.evaluation.comparison import (
    COMPARED,
    SHOWN_IDS,
    Difference,
    align_predictions,
    compare_models,
)
from drgrade.evaluation.intervals import LEVEL, RESAMPLES
from drgrade.evaluation.metrics import format_value
from drgrade.run_folder import (
    CONFIG_FILE,
    EVALUATIONS_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
)

LABELS = {"accuracy": "accuracy", "quadratic_weighted_kappa": "kappa",
          "referable_auc": "referable AUC"}
# Columns every predictions.csv has (`drgrade evaluate`); p0..p4 or score are not needed here.
REQUIRED = ("image", "patient", "grade", "predicted", "referable_score")
# Read as text: ids such as 007 or 10_left must not become numbers.
TEXT_COLUMNS = {"image": str, "patient": str, "eye": str, "error": str}


def evaluations_of(run: Path) -> list[Path]:
    """A run's evaluations on other datasets: RUN/evaluations/NAME folders with metrics.json."""
    return sorted(folder.parent for folder in (Path(run) / EVALUATIONS_DIR).glob(
        f"*/{METRICS_FILE}"))


def evaluation_folder(path: Path | str, data: str | None = None, split: str = "test") -> Path:
    """The evaluation folder PATH names: a run folder's own, RUN/evaluations/DATA, or PATH.

    `data` names a folder under RUN/evaluations, with or without the `-SPLIT` suffix that
    `drgrade evaluate` adds. The folder's metrics.json must be of `split`.
    """
    path = Path(path)
    if not path.is_dir():
        raise DrgradeError(f"{path}: not a folder; give a run folder or an evaluation folder "
                           f"(RUN/{EVALUATIONS_DIR}/NAME)")
    is_run = (path / CONFIG_FILE).is_file()
    folder = path
    if data is not None:
        if not is_run:
            raise DrgradeError(f"{path}: --data {data} names a folder under a run's "
                               f"{EVALUATIONS_DIR}/, but this is not a run folder (no "
                               f"{CONFIG_FILE}); give run folders, or drop --data")
        candidates = [path / EVALUATIONS_DIR / name for name in (data, f"{data}-{split}")]
        found = [folder for folder in candidates if folder.is_dir()]
        if not found:
            present = ", ".join(f.name for f in evaluations_of(path)) or "none"
            raise DrgradeError(f"{path}: no evaluation on {data!r} (looked for "
                               f"{' and '.join(str(c) for c in candidates)}; evaluations "
                               f"present: {present}); run `drgrade evaluate {path} --data "
                               f"DATA --split {split}` first")
        folder = found[0]
    predictions = folder / PREDICTIONS_FILE
    if not predictions.is_file():
        what = "its own test split" if folder == path and is_run else "this evaluation"
        raise DrgradeError(f"{predictions}: not found, so {what} has no per-image predictions "
                           f"to compare (evaluated before drgrade wrote them, or never); run "
                           f"`drgrade evaluate {path if is_run else 'RUN --data DATA'}` first")
    metrics_file = folder / METRICS_FILE
    if metrics_file.is_file():
        scored = json.loads(metrics_file.read_text()).get("split", split)
        if scored != split:
            raise DrgradeError(f"{metrics_file}: holds the {scored!r} split, not {split!r}; "
                               f"pass --split {scored}, or evaluate the {split} split first")
    return folder


def read_predictions(folder: Path) -> pd.DataFrame:
    """FOLDER/predictions.csv, checked for the columns a comparison needs."""
    path = Path(folder) / PREDICTIONS_FILE
    try:
        table = pd.read_csv(path, dtype=TEXT_COLUMNS)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DrgradeError(f"{path}: not a readable predictions CSV ({error}); rerun "
                           "`drgrade evaluate` to write it again") from None
    missing = [column for column in REQUIRED if column not in table]
    if missing:
        raise DrgradeError(f"{path}: no column(s) {', '.join(missing)}; it was not written by "
                           "`drgrade evaluate` (rerun it to write predictions.csv)")
    for column in ("image", "patient", "grade"):
        empty = table[column].isna()
        if empty.any():
            raise DrgradeError(f"{path}: {int(empty.sum())} row(s) without {column!r} (first "
                               f"at line {int(np.flatnonzero(empty)[0]) + 2}); rerun "
                               "`drgrade evaluate` to write it again")
    return table


def _check_same(a: pd.DataFrame, b: pd.DataFrame, column: str, names: tuple[str, str]) -> None:
    """Aligned rows must agree on `column`: the two were scored on the same labels."""
    differ = a[column].astype(str).to_numpy() != b[column].astype(str).to_numpy()
    if differ.any():
        shown = ", ".join(f"{image} ({x} vs {y})" for image, x, y in zip(
            a["image"][differ][:SHOWN_IDS], a[column][differ], b[column][differ], strict=False))
        raise DrgradeError(f"{int(differ.sum())} image(s) have a different {column} in "
                           f"{names[0]} and {names[1]}: {shown}; the two were scored against "
                           "different label files: evaluate both on the same data")


@dataclass(frozen=True)
class Comparison:
    """B - A on the images both evaluation folders scored, with how they were resampled."""

    a: Path
    b: Path
    n_images: int
    n_patients: int
    n_unreadable: int  # left out: unreadable for A or for B
    resamples: int
    seed: int
    differences: dict[str, Difference]

    def as_dict(self) -> dict:
        """The comparison as `--out FILE.json` stores it."""
        return {"a": str(self.a), "b": str(self.b), "n_images": self.n_images,
                "n_patients": self.n_patients, "n_unreadable": self.n_unreadable,
                "bootstrap": {"resamples": self.resamples, "level": LEVEL, "seed": self.seed,
                              "unit": self.unit},
                **{name: d.as_dict() for name, d in self.differences.items()}}

    @property
    def unit(self) -> str:
        """What the bootstrap resampled: patients, or images where none shares a patient."""
        return "patients" if self.n_patients < self.n_images else "images"

    def lines(self) -> list[str]:
        """The printed table: each metric of A and B and the difference with its interval."""
        left_out = (f"; {self.n_unreadable:,} unreadable for A or B left out"
                    if self.n_unreadable else "")
        lines = [f"A: {self.a}", f"B: {self.b}",
                 f"{self.n_images:,} images of {self.n_patients:,} patients{left_out}; paired "
                 f"bootstrap of {self.unit}, {self.resamples:,} resamples, seed {self.seed}, "
                 f"{LEVEL:.0%} intervals", ""]
        for name in COMPARED:
            d = self.differences[name]
            lines.append(f"{LABELS[name]}: A {format_value(d.a)}, B {format_value(d.b)}, B - A "
                         f"{difference_text(d)}"
                         + (f", DeLong p = {_p_value(d.p_value)}" if name == "referable_auc"
                            else ""))
        return lines


def _p_value(p: float | None) -> str:
    # None: fewer than 2 images of a class, or identical scores (no variance to test).
    return "n/a" if p is None else f"{p:.3g}"


def difference_text(d: Difference) -> str:
    """`+0.019 [-0.030, +0.068] (includes 0)`: the difference, its interval, the verdict."""
    if d.difference.estimate is None:
        return "n/a"
    if d.difference.low is None:
        return f"{d.difference.estimate:+.3f} [n/a]"
    return (f"{d.difference.estimate:+.3f} [{d.difference.low:+.3f}, {d.difference.high:+.3f}]"
            f" ({'excludes' if d.excludes_zero else 'includes'} 0)")


def compare_evaluations(a: Path | str, b: Path | str, resamples: int = RESAMPLES,
                        seed: int = 0) -> Comparison:
    """Paired B - A of two evaluation folders on the images both could read."""
    a, b = Path(a), Path(b)
    names = (str(a / PREDICTIONS_FILE), str(b / PREDICTIONS_FILE))
    try:
        table_a, table_b = align_predictions(read_predictions(a), read_predictions(b),
                                             names=names)
    except DrgradeError as error:
        raise DrgradeError(f"{error}\ncompare two evaluations of the same data and split "
                           "(`drgrade evaluate RUN --data DATA --split SPLIT` for each)") from None
    for column in ("grade", "patient"):
        _check_same(table_a, table_b, column, names)
    # An image is compared only where both models graded it: the pairs must match.
    readable = (table_a[["predicted", "referable_score"]].notna().all(axis=1)
                & table_b[["predicted", "referable_score"]].notna().all(axis=1)).to_numpy()
    if not readable.any():
        raise DrgradeError(f"no image was readable for both {names[0]} and {names[1]}")
    table_a, table_b = table_a[readable], table_b[readable]
    patients = table_a["patient"].to_numpy()
    differences = compare_models(
        table_a["grade"].to_numpy(np.int64),
        table_a["predicted"].to_numpy(np.int64), table_a["referable_score"].to_numpy(float),
        table_b["predicted"].to_numpy(np.int64), table_b["referable_score"].to_numpy(float),
        patients, resamples, seed)
    return Comparison(a, b, int(readable.sum()), len(pd.unique(patients)),
                      int((~readable).sum()), resamples, seed, differences)


def run_compare(a: Path | str, b: Path | str, split: str = "test", data: str | None = None,
                resamples: int = RESAMPLES, seed: int = 0,
                out: Path | str | None = None) -> Comparison:
    """`drgrade compare`: resolve both folders, compare them, write OUT (JSON) if given."""
    if resamples < 1:
        raise DrgradeError(f"--resamples must be at least 1, got {resamples}")
    comparison = compare_evaluations(evaluation_folder(a, data, split),
                                     evaluation_folder(b, data, split), resamples, seed)
    if out is not None:
        write_text(out, json.dumps(comparison.as_dict(), indent=2) + "\n")
    return comparison
