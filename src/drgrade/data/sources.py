"""One reader per dataset layout, each as the dataset really ships -> Manifest."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from drgrade.data.fundus import IMAGE_SUFFIXES
from drgrade.data.manifest import (
    COLUMNS,
    MANIFEST_FILE,
    SPLITS,
    Manifest,
    duplicate_problems,
    make_table,
    parse_grade,
    patients_in_several_splits,
)
from drgrade.errors import DrgradeError, Problem, problems_error

EYEPACS_NAME = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$")


def read_source(
    source: Path | str,
    layout: str = "auto",
    labels: Path | str | None = None,
    images: Path | str | None = None,
) -> Manifest:
    """Read a dataset in any supported layout; `labels`/`images` override where files are."""
    source = Path(source)
    if not source.exists():
        raise DrgradeError(f"{source}: no such file or folder")
    labels = Path(labels) if labels else None
    images = Path(images) if images else None
    if layout == "auto":
        layout = detect_layout(source, labels)
    if layout not in READERS:
        raise DrgradeError(f"unknown --format {layout!r}; choose one of {', '.join(READERS)}")
    return READERS[layout](source, labels, images)


def detect_layout(source: Path, labels: Path | None = None) -> str:
    """The one layout `source` matches, or an error naming all that match (or none)."""
    matches = [name for name, looks_like in LAYOUT_SIGNS.items() if looks_like(source, labels)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DrgradeError(
            f"{source}: cannot tell the dataset layout; give --format "
            f"({', '.join(READERS)}) and, where the labels live elsewhere, --labels"
        )
    raise DrgradeError(f"{source}: matches several layouts ({', '.join(matches)}); give --format")


# --- helpers shared by the readers -------------------------------------------------------


def index_images(folder: Path) -> dict[str, Path]:
    """Image files directly in `folder`, by file name without extension."""
    if not folder.is_dir():
        return {}
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    }


def _attach_images(
    rows: list[dict], places: list[tuple[str, int]], labels_name: str,
    image_dir: Path | list[Path], layout: str, source: Path, problems: list[Problem],
    left_out: set[str] = frozenset(),
) -> Manifest:
    """Finish a label-file reader: check rows, find each listed image, note the unlisted.

    `places` holds the (file, line) each row came from, so every problem names its row.
    `image_dir` may be several folders (one per split); `left_out` are listed images the
    reader excluded on purpose (and reports itself), so they do not count as unlisted.
    """
    table = make_table(rows)
    problems = problems + duplicate_problems(table, places)
    if problems:
        raise problems_error(f"{labels_name}: invalid label rows", problems)
    folders = image_dir if isinstance(image_dir, list) else [image_dir]
    found = {}
    for folder in folders:
        found |= index_images(folder)
    image_dir = " or ".join(map(str, folders))
    table["path"] = [str(found[i]) if i in found else "" for i in table["image_id"]]
    missing = [
        Problem(file, line, image_id, f"image not found in {image_dir}")
        for image_id, (file, line), path in zip(table["image_id"], places, table["path"],
                                                strict=True)
        if not path
    ]
    manifest = Manifest(table, layout, source, missing)
    unlisted = len(set(found) - set(table["image_id"]) - left_out)
    if unlisted:
        manifest.warnings.append(
            f"{unlisted} image(s) in {image_dir} are not in {labels_name} and are ignored"
        )
    if missing:
        manifest.warnings.append(
            f"images found: {manifest.n_found} of {len(table)} listed in {labels_name}"
        )
    return manifest


def _read_csv_rows(
    path: Path, required: dict[str, str]
) -> tuple[list[dict], list[tuple[str, int]]]:
    """Rows of a headed CSV as {our name: value}, with their (file, 1-based line).

    `required` maps our column names to the file's header names, compared without
    surrounding spaces (IDRiD ships 'Risk of macular edema ' with a trailing space).
    Entirely empty rows (IDRiD ships some) are skipped: they hold no image.
    """
    if not path.is_file():
        raise DrgradeError(f"{path}: label file not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        absent = [theirs for theirs in required.values() if theirs not in header]
        if absent:
            raise DrgradeError(
                f"{path}:1: missing column(s) {', '.join(absent)}; "
                f"found {', '.join(h for h in header if h) or 'no header'}"
            )
        where = {ours: header.index(theirs) for ours, theirs in required.items()}
        rows, places = [], []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            row = row + [""] * (len(header) - len(row))
            rows.append({ours: row[i].strip() for ours, i in where.items()})
            places.append((str(path), reader.line_num))
    return rows, places


def _graded_rows(
    raw: list[dict], places: list[tuple[str, int]], describe: Callable[[dict], dict]
) -> tuple[list[dict], list[tuple[str, int]], list[Problem]]:
    """Valid rows (grade parsed, `describe` adding patient/eye), their places, and problems."""
    rows, kept, problems = [], [], []
    for item, (file, line) in zip(raw, places, strict=True):
        grade = parse_grade(item["grade"], file, line)
        if isinstance(grade, Problem):
            problems.append(grade)
        elif not item["image_id"]:
            problems.append(Problem(file, line, "", "empty image name"))
        else:
            rows.append({**item, "grade": grade, **describe(item)})
            kept.append((file, line))
    return rows, kept, problems


def eyepacs_identity(image_id: str) -> dict:
    """Patient and eye from an EyePACS name '<patient>_<left|right>'."""
    match = EYEPACS_NAME.match(image_id)
    if not match:
        return {"patient": image_id, "eye": ""}
    return {"patient": match["patient"], "eye": match["eye"]}


def _own_patient(item: dict) -> dict:
    # These datasets publish no patient ids, so each image is its own group.
    return {"patient": item["image_id"]}


# --- the readers ---------------------------------------------------------------------------


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
    manifest = _attach_images(
        rows, places, "the lab's *_img.csv", images or source, "lab", source, problems
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
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def read_eyepacs(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """Kaggle EyePACS: trainLabels.csv (image,level) + <patient>_<left|right>.jpeg."""
    labels_file = labels or source / "trainLabels.csv"
    raw, places = _read_csv_rows(labels_file, {"image_id": "image", "grade": "level"})
    rows, places, problems = _graded_rows(raw, places, lambda r: eyepacs_identity(r["image_id"]))
    image_dir = images or (source / "train" if (source / "train").is_dir() else source)
    return _attach_images(rows, places, labels_file.name, image_dir, "eyepacs", source, problems)


def read_aptos(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """APTOS 2019: train.csv (id_code,diagnosis) + train_images/<id_code>.png."""
    labels_file = labels or source / "train.csv"
    raw, places = _read_csv_rows(labels_file, {"image_id": "id_code", "grade": "diagnosis"})
    rows, places, problems = _graded_rows(raw, places, _own_patient)
    image_dir = images or source / "train_images"
    return _attach_images(rows, places, labels_file.name, image_dir, "aptos", source, problems)


IDRID_COLUMNS = {
    "image_id": "Image name",
    "grade": "Retinopathy grade",
    "macular_edema_risk": "Risk of macular edema",
}


def read_idrid(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """IDRiD disease grading: its label CSV exactly as shipped + <Image name>.jpg."""
    labels_file = labels or _find_idrid_csv(source)
    if labels_file is None:
        raise DrgradeError(f"{source}: no IDRiD label CSV found; give it with --labels")
    raw, places = _read_csv_rows(labels_file, IDRID_COLUMNS)
    rows, places, problems = _graded_rows(raw, places, _own_patient)
    image_dir = images or (source / "images" if (source / "images").is_dir() else source)
    return _attach_images(rows, places, labels_file.name, image_dir, "idrid", source, problems)


def _find_idrid_csv(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.csv")):
        with path.open(encoding="utf-8-sig") as handle:
            if handle.readline().startswith("Image name,Retinopathy grade"):
                return path
    return None


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
    raw, places = _read_csv_rows(labels_file, MESSIDOR2_COLUMNS)
    ungradable = {Path(r["image_id"]).stem for r in raw if r["gradable"] == "0"}
    kept = [(r, place) for r, place in zip(raw, places, strict=True) if r["gradable"] != "0"]
    # Names carry extensions that differ in case from the files (.jpg vs .JPG): match stems.
    raw = [{"image_id": Path(r["image_id"]).stem, "grade": r["grade"],
            "macular_edema": r["macular_edema"]} for r, _ in kept]
    rows, places, problems = _graded_rows(raw, [p for _, p in kept], _own_patient)
    image_dir = images or (source / "IMAGES" if (source / "IMAGES").is_dir() else source)
    manifest = _attach_images(rows, places, labels_file.name, image_dir, "messidor2", source,
                              problems, ungradable)
    if ungradable:
        manifest.warnings.append(f"left out as ungradable (adjudicated_gradable 0): "
                                 f"{len(ungradable)}")
    manifest.warnings.append("Messidor-2's label file names no patients: the two eyes of an "
                             "examination may fall in different splits")
    return manifest


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
        for line, text in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
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
    image_dirs = [images] if images else [root / theirs for theirs in DDR_SPLITS]
    manifest = _attach_images(rows, places, "DDR's train/valid/test.txt", image_dirs, "ddr",
                              source, problems, set().union(*ungradable.values()))
    if ungradable:
        manifest.warnings.append(
            "left out as ungradable (DDR grade 5): "
            + ", ".join(f"{len(ids)} {split}" for split, ids in ungradable.items()))
    return manifest


def _ddr_root(source: Path) -> Path:
    """DDR's DR_grading folder, given it or the DDR-dataset folder above it."""
    return source / "DR_grading" if (source / "DR_grading").is_dir() else source


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


def read_medmnist(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """MedMNIST npz (e.g. RetinaMNIST) with its official train/val/test split."""
    try:
        arrays = np.load(source)
    except (OSError, ValueError) as error:
        raise DrgradeError(f"{source}: not a readable npz file ({error})") from error
    rows, problems = [], []
    for split in SPLITS:
        if f"{split}_labels" not in arrays.files or f"{split}_images" not in arrays.files:
            raise DrgradeError(f"{source}: no {split}_images/{split}_labels arrays; "
                               f"found {', '.join(arrays.files)}")
        for index, value in enumerate(arrays[f"{split}_labels"].reshape(-1)):
            grade = parse_grade(str(value), f"{source}[{split}_labels]", index)
            if isinstance(grade, Problem):
                problems.append(grade)
                continue
            image_id = f"{split}_{index:05d}"
            rows.append({"image_id": image_id, "path": f"{source}#{split}/{index}",
                         "grade": grade, "patient": image_id, "split": split})
    if problems:
        raise problems_error(f"{source}: invalid labels", problems)
    return Manifest(make_table(rows), "medmnist", source)


def read_prepared(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """A folder written by `drgrade prepare`: manifest.csv with paths relative to it."""
    manifest_file = source / MANIFEST_FILE
    if not manifest_file.is_file():
        raise DrgradeError(f"{source}: no {MANIFEST_FILE}; is this a `drgrade prepare` folder?")
    table = pd.read_csv(manifest_file, dtype=str, keep_default_na=False)
    absent = [c for c in COLUMNS if c not in table]
    if absent:
        raise DrgradeError(f"{manifest_file}: missing column(s) {', '.join(absent)}")
    table["grade"] = table["grade"].astype(int)
    table["path"] = [str(source / p) for p in table["path"]]
    missing = [
        Problem(str(manifest_file), line, path, "prepared image is missing")
        for line, path in enumerate(table["path"], start=2)
        if not Path(path).is_file()
    ]
    return Manifest(table, "prepared", source, missing)


READERS: dict[str, Callable[[Path, Path | None, Path | None], Manifest]] = {
    "lab": read_lab,
    "eyepacs": read_eyepacs,
    "aptos": read_aptos,
    "idrid": read_idrid,
    "ddr": read_ddr,
    "messidor2": read_messidor2,
    "folders": read_class_folders,
    "medmnist": read_medmnist,
    "prepared": read_prepared,
}


def _has_grade_folders(folder: Path) -> bool:
    return folder.is_dir() and any((folder / str(g)).is_dir() for g in range(5))


LAYOUT_SIGNS: dict[str, Callable[[Path, Path | None], bool]] = {
    "lab": lambda s, lab: ((lab or s) / "train_img.csv").is_file(),
    "eyepacs": lambda s, lab: (s / "trainLabels.csv").is_file(),
    "aptos": lambda s, lab: (s / "train.csv").is_file() and (s / "train_images").is_dir(),
    "idrid": lambda s, lab: _find_idrid_csv(lab.parent if lab else s) is not None,
    "messidor2": lambda s, lab: (s / "messidor_data.csv").is_file(),
    "ddr": lambda s, lab: all(((lab or _ddr_root(s)) / f"{name}.txt").is_file()
                              for name in DDR_SPLITS),
    "folders": lambda s, lab: _has_grade_folders(s)
    or any(_has_grade_folders(s / split) for split in SPLITS),
    "medmnist": lambda s, lab: s.suffix == ".npz",
    "prepared": lambda s, lab: (s / MANIFEST_FILE).is_file(),
}
