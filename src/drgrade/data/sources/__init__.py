"""One reader per dataset layout, each as the dataset really ships -> Manifest.

Each layout's module holds its reader and the sign that a folder is in that layout;
`LAYOUTS` is the one list of them, which `--format` and layout detection read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from drgrade.data.manifest import Manifest
from drgrade.data.sources.aptos import looks_like_aptos, read_aptos
from drgrade.data.sources.ddr import looks_like_ddr, read_ddr
from drgrade.data.sources.eyepacs import eyepacs_identity, looks_like_eyepacs, read_eyepacs
from drgrade.data.sources.folders import looks_like_class_folders, read_class_folders
from drgrade.data.sources.idrid import looks_like_idrid, read_idrid
from drgrade.data.sources.lab import looks_like_lab, read_lab
from drgrade.data.sources.medmnist import looks_like_medmnist, read_medmnist
from drgrade.data.sources.messidor2 import looks_like_messidor2, read_messidor2
from drgrade.data.sources.prepared import looks_like_prepared, read_prepared
from drgrade.errors import DrgradeError

__all__ = ["LAYOUTS", "detect_layout", "eyepacs_identity", "read_prepared", "read_source"]


class Layout(NamedTuple):
    read: Callable[[Path, Path | None, Path | None], Manifest]  # (source, labels, images)
    looks_like: Callable[[Path, Path | None], bool]  # (source, labels)


LAYOUTS: dict[str, Layout] = {
    "lab": Layout(read_lab, looks_like_lab),
    "eyepacs": Layout(read_eyepacs, looks_like_eyepacs),
    "aptos": Layout(read_aptos, looks_like_aptos),
    "idrid": Layout(read_idrid, looks_like_idrid),
    "ddr": Layout(read_ddr, looks_like_ddr),
    "messidor2": Layout(read_messidor2, looks_like_messidor2),
    "folders": Layout(read_class_folders, looks_like_class_folders),
    "medmnist": Layout(read_medmnist, looks_like_medmnist),
    "prepared": Layout(read_prepared, looks_like_prepared),
}


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
    if layout not in LAYOUTS:
        raise DrgradeError(f"unknown --format {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[layout].read(source, labels, images)


def detect_layout(source: Path, labels: Path | None = None) -> str:
    """The one layout `source` matches, or an error naming all that match (or none)."""
    matches = [name for name, layout in LAYOUTS.items() if layout.looks_like(source, labels)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DrgradeError(
            f"{source}: cannot tell the dataset layout; give --format "
            f"({', '.join(LAYOUTS)}) and, where the labels live elsewhere, --labels"
        )
    raise DrgradeError(f"{source}: matches several layouts ({', '.join(matches)}); give --format")
