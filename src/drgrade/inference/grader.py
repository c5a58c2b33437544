"""A trained model together with the exact preprocessing it was trained with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from drgrade.data.fundus import RejectedImage, preprocess
from drgrade.data.transforms import eval_transform
from drgrade.errors import DrgradeError
from drgrade.grades import GRADE_NAMES, REFERABLE_GRADE
from drgrade.models import decode_grades
from drgrade.run_folder import resolve_checkpoint
from drgrade.training import GradingModule, load_module

# Flip-TTA views: the image and its horizontal, vertical and double flips (NCHW dims).
TTA_FLIPS = ([], [3], [2], [2, 3])


@dataclass
class Prediction:
    """The grade of one photograph, or the reason it could not be graded."""

    image: str
    grade: int | None = None
    probabilities: list[float] | None = None  # per grade (classification head)
    score: float | None = None  # continuous grade (regression head)
    error: str | None = None

    @property
    def grade_name(self) -> str | None:
        return None if self.grade is None else GRADE_NAMES[self.grade]

    @property
    def referable(self) -> bool | None:
        return None if self.grade is None else self.grade >= REFERABLE_GRADE


@dataclass(frozen=True)
class Preprocessing:
    """What a raw photograph goes through before the network, as recorded at training."""

    prepare_size: int  # side of the fundus square that `drgrade prepare` cached
    enhance: str  # `drgrade prepare --enhance`
    image_size: int  # network input side
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_settings(cls, settings: dict) -> Preprocessing:
        """From the `preprocessing` hyperparameters of a checkpoint."""
        prepared = settings.get("prepare") or {}
        # Data never prepared (MedMNIST arrays) is fed at the network size, uncropped.
        return cls(int(prepared.get("size", settings["image_size"])),
                   prepared.get("enhance", "none"), int(settings["image_size"]),
                   tuple(settings["mean"]), tuple(settings["std"]))

    @cached_property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Preprocessed image -> normalised network input tensor (C, H, W)."""
        return eval_transform(self.image_size, self.mean, self.std)

    def load(self, path: Path | str | BinaryIO) -> Image.Image:
        """The photograph (a file, or an open binary one) as training saw it; `RejectedImage`
        says why it cannot be."""
        return preprocess(path, self.prepare_size, self.enhance)

    def tensor(self, path: Path | str) -> torch.Tensor:
        """The network input (C, H, W) of a photograph; `RejectedImage` if unusable."""
        return self.transform(self.load(path))


class GraderBase:
    """Preprocessing, flip TTA and decoding around a network; subclasses run the network.

    `Grader` runs a checkpoint in PyTorch, `OnnxGrader` (export.py) an exported .onnx file.
    """

    device = "cpu"

    def __init__(self, preprocessing: dict, head: str, thresholds: torch.Tensor):
        self.preprocessing = preprocessing
        self.settings = Preprocessing.from_settings(preprocessing)
        self.head = head
        self.thresholds = thresholds.detach().cpu()

    @property
    def is_regression(self) -> bool:
        return self.head == "regression"

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, 5) or scores (N,) of one view of a batch."""
        raise NotImplementedError

    def load(self, path: Path | str | BinaryIO) -> Image.Image:
        """The photograph as training saw it; `RejectedImage` says why it cannot be."""
        return self.settings.load(path)

    def to_batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Network input for preprocessed images."""
        return torch.stack([self.settings.transform(image) for image in images]).to(self.device)

    @torch.no_grad()
    def outputs(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Per-grade probabilities (N, 5) or regression scores (N,), optionally flip-averaged."""
        views = [self.forward(batch.flip(dims) if dims else batch)
                 for dims in (TTA_FLIPS if tta else TTA_FLIPS[:1])]
        return torch.stack(views).mean(0)

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Grades 0-4 from `outputs`: argmax of probabilities, or scores through the cut points."""
        return decode_grades(outputs, self.head, self.thresholds)

    def predictions(self, names: list[str], outputs: torch.Tensor) -> list[Prediction]:
        """Predictions from `outputs` of the images `names`."""
        grades = self.decode(outputs).tolist()
        values = outputs.cpu().numpy().astype(np.float64)
        if self.is_regression:
            return [Prediction(n, g, score=float(v)) for n, g, v in zip(names, grades, values,
                                                                         strict=True)]
        return [Prediction(n, g, probabilities=v.tolist())
                for n, g, v in zip(names, grades, values, strict=True)]

    def predict_image(self, path: Path | str, tta: bool = False) -> Prediction:
        """Grade one photograph; an unusable file gives a Prediction with `error` set."""
        try:
            image = self.load(path)
        except DrgradeError as error:
            return Prediction(str(path), error=failure_reason(error))
        return self.predictions([str(path)], self.outputs(self.to_batch([image]), tta))[0]


class Grader(GraderBase):
    """Grades raw photographs exactly as the model's training data was prepared.

    The checkpoint records the `drgrade prepare` settings (fundus crop, size, Ben Graham
    enhancement) and the network input (size, normalisation); nothing is left to the user.
    """

    def __init__(self, module: GradingModule, device: str | None = None):
        super().__init__(module.hparams["preprocessing"], module.config.head, module.thresholds)
        self.module = module.eval()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.module.to(self.device)

    @classmethod
    def from_checkpoint(cls, checkpoint: Path | str, device: str | None = None) -> Grader:
        """A grader from a drgrade checkpoint (or a run folder: its best checkpoint)."""

        return cls(load_module(resolve_checkpoint(Path(checkpoint))), device)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module.probabilities(self.module(batch))


def failure_reason(error: Exception) -> str:
    """The error column's text for a photograph that could not be graded."""
    if isinstance(error, RejectedImage):
        return error.reason
    if isinstance(error, DrgradeError):
        return str(error)
    return f"unexpected error ({type(error).__name__}: {error})"


def load_grader(model: Path | str, device: str | None = None) -> GraderBase:
    """A grader from a run folder, a .ckpt, or an .onnx file written by `drgrade export`."""
    if Path(model).suffix.lower() == ".onnx":
        from drgrade.inference.export import OnnxGrader

        return OnnxGrader(model)
    return Grader.from_checkpoint(model, device)
