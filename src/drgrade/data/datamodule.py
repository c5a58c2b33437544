"""LightningDataModule: which images, which transforms, which sampler, which loaders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from drgrade.config import TrainConfig
from drgrade.data.dataset import GradedImages, ManifestDataset, NpzDataset
from drgrade.data.manifest import carve_validation
from drgrade.data.prepare import SETTINGS_FILE
from drgrade.data.samplers import EpochSampler
from drgrade.data.sources import read_source
from drgrade.data.transforms import normalization_stats, train_transform
from drgrade.errors import DrgradeError
from drgrade.grades import NUM_GRADES
from drgrade.model_card import ModelCard
from drgrade.preprocessing import EvalTransform

TRAINABLE_LAYOUTS = ("prepared", "medmnist")
# What to do when a prepared folder has lost images (train has no --allow-missing).
MISSING_FIX = ("restore them, or prepare the dataset again with `drgrade prepare`, which "
               "lists the images it cannot find")


class GradingDataModule(L.LightningDataModule):
    """Train/val(/test) loaders over a prepared folder or a MedMNIST npz."""

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.config = config
        manifest = read_source(config.data)
        if manifest.layout not in TRAINABLE_LAYOUTS:
            raise DrgradeError(
                f"{config.data}: a raw '{manifest.layout}' dataset; prepare it once first, "
                f"e.g. `drgrade prepare {config.data} --out DIR --size {config.image_size}`, "
                "and train on DIR"
            )
        if config.eyes == "both" and manifest.layout == "medmnist":
            raise DrgradeError(
                f"{config.data}: eyes both (option --eyes) pairs each eye with the same "
                "patient's other eye, but MedMNIST arrays name no patients or eyes: use "
                "--eyes single, or a prepared folder of photographs with left and right eyes")
        self.manifest = manifest.require_images(fix=MISSING_FIX)
        self.table = carve_validation(self.manifest.table, config.val_fraction, config.seed)
        for split in ("train", "val") + (("test",) if config.track_test else ()):
            if not (self.table["split"] == split).any():
                raise DrgradeError(f"{config.data}: no '{split}' images")

    def grades(self, split: str) -> np.ndarray:
        """Grades of one split, in dataset order."""
        return self.table.loc[self.table["split"] == split, "grade"].to_numpy(dtype=np.int64)

    def class_counts(self) -> np.ndarray:
        """Training images per grade."""
        return np.bincount(self.grades("train"), minlength=NUM_GRADES)

    def prepare_settings(self) -> dict | None:
        """The `drgrade prepare` settings of this data (None for MedMNIST arrays)."""
        settings_file = Path(self.manifest.source) / SETTINGS_FILE
        return json.loads(settings_file.read_text()) if settings_file.is_file() else None

    def model_card(self) -> ModelCard:
        """What a raw photograph must go through to look like this data to the model, and
        the training grades: the card a model trained on this data starts with."""
        config = self.config
        mean, std = normalization_stats(config)
        return ModelCard(arch=config.arch, head=config.head, image_size=config.image_size,
                         mean=mean, std=std, prepare=self.prepare_settings(),
                         training_grade_counts=tuple(int(n) for n in self.class_counts()),
                         binocular=config.eyes == "both")

    def dataset(self, split: str, train: bool = False) -> GradedImages:
        """The images of one split with train or eval transforms."""
        if train:
            transform = train_transform(self.config)
        else:
            transform = EvalTransform(self.config.image_size, *normalization_stats(self.config))
        if self.manifest.layout == "medmnist":
            return NpzDataset(self.manifest.source, split, self.grades(split), transform)
        return ManifestDataset(self.table[self.table["split"] == split], transform,
                               fellows=self.config.eyes == "both")

    def loader(self, dataset: GradedImages, sampler=None) -> DataLoader:
        """A DataLoader with the configured batch size and workers."""
        workers = self.config.num_workers
        if workers < 0:
            # In-memory arrays decode faster than a worker can be fed.
            in_memory = self.manifest.layout == "medmnist"
            workers = 0 if in_memory else min(4, max(1, (os.cpu_count() or 1) - 1))
        return DataLoader(
            dataset, batch_size=self.config.batch_size, sampler=sampler, num_workers=workers,
            pin_memory=torch.cuda.is_available(), persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(self.grades("train"), self.config.sampler, self.config.seed,
                               self.config.epochs)
        return self.loader(self.dataset("train", train=True), sampler)

    def val_dataloader(self) -> list[DataLoader]:
        splits = ["val", "test"] if self.config.track_test else ["val"]
        return [self.loader(self.dataset(split)) for split in splits]
