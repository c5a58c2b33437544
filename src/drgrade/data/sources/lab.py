"""The lab's split: {train,test}_img.csv + _label.csv over EyePACS images."""

from __future__ import annotations

from pathlib import Path

from drgrade.data.manifest import Manifest, parse_grade, patients_in_several_splits
from drgrade.data.sources.eyepacs import eyepacs_identity
from drgrade.data.sources.label_files import read_text
from drgrade.data.sources.matching import attach_images, image_index
from drgrade.errors import DrgradeError, Problem


def read_lab(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """The lab's CSV pairs: {train,test}_img.csv + _label.csv, one value a line, no header."""
    label_dir = labels or source
    rows, places, problems = [], [], []
    for split in ("train", "test"):
        names_file = label_dir / f"{split}_img.csv"
        grades_file = label_dir / f"{split}_label.csv"
        names, grades = _read_lines(names_file), _read_lines(grades_file)
        if len(names) != len(grades):
            raise DrgradeError(
                f"{names_file} has {len(names)} lines but {grades_file} has {len(grades)}; "
                "they must pair line by line"
            )
        for line, (name, value) in enumerate(zip(names, grades, strict=True), start=1):
            grade = parse_grade(value, str(grades_file), line)
            if isinstance(grade, Problem):
                problems.append(grade)
            elif not name:
                problems.append(Problem(str(names_file), line, name, "empty image name"))
            else:
                rows.append({"image_id": name, "grade": grade, "split": split,
                             **eyepacs_identity(name)})
                places.append((str(names_file), line))
    manifest = attach_images(
        rows, places, "the lab's *_img.csv", image_index(images or source), "lab", source,
        problems,
    )
    overlap = patients_in_several_splits(manifest.table)
    if overlap:
        manifest.warnings.append(
            f"the lab's split is not patient-disjoint: {overlap} patients have an eye in "
            "more than one split, so test accuracy is optimistic"
        )
    return manifest


def _read_lines(path: Path) -> list[str]:
    """Every line of a one-value-a-line file (no header), without trailing blank lines."""
    if not path.is_file():
        raise DrgradeError(f"{path}: file not found (the lab layout needs it)")
    lines = [line.strip() for line in read_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def looks_like_lab(source: Path, labels: Path | None) -> bool:
    return ((labels or source) / "train_img.csv").is_file()
