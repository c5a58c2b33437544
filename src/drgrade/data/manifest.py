"""The Manifest: one row per image, the one currency between reading data and using it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from drgrade.atomic import atomic_write
from drgrade.errors import DrgradeError, Problem, problems_error
from drgrade.grades import NUM_GRADES

if TYPE_CHECKING:  # pandas and scikit-learn take ~0.9 s to load; the CLI reads SPLIT_FROM
    import pandas as pd  # from here at start-up, so they are imported where they are used

COLUMNS = ["image_id", "path", "grade", "patient", "eye", "split"]
SPLITS = ("train", "val", "test")
EVALUATED_SPLITS = (*SPLITS, "all")  # `drgrade evaluate --split`: all scores every image
MANIFEST_FILE = "manifest.csv"
# --split-from: keep the split a layout ships (IDRiD, DDR, MedMNIST, the lab's, EyePACS with
# its solution file, split class folders) and draw one only for images without, or draw a
# new one for every image.
SPLIT_FROM = ("official", "random")
ALL_TEST = 1.0  # a test fraction of 1: the whole source is the test split (an external test set)


@dataclass
class Manifest:
    """Images of one dataset with their grades, read from one layout.

    `table` has the COLUMNS (plus extras a source has); `path` is empty for listed images
    that were not found on disk, and those are listed in `missing`; `elsewhere` says in
    which other folders below the source they are, if any. `left_out` holds the missing
    images `require_images` dropped, so that they are still reported.
    """

    table: pd.DataFrame
    layout: str
    source: Path
    missing: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    left_out: list[Problem] = field(default_factory=list)
    elsewhere: str = ""

    @property
    def n_found(self) -> int:
        """Number of listed images found on disk."""
        return int((self.table["path"] != "").sum())

    def require_images(self, allow_missing: bool = False,
                       fix: str = "use --allow-missing to go on with the images that exist"
                       ) -> Manifest:
        """This manifest without missing images; an error listing them (and `fix`, what the
        command at hand offers) unless allowed."""
        if not self.missing:
            return self
        if not allow_missing:
            error = problems_error(
                f"{len(self.missing)} of {len(self.table)} listed images are missing ({fix})",
                self.missing)
            raise DrgradeError(f"{error}\n{self.elsewhere}") if self.elsewhere else error
        kept = self.table[self.table["path"] != ""].reset_index(drop=True)
        note = f"going on without {len(self.missing)} missing image(s); {len(kept)} remain"
        return Manifest(kept, self.layout, self.source, [], [*self.warnings, note],
                        [*self.left_out, *self.missing])

    def fingerprint(self) -> str:
        """A short hash of ids, grades and splits: which data a run was trained on."""
        key = self.table[["image_id", "grade", "split"]].to_csv(index=False).encode()
        return hashlib.sha256(key).hexdigest()[:16]


def parse_grade(value: str, file: str, line: int) -> int | Problem:
    """An integer grade 0-4, or the Problem that says why `value` is not one."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        return Problem(file, line, value, "grade is not a number")
    if not number.is_integer():
        return Problem(file, line, value, "grade is not an integer")
    if not 0 <= number < NUM_GRADES:
        return Problem(file, line, value, f"grade outside 0-{NUM_GRADES - 1}")
    return int(number)


def make_table(rows: list[dict]) -> pd.DataFrame:
    """A manifest table from row dicts, with every column present and typed."""
    import pandas as pd

    table = pd.DataFrame(rows, columns=None if rows else COLUMNS)
    for column in COLUMNS:
        if column not in table:
            table[column] = ""
    table["grade"] = table["grade"].astype(int)
    for column in ("image_id", "path", "patient", "eye", "split"):
        table[column] = table[column].fillna("").astype(str)
    extras = [c for c in table.columns if c not in COLUMNS]
    return table[COLUMNS + extras]


def duplicate_problems(table: pd.DataFrame, places: list[tuple[str, int]]) -> list[Problem]:
    """A Problem for every row whose image_id appeared on an earlier row.

    `places` holds the (file, line) of each row of `table`.
    """
    problems = []
    first: dict[str, tuple[str, int]] = {}
    for image_id, (file, line) in zip(table["image_id"], places, strict=True):
        if image_id in first:
            reason = "duplicate image id (first at {}:{})".format(*first[image_id])
            problems.append(Problem(file, line, image_id, reason))
        else:
            first[image_id] = (file, line)
    return problems


def split_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Images per split (rows) and grade (columns)."""
    import pandas as pd

    counts = pd.crosstab(table["split"].replace("", "(none)"), table["grade"])
    order = [s for s in (*SPLITS, "(none)") if s in counts.index]
    return counts.reindex(index=order, columns=range(NUM_GRADES), fill_value=0)


def majority_grade(table: pd.DataFrame) -> int:
    """The most common grade in the training split (or in all rows if there is none)."""
    train = table[table["split"] == "train"]
    return int((train if len(train) else table)["grade"].mode().min())


def patients_in_several_splits(table: pd.DataFrame) -> int:
    """How many patients have images in more than one split (a leak between splits)."""
    assigned = table[table["split"] != ""]
    return int((assigned.groupby("patient")["split"].nunique() > 1).sum())


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Refuse split fractions outside [0, 0.5), but for a test fraction of ALL_TEST."""
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        if not 0 <= fraction < 0.5 and not (name == "test" and fraction == ALL_TEST):
            raise DrgradeError(f"--{name}-fraction must be in [0, 0.5), or --test-fraction 1 "
                               f"(--all-test) for a whole-source test set; got {fraction}")


def assign_splits(
    table: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int,
    split_from: str = "official",
) -> pd.DataFrame:
    """Give rows without a split one, keeping each patient's images together.

    `split_from` "random" first drops the splits the layout shipped; a test fraction of
    ALL_TEST makes every row test. Stratified by grade and grouped by patient
    (scikit-learn's StratifiedGroupKFold); a fraction f is realised as one fold of
    round(1/f), so 0.2 -> 1/5 and 0.15 -> 1/7.
    """
    check_fractions(val_fraction, test_fraction)
    if split_from not in SPLIT_FROM:
        raise DrgradeError(f"--split-from must be one of {', '.join(SPLIT_FROM)}, "
                           f"got {split_from!r}")
    table = table.copy()
    if test_fraction == ALL_TEST:
        table["split"] = "test"
        return table
    if split_from == "random":
        table["split"] = ""
    pending = table.index[table["split"] == ""]
    # The val fraction is of the whole, so scale it to what is left after test.
    for name, fraction in (("test", test_fraction), ("val", val_fraction / (1 - test_fraction))):
        if fraction == 0 or table.loc[pending, "patient"].nunique() < 2:
            continue  # a split of a lone patient would leave train empty
        chosen = _one_fold(table.loc[pending], fraction, seed)
        table.loc[chosen, "split"] = name
        pending = pending.difference(chosen)
    table.loc[pending, "split"] = "train"
    return table


def carve_validation(table: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Move a patient-grouped, grade-stratified share of train to val if there is no val.

    Model selection must never look at test, so a dataset shipped with only train and test
    (the lab's split, IDRiD) gets its validation images from train.
    """
    if (table["split"] == "val").any() or fraction == 0:
        return table
    table = table.copy()
    train = table.index[table["split"] == "train"]
    if table.loc[train, "patient"].nunique() < 2:
        raise DrgradeError("too few training patients (fewer than 2) to carve out a "
                           "validation split")
    table.loc[_one_fold(table.loc[train], fraction, seed), "split"] = "val"
    return table


def _one_fold(rows: pd.DataFrame, fraction: float, seed: int) -> pd.Index:
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    n_splits = max(2, min(round(1 / fraction), rows["patient"].nunique()))
    if rows["grade"].value_counts().min() >= n_splits:
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, held_out = next(folds.split(rows, rows["grade"], groups=rows["patient"]))
    else:
        # A grade too rare to reach every fold cannot be stratified: still keep patients
        # together, and draw the fold at random.
        folds = GroupShuffleSplit(n_splits=1, test_size=1 / n_splits, random_state=seed)
        _, held_out = next(folds.split(rows, groups=rows["patient"]))
    return rows.index[held_out]


def write_manifest(table: pd.DataFrame, folder: Path) -> Path:
    """Write `table` as folder/manifest.csv (atomically: a kill never leaves half a file)."""
    target = folder / MANIFEST_FILE
    with atomic_write(target, "w", newline="", encoding="utf-8") as handle:
        table.to_csv(handle, index=False)
    return target


FELLOW_EYES = {"left": "right", "right": "left"}


def fellow_indices(patients: list[str], eyes: list[str]) -> list[int]:
    """Per image, the position of the same patient's other eye (its first), or -1: none."""
    first: dict[tuple[str, str], int] = {}
    for k, key in enumerate(zip(patients, eyes, strict=True)):
        first.setdefault(key, k)
    return [first.get((patient, FELLOW_EYES.get(eye, "")), -1)
            for patient, eye in zip(patients, eyes, strict=True)]
