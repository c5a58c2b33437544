"""Torch Datasets over a Manifest's image files and over MedMNIST npz arrays."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

Transform = Callable[[Image.Image], object]


class GradedImages(Dataset):
    """(image, grade) pairs; subclasses say how to open image `index`.

    A key is an index, or an (index, seed) pair from `EpochSampler`: the transform's
    randomness is then drawn from that seed alone, so augmentation is reproducible
    whatever the worker count and wherever a run was resumed.
    """

    grades: np.ndarray

    def __init__(self, transform: Transform | None = None):
        self.transform = transform

    def open(self, index: int) -> Image.Image:
        """The RGB image at `index`."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.grades)

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.open(index)
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    # Only the CPU generator: torch.manual_seed also queues CUDA reseeds,
                    # which cost more than the augmentation at small sizes.
                    torch.default_generator.manual_seed(seed)
                    image = self.transform(image)
        return image, int(self.grades[index])


class ManifestDataset(GradedImages):
    """Images named by the `path` column of a manifest table, graded by its `grade` column.

    Meant for prepared (cached) folders: images are opened as they are, never re-cropped.
    """

    def __init__(self, table: pd.DataFrame, transform: Transform | None = None):
        super().__init__(transform)
        self.paths = [Path(p) for p in table["path"]]
        self.grades = table["grade"].to_numpy(dtype=np.int64)

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
