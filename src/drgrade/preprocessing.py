"""A raw photograph -> the network's input array, exactly as a model card says.

The one evaluation-time transform: training's validation loader, `evaluate`, `predict`,
`export`'s check and the web page all call `input_array`. numpy and PIL only, so the ONNX
runtime path needs no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from drgrade.data.fundus import Photograph, preprocess_photograph
from drgrade.model_card import ModelCard


def input_array(image: Image.Image, size: int, mean, std) -> np.ndarray:
    """(3, size, size) float32: resized (bilinear, as torchvision's Resize on PIL images),
    scaled to [0, 1] and normalised per channel."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255)
    pixels = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


class EvalTransform:
    """`input_array` as a picklable transform for datasets (DataLoader workers)."""

    def __init__(self, size: int, mean, std):
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)

    def __call__(self, image: Image.Image) -> np.ndarray:
        return input_array(image, self.size, self.mean, self.std)


class Preprocessor:
    """What a raw photograph goes through before a model's network, from its card."""

    def __init__(self, card: ModelCard):
        self.card = card
        self.transform = EvalTransform(card.image_size, card.mean, card.std)

    def photograph(self, source: Path | str | BinaryIO) -> Photograph:
        """The photograph (a file, or an open binary one) as training saw it: fundus crop,
        size and enhancement of `drgrade prepare`, with a warning if it had no colour;
        `RejectedImage` says why it cannot be."""
        return preprocess_photograph(source, self.card.prepare_size, self.card.enhance)

    def load(self, source: Path | str | BinaryIO) -> Image.Image:
        """The preprocessed image of `photograph`."""
        return self.photograph(source).image

    def array(self, source: Path | str | BinaryIO) -> np.ndarray:
        """The network input (3, S, S) of a photograph; `RejectedImage` if unusable."""
        return self.transform(self.load(source))
