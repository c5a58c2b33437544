"""Messidor-2 with the adjudicated grades of Krause et al. 2018."""

from __future__ import annotations

from pathlib import Path

from drgrade.data.manifest import Manifest
from drgrade.data.sources.label_files import graded_rows, own_patient, read_csv_rows
from drgrade.data.sources.matching import attach_images, image_index
from drgrade.errors import DrgradeError

MESSIDOR2_COLUMNS = {
    "image_id": "image_id",
    "grade": "adjudicated_dr_grade",
    "gradable": "adjudicated_gradable",
    "macular_edema": "adjudicated_dme",
}


# ADCIS ships the examinations beside the images: 'left;right', one row per examination.
EXAMS_FILE = "messidor-2.csv"
EXAM_COLUMNS = {"left": "left", "right": "right"}


def read_exams(path: Path) -> dict[str, dict]:
    """Patient (the examination, named by its left image) and eye of each image it lists."""
    raw, places = read_csv_rows(path, EXAM_COLUMNS, delimiter=";")
    identities: dict[str, dict] = {}
    listed_at: dict[str, int] = {}
    for row, (file, line) in zip(raw, places, strict=True):
        stems = {eye: Path(row[eye]).stem for eye in EXAM_COLUMNS}
        for eye, stem in stems.items():
            if not stem:
                raise DrgradeError(f"{file}:{line}: no {eye} image named (expected "
                                   "'<left image>;<right image>')")
            if stem in listed_at:
                raise DrgradeError(f"{file}:{line}: {row[eye]} is listed again (first at "
                                   f"line {listed_at[stem]})")
            listed_at[stem] = line
            identities[stem] = {"patient": stems["left"], "eye": eye}
    return identities


def read_messidor2(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """Messidor-2 with the adjudicated grades (Krause et al. 2018, Kaggle's messidor_data.csv).

    Images the adjudicators found ungradable (adjudicated_gradable 0) are left out, counted.
    Patients and eyes come from ADCIS's examination list (messidor-2.csv) where it is
    beside the images, so that both eyes of an examination share a split.
    """
    labels_file = labels or source / "messidor_data.csv"
    raw, places = read_csv_rows(labels_file, MESSIDOR2_COLUMNS)
    ungradable = {Path(r["image_id"]).stem for r in raw if r["gradable"] == "0"}
    kept = [(r, place) for r, place in zip(raw, places, strict=True) if r["gradable"] != "0"]
    # Names carry extensions that differ in case from the files (.jpg vs .JPG): match stems.
    raw = [{"image_id": Path(r["image_id"]).stem, "grade": r["grade"],
            "macular_edema": r["macular_edema"]} for r, _ in kept]
    exams_file = source / EXAMS_FILE
    exams = read_exams(exams_file) if exams_file.is_file() else {}
    rows, places, problems = graded_rows(
        raw, [p for _, p in kept], lambda item: exams.get(item["image_id"]) or own_patient(item))
    index = image_index(images or (source / "IMAGES" if (source / "IMAGES").is_dir() else source))
    manifest = attach_images(rows, places, labels_file.name, index, "messidor2", source,
                              problems, ungradable)
    if ungradable:
        manifest.warnings.append(f"left out as ungradable (adjudicated_gradable 0): "
                                 f"{len(ungradable)}")
    if not exams:
        manifest.warnings.append(
            f"no {EXAMS_FILE} (ADCIS's list of examinations) in {source}: each image is its "
            "own patient, so the two eyes of an examination may fall in different splits")
    elif unlisted := sum(row["image_id"] not in exams for row in rows):
        manifest.warnings.append(f"graded images that {EXAMS_FILE} does not list, each its "
                                 f"own patient: {unlisted}")
    return manifest


def looks_like_messidor2(source: Path, labels: Path | None) -> bool:
    return (source / "messidor_data.csv").is_file()
