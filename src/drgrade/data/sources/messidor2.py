"""Messidor-2 with the adjudicated grades of Krause et al. 2018."""

from __future__ import annotations

from pathlib import Path

from drgrade.data.manifest import Manifest
from drgrade.data.sources.label_files import graded_rows, own_patient, read_csv_rows
from drgrade.data.sources.matching import attach_images, image_index

MESSIDOR2_COLUMNS = {
    "image_id": "image_id",
    "grade": "adjudicated_dr_grade",
    "gradable": "adjudicated_gradable",
    "macular_edema": "adjudicated_dme",
}


def read_messidor2(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """Messidor-2 with the adjudicated grades (Krause et al. 2018, Kaggle's messidor_data.csv).

    Images the adjudicators found ungradable (adjudicated_gradable 0) are left out, counted.
    """
    labels_file = labels or source / "messidor_data.csv"
    raw, places = read_csv_rows(labels_file, MESSIDOR2_COLUMNS)
    ungradable = {Path(r["image_id"]).stem for r in raw if r["gradable"] == "0"}
    kept = [(r, place) for r, place in zip(raw, places, strict=True) if r["gradable"] != "0"]
    # Names carry extensions that differ in case from the files (.jpg vs .JPG): match stems.
    raw = [{"image_id": Path(r["image_id"]).stem, "grade": r["grade"],
            "macular_edema": r["macular_edema"]} for r, _ in kept]
    rows, places, problems = graded_rows(raw, [p for _, p in kept], own_patient)
    index = image_index(images or (source / "IMAGES" if (source / "IMAGES").is_dir() else source))
    manifest = attach_images(rows, places, labels_file.name, index, "messidor2", source,
                              problems, ungradable)
    if ungradable:
        manifest.warnings.append(f"left out as ungradable (adjudicated_gradable 0): "
                                 f"{len(ungradable)}")
    manifest.warnings.append("Messidor-2's label file names no patients: the two eyes of an "
                             "examination may fall in different splits")
    return manifest


def looks_like_messidor2(source: Path, labels: Path | None) -> bool:
    return (source / "messidor_data.csv").is_file()
