"""APTOS 2019 blindness detection as Kaggle ships it."""

from __future__ import annotations

from pathlib import Path

from drgrade.data.manifest import Manifest
from drgrade.data.sources.label_files import graded_rows, own_patient, read_csv_rows
from drgrade.data.sources.matching import attach_images, image_index, index_images


def read_aptos(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """APTOS 2019: train.csv (id_code,diagnosis) + train_images/<id_code>.png.

    Kaggle never published the grades of test_images/: those are left out, with a note.
    """
    labels_file = labels or source / "train.csv"
    raw, places = read_csv_rows(labels_file, {"image_id": "id_code", "grade": "diagnosis"})
    rows, places, problems = graded_rows(raw, places, own_patient)
    index = image_index(images or source / "train_images")
    manifest = attach_images(rows, places, labels_file.name, index, "aptos", source, problems)
    if ungraded := len(index_images(source / "test_images")):
        manifest.warnings.append(
            f"{ungraded} image(s) in {source / 'test_images'} left out: Kaggle never "
            "published their grades (grade them with `drgrade predict`)")
    return manifest


def looks_like_aptos(source: Path, labels: Path | None) -> bool:
    return (source / "train.csv").is_file() and (source / "train_images").is_dir()
