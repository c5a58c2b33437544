"""A folder `drgrade prepare` wrote: manifest.csv with paths relative to it."""

from __future__ import annotations

from pathlib import Path

from drgrade.data.manifest import COLUMNS, MANIFEST_FILE, SPLITS, Manifest
from drgrade.data.sources.label_files import graded_rows, read_csv_rows
from drgrade.data.sources.matching import ImageIndex, attach_images
from drgrade.errors import DrgradeError, Problem


def read_prepared(source: Path, labels: Path | None, images: Path | None) -> Manifest:
    """A folder written by `drgrade prepare`: manifest.csv with paths relative to it."""
    manifest_file = source / MANIFEST_FILE
    if not manifest_file.is_file():
        raise DrgradeError(f"{source}: no {MANIFEST_FILE}; is this a `drgrade prepare` folder?")
    raw, places = read_csv_rows(manifest_file, {c: c for c in COLUMNS}, extras=True)
    rows, places, problems = graded_rows(raw, places, lambda r: {})
    problems += [
        Problem(file, line, row["split"], f"split must be one of {', '.join(SPLITS)} or empty")
        for row, (file, line) in zip(rows, places, strict=True)
        if row["split"] not in ("", *SPLITS)
    ]
    on_disk = {row["image_id"]: source / row["path"] for row in rows
               if row["path"] and (source / row["path"]).is_file()}
    index = ImageIndex(on_disk, {"": f"{source} (at the path its row gives)"})
    return attach_images(rows, places, str(manifest_file), index, "prepared", source, problems)


def looks_like_prepared(source: Path, labels: Path | None) -> bool:
    return (source / MANIFEST_FILE).is_file()
