"""Images sorted into one folder per grade, optionally below train/val/test."""

from __future__ import annotations

from pathlib import Path

from drgrade.data.manifest import SPLITS, Manifest, make_table, parse_grade
from drgrade.data.sources.matching import index_images
from drgrade.errors import DrgradeError, Problem, problems_error
from drgrade.grades import NUM_GRADES


def read_class_folders(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """ROOT/<grade>/*.jpg, or ROOT/<train|val|test>/<grade>/*.jpg for a given split."""
    split_dirs = [source / s for s in SPLITS if (source / s).is_dir()]
    rows, problems = [], []
    for split_dir in split_dirs or [source]:
        split = split_dir.name if split_dirs else ""
        for grade_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            grade = parse_grade(grade_dir.name, str(grade_dir), None)
            if isinstance(grade, Problem):
                problems.append(Problem(str(grade_dir), None, grade_dir.name,
                                        "folder name is not a grade 0-4"))
                continue
            for image_id, path in index_images(grade_dir).items():
                rows.append({"image_id": image_id, "path": str(path), "grade": grade,
                             "patient": image_id, "split": split})
    if problems:
        raise problems_error(f"{source}: invalid class folders", problems)
    if not rows:
        raise DrgradeError(f"{source}: no images found in grade folders 0-4")
    table = make_table(rows)
    duplicates = table[table["image_id"].duplicated(keep=False)]
    if len(duplicates):
        raise problems_error(
            f"{source}: the same image name appears more than once",
            [Problem(p, None, i, "duplicate image name") for i, p in
             zip(duplicates["image_id"], duplicates["path"], strict=True)],
        )
    return Manifest(table, "folders", source)


def looks_like_class_folders(source: Path, labels: Path | None) -> bool:
    return _has_grade_folders(source) or any(_has_grade_folders(source / s) for s in SPLITS)


def _has_grade_folders(folder: Path) -> bool:
    return folder.is_dir() and any((folder / str(g)).is_dir() for g in range(NUM_GRADES))
