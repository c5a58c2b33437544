"""Kaggle EyePACS as released: trainLabels.csv, train/, and test/ with its solution file."""

from __future__ import annotations

import re
from pathlib import Path

from drgrade.data.manifest import Manifest
from drgrade.data.sources.label_files import graded_rows, read_csv_rows
from drgrade.data.sources.matching import attach_images, image_index, index_images
from drgrade.errors import Problem

EYEPACS_NAME = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$")


def eyepacs_identity(image_id: str) -> dict:
    """Patient and eye from an EyePACS name '<patient>_<left|right>'."""
    match = EYEPACS_NAME.match(image_id)
    if not match:
        return {"patient": image_id, "eye": ""}
    return {"patient": match["patient"], "eye": match["eye"]}


EYEPACS_COLUMNS = {"image_id": "image", "grade": "level"}
# Kaggle's test grades, published when the competition closed: image,level,Usage.
EYEPACS_SOLUTION = "retinopathy_solution.csv"
# Its leaderboard parts -> our splits, the official protocol (Huang et al. 2023).
EYEPACS_USAGE = {"Public": "val", "Private": "test"}


def read_eyepacs(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """Kaggle EyePACS: trainLabels.csv (image,level) + <patient>_<left|right>.jpeg.

    With Kaggle's retinopathy_solution.csv beside trainLabels.csv, the test/ images join
    in the official split: train = trainLabels.csv, val = Usage Public, test = Private.
    """
    labels_file = labels or source / "trainLabels.csv"
    solution = labels_file.parent / EYEPACS_SOLUTION
    official = solution.is_file()
    raw, places = read_csv_rows(labels_file, EYEPACS_COLUMNS)
    split = "train" if official else ""  # trainLabels.csv alone ships no split
    rows, places, problems = graded_rows(
        raw, places, lambda r: {**eyepacs_identity(r["image_id"]), "split": split})
    index = image_index(images or (source / "train" if (source / "train").is_dir() else source))
    labels_name = labels_file.name
    if official:
        more_rows, more_places, more_problems = _eyepacs_solution_rows(solution)
        rows, places, problems = rows + more_rows, places + more_places, problems + more_problems
        index |= image_index(source / "test")
        labels_name += f" and {EYEPACS_SOLUTION}"
    manifest = attach_images(rows, places, labels_name, index, "eyepacs", source, problems)
    ungraded = 0 if official else len(index_images(source / "test"))
    if ungraded:
        manifest.warnings.append(
            f"{ungraded} image(s) in {source / 'test'} left out: Kaggle grades its test set "
            f"only in {EYEPACS_SOLUTION}, which is not in {solution.parent}. Put it there "
            "(`kaggle competitions download -c diabetic-retinopathy-detection -f "
            f"{EYEPACS_SOLUTION}`, unzipped) for the official split (val: Usage Public, test: "
            "Private); without it the training images get a random patient-grouped split")
    return manifest


def _eyepacs_solution_rows(
    path: Path,
) -> tuple[list[dict], list[tuple[str, int]], list[Problem]]:
    """Rows of Kaggle's retinopathy_solution.csv, each in the split its Usage names."""
    raw, places = read_csv_rows(path, {**EYEPACS_COLUMNS, "usage": "Usage"})
    usages = [row.pop("usage") for row in raw]
    problems = [
        Problem(file, line, usage, "Usage must be Public (val) or Private (test)")
        for usage, (file, line) in zip(usages, places, strict=True)
        if usage not in EYEPACS_USAGE
    ]
    for row, usage in zip(raw, usages, strict=True):
        row["split"] = EYEPACS_USAGE.get(usage, "")
    rows, places, more = graded_rows(raw, places, lambda r: eyepacs_identity(r["image_id"]))
    return rows, places, problems + more


def looks_like_eyepacs(source: Path, labels: Path | None) -> bool:
    return (source / "trainLabels.csv").is_file()
