"""IDRiD disease grading: the full release with its official split, or one label CSV."""

from __future__ import annotations

import operator
from functools import reduce
from pathlib import Path

from drgrade.data.manifest import Manifest
from drgrade.data.sources.label_files import graded_rows, own_patient, read_csv_rows
from drgrade.data.sources.matching import attach_images, image_index
from drgrade.errors import DrgradeError

IDRID_COLUMNS = {
    "image_id": "Image name",
    "grade": "Retinopathy grade",
    "macular_edema_risk": "Risk of macular edema",
}


IDRID_RELEASE = "B. Disease Grading"  # the release's folder; some unzip tools double it
IDRID_SETS = {  # split -> (images folder, label CSV) inside the release folder
    "train": ("1. Original Images/a. Training Set",
              "2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv"),
    "test": ("1. Original Images/b. Testing Set",
             "2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv"),
}


def read_idrid(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """IDRiD disease grading as shipped: the full release, or one label CSV + its images.

    The release ('B. Disease Grading', given it, its parent or the doubled folder an unzip
    makes) keeps its official train/test split; one CSV + <Image name>.jpg has no split.
    """
    release = None if labels else idrid_release(source)
    if release is not None:
        return _read_idrid_release(release, source, images)
    labels_file = labels or _find_idrid_csv(source)
    if labels_file is None:
        raise DrgradeError(f"{source}: no IDRiD label CSV found; give it with --labels")
    raw, places = read_csv_rows(labels_file, IDRID_COLUMNS)
    rows, places, problems = graded_rows(raw, places, own_patient)
    index = image_index(images or (source / "images" if (source / "images").is_dir() else source))
    return attach_images(rows, places, labels_file.name, index, "idrid", source, problems)


def idrid_release(source: Path) -> Path | None:
    """IDRiD's 'B. Disease Grading' folder: `source` or up to two of them below it; or None."""
    for folder in (source, source / IDRID_RELEASE, source / IDRID_RELEASE / IDRID_RELEASE):
        if (folder / IDRID_SETS["train"][1]).is_file():
            return folder
    return None


def _read_idrid_release(release: Path, source: Path, images: Path | None) -> Manifest:
    """Both sets of the release. Their image names repeat (IDRiD_001 is in each, a different
    person), so ids and patients are prefixed by split: train/IDRiD_001, test/IDRiD_001.
    """
    if images:
        raise DrgradeError(f"--images {images}: {release} is IDRiD's release, which says where "
                           "its images are; give --images only with --labels (one label CSV)")
    rows, places, problems, indexes = [], [], [], []
    for split, (image_dir, labels_name) in IDRID_SETS.items():
        raw, where = read_csv_rows(release / labels_name, IDRID_COLUMNS)
        more = graded_rows(raw, where, lambda r, split=split: {
            "image_id": f"{split}/{r['image_id']}", "patient": f"{split}/{r['image_id']}",
            "split": split})
        rows, places, problems = rows + more[0], places + more[1], problems + more[2]
        indexes.append(image_index(release / image_dir, prefix=f"{split}/"))
    return attach_images(rows, places, "IDRiD's training and testing label CSVs",
                          reduce(operator.or_, indexes), "idrid", source, problems)


def _find_idrid_csv(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.csv")):
        with path.open("rb") as handle:
            # Only a sniff: a file in another encoding is reported when it is read.
            first = handle.readline(4096).decode("utf-8-sig", errors="replace")
        if first.startswith("Image name,Retinopathy grade"):
            return path
    return None


def looks_like_idrid(source: Path, labels: Path | None) -> bool:
    if labels:
        return _find_idrid_csv(labels.parent) is not None
    return _find_idrid_csv(source) is not None or idrid_release(source) is not None
