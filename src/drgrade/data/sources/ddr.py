"""DDR's DR_grading set with its train/valid/test split."""

from __future__ import annotations

from pathlib import Path

from drgrade.data.manifest import Manifest, parse_grade
from drgrade.data.sources.label_files import read_text
from drgrade.data.sources.matching import attach_images, image_index
from drgrade.errors import DrgradeError, Problem

DDR_SPLITS = {"train": "train", "valid": "val", "test": "test"}  # DDR's name -> ours
DDR_UNGRADABLE = "5"  # DDR's label for photographs too poor to grade: not a DR grade


def read_ddr(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """DDR (DR_grading): {train,valid,test}.txt, '<image> <grade>' a line, + {train,valid,test}/.

    Grade 5 (ungradable) is left out, and counted in a warning.
    """
    root = _ddr_root(source)
    label_dir = labels or root
    rows, places, problems, ungradable = [], [], [], {}  # ungradable: split -> image ids
    for theirs, split in DDR_SPLITS.items():
        path = label_dir / f"{theirs}.txt"
        if not path.is_file():
            raise DrgradeError(f"{path}: label file not found (DDR ships train.txt, "
                               "valid.txt and test.txt)")
        for line, text in enumerate(read_text(path).splitlines(), 1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) != 2:
                problems.append(Problem(str(path), line, text.strip(),
                                        "expected '<image> <grade>'"))
                continue
            if fields[1] == DDR_UNGRADABLE:
                ungradable.setdefault(split, set()).add(Path(fields[0]).stem)
                continue
            grade = parse_grade(fields[1], str(path), line)
            if isinstance(grade, Problem):
                problems.append(grade)
                continue
            image_id = Path(fields[0]).stem
            rows.append({"image_id": image_id, "grade": grade, "split": split,
                         "patient": image_id})  # DDR publishes no patient ids
            places.append((str(path), line))
    index = image_index(images) if images else image_index(*(root / t for t in DDR_SPLITS))
    manifest = attach_images(rows, places, "DDR's train/valid/test.txt", index, "ddr",
                              source, problems, set().union(*ungradable.values()))
    if ungradable:
        manifest.warnings.append(
            "left out as ungradable (DDR grade 5): "
            + ", ".join(f"{len(ids)} {split}" for split, ids in ungradable.items()))
    return manifest


def _ddr_root(source: Path) -> Path:
    """DDR's DR_grading folder, given it or the DDR-dataset folder above it."""
    return source / "DR_grading" if (source / "DR_grading").is_dir() else source


def looks_like_ddr(source: Path, labels: Path | None) -> bool:
    return all(((labels or _ddr_root(source)) / f"{name}.txt").is_file() for name in DDR_SPLITS)
