"""MedMNIST npz files (e.g. RetinaMNIST) with their official split, checked from headers."""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from drgrade.data.manifest import SPLITS, Manifest, make_table, parse_grade
from drgrade.errors import DrgradeError, Problem, problems_error


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


def looks_like_medmnist(source: Path, labels: Path | None) -> bool:
    return source.suffix == ".npz"
