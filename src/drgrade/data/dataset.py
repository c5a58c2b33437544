"""Torch Datasets over a Manifest's image files and over MedMNIST npz arrays."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from drgrade.data.manifest import fellow_indices

Transform = Callable[[Image.Image], object]


# Training pairs an eye with itself this often even when it has a fellow, so that the
# fallback for eyes without one (each its own fellow) is a case the model was trained on.
SELF_FELLOW_P = 0.2


class GradedImages(Dataset):
    """(image, grade) pairs, or (image, fellow, grade) with fellows; subclasses say how to
    open image `index`.

    A key is an index, or an (index, seed) pair from `EpochSampler`: the transform's
    randomness is then drawn from that seed alone, so augmentation is reproducible
    whatever the worker count and wherever a run was resumed. The fellow (the same
    patient's other eye) is transformed independently, from a seed derived from that one.
    """

    grades: np.ndarray
    fellows: list[int] | None = None  # per image its fellow's index, -1 for none

    def __init__(self, transform: Transform | None = None):
        self.transform = transform

    def open(self, index: int) -> Image.Image:
        """The RGB image at `index`."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.grades)

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, grade = self.transformed(index, seed), int(self.grades[index])
        if self.fellows is None:
            return image, grade
        fellow, fellow_seed = self.fellows[index], None
        if seed is not None:
            rng = np.random.default_rng([seed, 1])  # of the image's seed: resumes exactly
            if rng.random() < SELF_FELLOW_P:
                fellow = -1
            fellow_seed = int(rng.integers(0, 2**31 - 1))
        return image, self.transformed(index if fellow < 0 else fellow, fellow_seed), grade

    def transformed(self, index: int, seed: int | None):
        """Image `index` through the transform, its randomness drawn from `seed` if given."""
        image = self.open(index)
        if self.transform is None:
            return image
        if seed is None:
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: torch.manual_seed also queues CUDA reseeds,
            # which cost more than the augmentation at small sizes.
            torch.default_generator.manual_seed(seed)
            return self.transform(image)


class ManifestDataset(GradedImages):
    """Images named by the `path` column of a manifest table, graded by its `grade` column.

    Meant for prepared (cached) folders: images are opened as they are, never re-cropped.
    With `fellows`, each image comes with its fellow eye: the row of the same patient with
    the other eye in `table` (left/right in the `eye` column), else itself.
    """

    def __init__(self, table: pd.DataFrame, transform: Transform | None = None,
                 fellows: bool = False):
        super().__init__(transform)
        self.paths = [Path(p) for p in table["path"]]
        self.grades = table["grade"].to_numpy(dtype=np.int64)
        if fellows:
            self.fellows = fellow_indices(table["patient"].astype(str).tolist(),
                                          table["eye"].fillna("").astype(str).tolist())

    def open(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            return image.convert("RGB")


class NpzDataset(GradedImages):
    """One split of a MedMNIST npz, held in memory (it is small).

    `grades` come from the manifest, which read and checked the npz's labels.
    """

    def __init__(self, npz: Path | str, split: str, grades: np.ndarray,
                 transform: Transform | None = None):
        super().__init__(transform)
        with np.load(npz) as arrays:
            self.images = arrays[f"{split}_images"]
        self.grades = grades

    def open(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")
