"""One reader per dataset layout, each as the dataset really ships -> Manifest."""

from __future__ import annotations

import codecs
import csv
import io
import math
import operator
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import numpy as np

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


@dataclass(frozen=True)
class ImageIndex:
    """The image files a reader found, by image id, and where it looked for them.

    `folders` maps an id prefix to the folders searched for ids with it, so a missing
    image is looked for, and reported, in its own split's folder.
    """

    found: dict[str, Path]
    folders: dict[str, str]

    def where(self, image_id: str = "") -> str:
        """The folders searched for `image_id` (for every image when not given)."""
        if not image_id:
            return " or ".join(self.folders.values())
        return next(w for p, w in self.folders.items() if image_id.startswith(p))

    def __or__(self, other: ImageIndex) -> ImageIndex:
        folders = dict(self.folders)
        for prefix, where in other.folders.items():
            folders[prefix] = f"{folders[prefix]} or {where}" if prefix in folders else where
        return ImageIndex({**self.found, **other.found}, folders)


def image_index(*folders: Path, prefix: str = "") -> ImageIndex:
    """Image files directly in `folders`, by `prefix` + file name without extension."""
    found = {}
    for folder in folders:
        found |= {prefix + stem: path for stem, path in index_images(folder).items()}
    return ImageIndex(found, {prefix: " or ".join(map(str, folders))})


def _attach_images(
    rows: list[dict], places: list[tuple[str, int]], labels_name: str, images: ImageIndex,
    layout: str, source: Path, problems: list[Problem], left_out: set[str] = frozenset(),
) -> Manifest:
    """Finish a label-file reader: check rows, find each listed image, note the unlisted.

    `places` holds the (file, line) each row came from, so every problem names its row.
    `left_out` are listed images the reader excluded on purpose (and reports itself), so
    they do not count as unlisted.
    """
    table = make_table(rows)
    problems = problems + duplicate_problems(table, places)
    if problems:
        raise problems_error(f"{labels_name}: invalid label rows", problems)
    if table.empty:
        raise DrgradeError(f"{source}: {labels_name} has no graded image rows (only a header, "
                           "or every row left out); a label file has one row per image")
    found = images.found
    table["path"] = [str(found[i]) if i in found else "" for i in table["image_id"]]
    missing = [
        Problem(file, line, image_id, f"image not found in {images.where(image_id)}")
        for image_id, (file, line), path in zip(table["image_id"], places, table["path"],
                                                strict=True)
        if not path
    ]
    manifest = Manifest(table, layout, source, missing)
    unlisted = len(set(found) - set(table["image_id"]) - left_out)
    if unlisted:
        manifest.warnings.append(
            f"{unlisted} image(s) in {images.where()} are not in {labels_name} and are ignored"
        )
    if missing:
        manifest.warnings.append(
            f"images found: {manifest.n_found} of {len(table)} listed in {labels_name}"
        )
    return manifest


def read_text(path: Path) -> str:
    """The text of a label file, or an error naming the line where it stops being UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DrgradeError(f"{path}: cannot read ({error.strerror or error})") from None
    save_as = "save it as UTF-8 (Excel: 'CSV UTF-8'; any editor: 'save with encoding')"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DrgradeError(f"{path}:1: the file is UTF-16 text; {save_as}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DrgradeError(
            f"{path}:{line}: byte {data[error.start]:#04x} is not UTF-8: text in another "
            f"encoding (latin-1?) or not a text file; {save_as}") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DrgradeError(f"{path}:{line}: a NUL byte: not a text file, or UTF-16 without "
                           f"its byte-order mark; {save_as}")
    return text


def _read_csv_rows(
    path: Path, required: dict[str, str], extras: bool = False
) -> tuple[list[dict], list[tuple[str, int]]]:
    """Rows of a headed CSV as {our name: value}, with their (file, 1-based line).

    `required` maps our column names to the file's header names, compared without
    surrounding spaces (IDRiD ships 'Risk of macular edema ' with a trailing space);
    `extras` keeps the other named columns under their own names. Entirely empty rows
    (IDRiD ships some) are skipped: they hold no image.
    """
    if not path.is_file():
        raise DrgradeError(f"{path}: label file not found")
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        absent = [theirs for theirs in required.values() if theirs not in header]
        if absent:
            raise DrgradeError(
                f"{path}:1: missing column(s) {', '.join(absent)}; "
                f"found {', '.join(h for h in header if h) or 'no header'}"
            )
        where = {ours: header.index(theirs) for ours, theirs in required.items()}
        if extras:
            where |= {h: i for i, h in enumerate(header) if h and h not in required.values()}
        rows, places = [], []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            row = row + [""] * (len(header) - len(row))
            rows.append({ours: row[i].strip() for ours, i in where.items()})
            places.append((str(path), reader.line_num))
    except csv.Error as error:  # e.g. a field over csv's 131,072-character limit
        raise DrgradeError(f"{path}:{reader.line_num}: not a readable CSV row ({error}); "
                           "is this the label file?") from None
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
    raw, places = _read_csv_rows(labels_file, EYEPACS_COLUMNS)
    split = "train" if official else ""  # trainLabels.csv alone ships no split
    rows, places, problems = _graded_rows(
        raw, places, lambda r: {**eyepacs_identity(r["image_id"]), "split": split})
    index = image_index(images or (source / "train" if (source / "train").is_dir() else source))
    labels_name = labels_file.name
    if official:
        more_rows, more_places, more_problems = _eyepacs_solution_rows(solution)
        rows, places, problems = rows + more_rows, places + more_places, problems + more_problems
        index |= image_index(source / "test")
        labels_name += f" and {EYEPACS_SOLUTION}"
    manifest = _attach_images(rows, places, labels_name, index, "eyepacs", source, problems)
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
    raw, places = _read_csv_rows(path, {**EYEPACS_COLUMNS, "usage": "Usage"})
    usages = [row.pop("usage") for row in raw]
    problems = [
        Problem(file, line, usage, "Usage must be Public (val) or Private (test)")
        for usage, (file, line) in zip(usages, places, strict=True)
        if usage not in EYEPACS_USAGE
    ]
    for row, usage in zip(raw, usages, strict=True):
        row["split"] = EYEPACS_USAGE.get(usage, "")
    rows, places, more = _graded_rows(raw, places, lambda r: eyepacs_identity(r["image_id"]))
    return rows, places, problems + more


def read_aptos(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """APTOS 2019: train.csv (id_code,diagnosis) + train_images/<id_code>.png."""
    labels_file = labels or source / "train.csv"
    raw, places = _read_csv_rows(labels_file, {"image_id": "id_code", "grade": "diagnosis"})
    rows, places, problems = _graded_rows(raw, places, _own_patient)
    index = image_index(images or source / "train_images")
    return _attach_images(rows, places, labels_file.name, index, "aptos", source, problems)


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
    raw, places = _read_csv_rows(labels_file, IDRID_COLUMNS)
    rows, places, problems = _graded_rows(raw, places, _own_patient)
    index = image_index(images or (source / "images" if (source / "images").is_dir() else source))
    return _attach_images(rows, places, labels_file.name, index, "idrid", source, problems)


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
        raw, where = _read_csv_rows(release / labels_name, IDRID_COLUMNS)
        more = _graded_rows(raw, where, lambda r, split=split: {
            "image_id": f"{split}/{r['image_id']}", "patient": f"{split}/{r['image_id']}",
            "split": split})
        rows, places, problems = rows + more[0], places + more[1], problems + more[2]
        indexes.append(image_index(release / image_dir, prefix=f"{split}/"))
    return _attach_images(rows, places, "IDRiD's training and testing label CSVs",
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
    index = image_index(images or (source / "IMAGES" if (source / "IMAGES").is_dir() else source))
    manifest = _attach_images(rows, places, labels_file.name, index, "messidor2", source,
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
    manifest = _attach_images(rows, places, "DDR's train/valid/test.txt", index, "ddr",
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
    """MedMNIST npz (e.g. RetinaMNIST) with its official train/val/test split.

    The image arrays are checked from their headers (no pixels read): present, uint8 and
    one label an image, so a damaged file fails here rather than in training.
    """
    shapes = _npz_headers(source)
    problems = [p for split in SPLITS for p in _npz_split_problems(source, split, shapes)]
    if problems:
        raise problems_error(f"{source}: not a usable MedMNIST npz", problems)
    try:
        with np.load(source, allow_pickle=False) as arrays:
            grades = {split: arrays[f"{split}_labels"].reshape(-1) for split in SPLITS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DrgradeError(f"{source}: its labels are unreadable ({error}); the file is "
                           "damaged: download it again") from None
    rows = []
    for split in SPLITS:
        for index, value in enumerate(grades[split]):
            grade = parse_grade(str(value), f"{source}[{split}_labels]", index)
            if isinstance(grade, Problem):
                problems.append(grade)
                continue
            image_id = f"{split}_{index:05d}"
            rows.append({"image_id": image_id, "path": f"{source}#{split}/{index}",
                         "grade": grade, "patient": image_id, "split": split})
    if problems:
        raise problems_error(f"{source}: invalid labels", problems)
    if not rows:
        raise DrgradeError(f"{source}: its arrays hold no images")
    return Manifest(make_table(rows), "medmnist", source)


def _npz_headers(source: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an npz, from the .npy headers alone."""
    try:
        with zipfile.ZipFile(source) as archive:
            return {name.removesuffix(".npy"): _npy_header(archive, name)
                    for name in archive.namelist() if name.endswith(".npy")}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DrgradeError(f"{source}: not a readable npz file ({error}); if it was "
                           "downloaded, it may be truncated: download it again") from None


def _npy_header(archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    with archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(member)
    return shape, dtype


def _npz_split_problems(
    source: Path, split: str, shapes: dict[str, tuple[tuple[int, ...], np.dtype]]
) -> list[Problem]:
    """Why one split's arrays are unusable: absent, not uint8 images, not one label an image."""
    images, labels = f"{split}_images", f"{split}_labels"
    absent = [key for key in (images, labels) if key not in shapes]
    if absent:
        found = ", ".join(shapes) or "none"
        return [Problem(str(source), None, key, f"no such array (found: {found})")
                for key in absent]
    (image_shape, image_type), (label_shape, label_type) = shapes[images], shapes[labels]
    problems = []
    grey_or_rgb = len(image_shape) == 3 or (len(image_shape) == 4 and image_shape[3] == 3)
    if image_type != np.uint8 or not grey_or_rgb:
        problems.append(Problem(str(source), None, images, "images must be uint8, shaped "
                                f"(N, H, W) or (N, H, W, 3); found {image_type} {image_shape}"))
    if label_type.kind not in "biuf":
        objects = " (Python objects: drgrade never unpickles)" if label_type.hasobject else ""
        problems.append(Problem(str(source), None, labels,
                                f"labels must be numbers; found dtype {label_type}{objects}"))
    n_images = image_shape[0] if image_shape else 0
    if label_shape[:1] != (n_images,) or math.prod(label_shape) != n_images:
        problems.append(Problem(str(source), None, labels, f"{n_images} images need one label "
                                f"each, shaped ({n_images},) or ({n_images}, 1); found "
                                f"{label_shape}"))
    return problems


def read_prepared(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """A folder written by `drgrade prepare`: manifest.csv with paths relative to it."""
    manifest_file = source / MANIFEST_FILE
    if not manifest_file.is_file():
        raise DrgradeError(f"{source}: no {MANIFEST_FILE}; is this a `drgrade prepare` folder?")
    raw, places = _read_csv_rows(manifest_file, {c: c for c in COLUMNS}, extras=True)
    rows, places, problems = _graded_rows(raw, places, lambda r: {})
    problems += [
        Problem(file, line, row["split"], f"split must be one of {', '.join(SPLITS)} or empty")
        for row, (file, line) in zip(rows, places, strict=True)
        if row["split"] not in ("", *SPLITS)
    ]
    on_disk = {row["image_id"]: source / row["path"] for row in rows
               if row["path"] and (source / row["path"]).is_file()}
    index = ImageIndex(on_disk, {"": f"{source} (at the path its row gives)"})
    return _attach_images(rows, places, str(manifest_file), index, "prepared", source, problems)


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
    "idrid": lambda s, lab: _find_idrid_csv(lab.parent if lab else s) is not None
    or (lab is None and idrid_release(s) is not None),
    "messidor2": lambda s, lab: (s / "messidor_data.csv").is_file(),
    "ddr": lambda s, lab: all(((lab or _ddr_root(s)) / f"{name}.txt").is_file()
                              for name in DDR_SPLITS),
    "folders": lambda s, lab: _has_grade_folders(s)
    or any(_has_grade_folders(s / split) for split in SPLITS),
    "medmnist": lambda s, lab: s.suffix == ".npz",
    "prepared": lambda s, lab: (s / MANIFEST_FILE).is_file(),
}
