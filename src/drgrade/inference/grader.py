"""A trained model together with the exact preprocessing it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from drgrade.data.fundus import preprocess
from drgrade.data.transforms import eval_transform
from drgrade.errors import DrgradeError
from drgrade.grades import GRADE_NAMES, REFERABLE_GRADE
from drgrade.training import GradingModule, load_module


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


class Grader:
    """Grades raw photographs exactly as the model's training data was prepared.

    The checkpoint records the `drgrade prepare` settings (fundus crop, size, Ben Graham
    enhancement) and the network input (size, normalisation); nothing is left to the user.
    """

    def __init__(self, module: GradingModule, device: str | None = None):
        self.module = module.eval()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.module.to(self.device)
        settings = module.hparams["preprocessing"]
        prepared = settings.get("prepare") or {}
        # Data never prepared (MedMNIST arrays) is fed at the network size, uncropped.
        self.prepare_size = int(prepared.get("size", settings["image_size"]))
        self.enhance = prepared.get("enhance", "none")
        self.transform = eval_transform(settings["image_size"], settings["mean"], settings["std"])

    @classmethod
    def from_checkpoint(cls, checkpoint: Path | str, device: str | None = None) -> Grader:
        """A grader from a drgrade checkpoint (or a run folder: its best checkpoint)."""
        from drgrade.evaluation.evaluate import resolve_checkpoint

        return cls(load_module(resolve_checkpoint(Path(checkpoint))), device)

    @property
    def is_regression(self) -> bool:
        return self.module.is_regression

    def load(self, path: Path | str) -> Image.Image:
        """The photograph as training saw it; `RejectedImage` says why it cannot be."""
        return preprocess(path, self.prepare_size, self.enhance)

    def to_batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Network input for preprocessed images."""
        return torch.stack([self.transform(image) for image in images]).to(self.device)

    @torch.no_grad()
    def outputs(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Per-grade probabilities (N, 5) or regression scores (N,), optionally flip-averaged."""
        flips = [[], [3], [2], [2, 3]] if tta else [[]]
        views = [self.module.probabilities(self.module(batch.flip(d) if d else batch))
                 for d in flips]
        return torch.stack(views).mean(0)

    def predictions(self, names: list[str], outputs: torch.Tensor) -> list[Prediction]:
        """Predictions from `outputs` of the images `names`."""
        # Probabilities decode like logits (argmax); scores through the fitted cut points.
        grades = self.module.decode(outputs).tolist()
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
            return Prediction(str(path), error=getattr(error, "reason", str(error)))
        return self.predictions([str(path)], self.outputs(self.to_batch([image]), tta))[0]
