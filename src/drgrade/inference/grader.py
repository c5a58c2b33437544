"""The inference runtime: a trained network behind its model card, in numpy.

`GraderBase` does what every model needs (the card's preprocessing, flip TTA, decoding,
predictions); `TorchGrader` (torch_grader.py) runs a checkpoint in PyTorch and
`OnnxGrader` (onnx_grader.py) an exported .onnx file in onnxruntime. This module imports
neither torch nor Lightning, so the ONNX path needs neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from drgrade.data.photographs import Photograph, RejectedImage
from drgrade.errors import DrgradeError
from drgrade.grades import GRADE_NAMES, REFERABLE_GRADE
from drgrade.model_card import ModelCard
from drgrade.operating_points import decode_scores
from drgrade.preprocessing import Preprocessor

# Flip-TTA views: the image and its horizontal, vertical and double flips (NCHW axes).
TTA_FLIPS = ((), (3,), (2,), (2, 3))
# Heat-map methods (explain.py): name -> display name. Kept here, torch-free, so that the
# CLI and the web page can list them without loading torch.
HEAT_MAP_METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}


@dataclass
class Prediction:
    """The grade of one photograph, or the reason it could not be graded."""

    image: str
    grade: int | None = None
    probabilities: list[float] | None = None  # per grade (classification head)
    score: float | None = None  # continuous grade (regression head)
    error: str | None = None
    warning: str | None = None  # graded, but with a caveat (e.g. a greyscale photograph)
    fellow: str | None = None  # binocular models: the image graded as its fellow eye

    @property
    def grade_name(self) -> str | None:
        return None if self.grade is None else GRADE_NAMES[self.grade]

    @property
    def referable(self) -> bool | None:
        return None if self.grade is None else self.grade >= REFERABLE_GRADE


@dataclass
class Batch:
    """One batch of predictions; `inputs` holds the network inputs of the graded ones."""

    predictions: list[Prediction]
    inputs: np.ndarray | None = None
    graded: list[int] = field(default_factory=list)  # positions in `predictions` with inputs
    fellows: np.ndarray | None = None  # binocular models: the fellow eye of each input


class GraderBase:
    """Preprocessing, flip TTA and decoding around a network; subclasses run the network."""

    device = "cpu"
    supports_heat_maps = False  # heat maps need gradients: only the PyTorch grader has them

    def __init__(self, card: ModelCard):
        self.card = card
        self.preprocessor = Preprocessor(card)

    @property
    def head(self) -> str:
        return self.card.head

    @property
    def is_regression(self) -> bool:
        return self.card.is_regression

    def probabilities(self, batch: np.ndarray, fellows: np.ndarray | None = None) -> np.ndarray:
        """Probabilities (N, 5) or scores (N,) of one view of a batch (N, 3, S, S); a
        binocular model's `fellows` are each image's fellow eye (None: the image itself)."""
        raise NotImplementedError

    def photograph(self, source: Path | str | BinaryIO) -> Photograph:
        """The photograph as training saw it, with any warning; `RejectedImage` says why it
        cannot be."""
        return self.preprocessor.photograph(source)

    def to_batch(self, images: list[Image.Image]) -> np.ndarray:
        """Network input (N, 3, S, S) for preprocessed images."""
        return np.stack([self.preprocessor.transform(image) for image in images])

    def outputs(self, batch: np.ndarray, tta: bool = False,
                fellows: np.ndarray | None = None) -> np.ndarray:
        """Per-grade probabilities (N, 5) or regression scores (N,), optionally flip-averaged
        (a binocular model's fellows flipped alike)."""
        views = []
        for axes in TTA_FLIPS if tta else TTA_FLIPS[:1]:
            # A single-eye grader is called as before fellows existed: (batch) alone.
            extra = () if fellows is None else (_flipped(fellows, axes),)
            views.append(self.probabilities(_flipped(batch, axes), *extra))
        return np.mean(views, axis=0)

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        """Grades 0-4: argmax of probabilities, or scores through the card's cut points."""
        if self.is_regression:
            return decode_scores(outputs, self.card.cut_points)
        return np.argmax(outputs, axis=1)

    def referable_score(self, outputs: np.ndarray) -> np.ndarray:
        """Grows with the chance of referable DR: P(grade >= 2), or the regression score."""
        return outputs if self.is_regression else outputs[:, REFERABLE_GRADE:].sum(axis=1)

    def predictions(self, names: list[str], outputs: np.ndarray) -> list[Prediction]:
        """Predictions from `outputs` of the images `names`."""
        grades = self.decode(outputs).tolist()
        values = np.asarray(outputs, dtype=np.float64)
        if self.is_regression:
            return [Prediction(n, g, score=float(v)) for n, g, v in zip(names, grades, values,
                                                                         strict=True)]
        return [Prediction(n, g, probabilities=v.tolist())
                for n, g, v in zip(names, grades, values, strict=True)]

    def predict_image(self, path: Path | str, tta: bool = False) -> Prediction:
        """Grade one photograph; an unusable file gives a Prediction with `error` set."""
        try:
            photograph = self.photograph(path)
        except DrgradeError as error:
            return Prediction(str(path), error=failure_reason(error))
        [prediction] = self.predictions([str(path)],
                                        self.outputs(self.to_batch([photograph.image]), tta))
        prediction.warning = photograph.warning
        return prediction


def _flipped(batch: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(np.flip(batch, axes)) if axes else batch


def failure_reason(error: Exception) -> str:
    """The error column's text for a photograph that could not be graded."""
    if isinstance(error, RejectedImage):
        return error.reason
    if isinstance(error, DrgradeError):
        return str(error)
    return f"unexpected error ({type(error).__name__}: {error})"
