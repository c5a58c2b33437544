"""Training samplers whose every draw is a function of (seed, epoch).

Each yields (index, augmentation seed) pairs, so which images an epoch sees and how they
are augmented do not depend on worker processes or on where a run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from drgrade.grades import NUM_GRADES


class EpochSampler(Sampler):
    """One pass over the training set per epoch, drawn by `mode`.

    instance: a permutation (natural grade frequencies); class-balanced: every grade
    equally likely; progressive: from balanced at the first epoch to natural at the last.
    """

    def __init__(self, grades: np.ndarray, mode: str, seed: int, epochs: int):
        self.grades = np.asarray(grades)
        self.mode, self.seed, self.epochs = mode, seed, epochs
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.grades)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.grades)
        if self.mode == "instance":
            indices = rng.permutation(n)
        else:
            indices = rng.choice(n, size=n, replace=True, p=self._sample_weights())
        augment_seeds = rng.integers(0, 2**31 - 1, size=n)
        return iter(zip(indices.tolist(), augment_seeds.tolist(), strict=True))

    def _sample_weights(self) -> np.ndarray:
        counts = np.bincount(self.grades, minlength=NUM_GRADES).astype(float)
        present = counts > 0
        balanced = present / present.sum()
        natural = counts / counts.sum()
        progress = 0.0
        if self.mode == "progressive" and self.epochs > 1:
            progress = min(self.epoch / (self.epochs - 1), 1.0)
        grade_share = (1 - progress) * balanced + progress * natural
        per_image = np.divide(grade_share, counts, out=np.zeros_like(counts), where=present)
        weights = per_image[self.grades]
        return weights / weights.sum()
