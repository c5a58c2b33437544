"""Label rows matched to the image files a reader found, and the Manifest they make."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from drgrade.data.manifest import Manifest, duplicate_problems, make_table
from drgrade.data.photographs import IMAGE_SUFFIXES
from drgrade.errors import DrgradeError, Problem, problems_error

ELSEWHERE_DEPTH = 3  # how deep below the source missing images are looked for


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
    image is looked for, and reported, in its own split's folder; `searched` holds those
    folders themselves.
    """

    found: dict[str, Path]
    folders: dict[str, str]
    searched: frozenset[Path] = frozenset()

    def where(self, image_id: str = "") -> str:
        """The folders searched for `image_id` (for every image when not given)."""
        if not image_id:
            return " or ".join(self.folders.values())
        return next(w for p, w in self.folders.items() if image_id.startswith(p))

    def __or__(self, other: ImageIndex) -> ImageIndex:
        folders = dict(self.folders)
        for prefix, where in other.folders.items():
            folders[prefix] = f"{folders[prefix]} or {where}" if prefix in folders else where
        return ImageIndex({**self.found, **other.found}, folders, self.searched | other.searched)


def image_index(*folders: Path, prefix: str = "") -> ImageIndex:
    """Image files directly in `folders`, by `prefix` + file name without extension."""
    found = {}
    for folder in folders:
        found |= {prefix + stem: path for stem, path in index_images(folder).items()}
    return ImageIndex(found, {prefix: " or ".join(map(str, folders))},
                      frozenset(Path(folder).resolve() for folder in folders))


def attach_images(
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
    if missing:
        manifest.elsewhere = elsewhere_hint(source, images, [p.value for p in missing])
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


def elsewhere_hint(source: Path, images: ImageIndex, missing_ids: list[str]) -> str:
    """Where below `source` the missing images are, as the --images to give; "" if nowhere.

    Unzipping often nests a folder in itself (resized_train/resized_train/): the images
    are then one or two levels deeper than the layout says.
    """
    # Readers may prefix ids (IDRiD's "train/"); files carry the bare names.
    prefixes = sorted(images.folders, key=len, reverse=True)
    wanted = {next((i[len(p):] for p in prefixes if p and i.startswith(p)), i)
              for i in missing_ids}
    holding = []
    for folder, subfolders, files in os.walk(source):
        depth = len(Path(folder).relative_to(source).parts)
        if depth >= ELSEWHERE_DEPTH:
            subfolders.clear()
        subfolders.sort()
        if Path(folder).resolve() in images.searched:
            continue
        count = sum(Path(f).stem in wanted for f in files
                    if Path(f).suffix.lower() in IMAGE_SUFFIXES)
        if count:
            holding.append((count, folder))
    if not holding:
        return ""
    holding.sort(key=lambda item: -item[0])
    if len(holding) == 1:
        count, folder = holding[0]
        return f"{count:,} of the missing images are in {folder}: give --images {folder}"
    found = ", ".join(f"{count:,} in {folder}" for count, folder in holding[:3])
    return (f"the missing images are in other folders ({found}): give the one to read as "
            "--images")
