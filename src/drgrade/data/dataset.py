"""Torch Datasets over a Manifest's image files and over MedMNIST npz arrays."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

Transform = Callable[[Image.Image], object]


class ManifestDataset(Dataset):
    """(image, grade) pairs from the `path` and `grade` columns of a manifest table.

    Meant for prepared (cached) folders: images are opened as they are, never re-cropped.
    """

    def __init__(self, table: pd.DataFrame, transform: Transform | None = None):
        self.paths = [Path(p) for p in table["path"]]
        self.grades = table["grade"].to_numpy(dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            image = image.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.grades[index])


class NpzDataset(Dataset):
    """(image, grade) pairs of one split of a MedMNIST npz, held in memory (it is small)."""

    def __init__(self, npz: Path | str, split: str, transform: Transform | None = None):
        with np.load(npz) as arrays:
            self.images = arrays[f"{split}_images"]
            self.grades = arrays[f"{split}_labels"].reshape(-1).astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.grades)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index]).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.grades[index])
