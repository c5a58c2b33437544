"""Pure image functions: a photograph as the model sees it: fundus cropped, resized, enhanced.

Nothing here writes files. `prepare` runs `preprocess` on every image of a dataset; run on
a raw photograph with the settings in prepare.json, it gives inference the same pixels.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from drgrade.data.disc import Fundus, find_fundus, square_box
from drgrade.data.photographs import (
    PILLOW_SETTINGS,
    Photograph,
    RejectedImage,
    check_pixels,
    is_npz_reference,
    max_pixels,
    read_photograph,
    source_name,
)
from drgrade.errors import DrgradeError

ENHANCEMENTS = ("none", "ben-graham")

def crop_square(image: Image.Image, fundus: Fundus, size: int) -> tuple[Image.Image, Image.Image]:
    """The fundus box at `size` x `size`, black outside the disc, and that disc's mask.

    The mask (mode L, 255 inside, soft at the rim) is the fitted circle, or the whole box
    for a fallback box, in both cases less the padding beyond the photograph's edges.
    """
    left, top, right, _ = fundus.box
    # PIL fills the parts of the box beyond the photograph with black: the square padding.
    square = image.crop(fundus.box)
    # reducing_gap: a cheap box reduction first, then Lanczos over the last factor <= 3.
    square = square.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    scale = size / (right - left)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / scale  # pixel centres, box units
    inside_x = _soft_band(grid, -left, image.width - left, scale)
    inside_y = _soft_band(grid, -top, image.height - top, scale)
    weights = inside_y[:, None] * inside_x[None, :]
    if fundus.circular:
        weights = weights * _circle(size)
    mask = Image.fromarray(np.rint(weights * 255).astype(np.uint8), "L")
    return Image.composite(square, Image.new("RGB", square.size), mask), mask


def _soft_band(grid: np.ndarray, start: float, end: float, scale: float) -> np.ndarray:
    """1 inside [start, end), 0 outside, with a one-output-pixel ramp at each end."""
    return np.clip(np.minimum(grid - start, end - grid) * scale + 0.5, 0.0, 1.0)


@lru_cache(maxsize=4)
def _circle(size: int) -> np.ndarray:
    """The circle inscribed in a size x size square, 0-1 with a one-pixel soft rim."""
    centred = np.arange(size, dtype=np.float32) + 0.5 - size / 2
    distance = np.hypot(centred[None, :], centred[:, None])
    circle = np.clip(size / 2 - distance + 0.5, 0.0, 1.0)
    circle.flags.writeable = False  # shared by every call through the cache
    return circle


def ben_graham(image: Image.Image, mask: Image.Image | None = None) -> Image.Image:
    """Ben Graham's local colour subtraction: 4*image - 4*local average + 128, black outside.

    The local average is a Gaussian (sigma = side/30) of the fundus pixels only, divided by
    the Gaussian of the mask: near the rim it then averages fundus, not the black outside,
    so there is no bright ring to hide by shrinking the disc as the 2015 original did.
    `mask` (mode L) defaults to the inscribed circle, which is what `crop_square` gives.
    """
    size = image.width
    if mask is None:
        mask = Image.fromarray(np.rint(_circle(size) * 255).astype(np.uint8), "L")
    weights = np.asarray(mask, dtype=np.float32) / 255
    pixels = np.asarray(image, dtype=np.float32)
    local = _masked_average(pixels, weights, sigma=size / 30)
    # The soft rim was darkened by its mask weight: undo that before comparing.
    restored = pixels / np.maximum(weights, 1 / 255)[..., None]
    enhanced = np.clip(4 * restored - 4 * local + 128, 0, 255)
    result = Image.fromarray(np.rint(enhanced).astype(np.uint8), "RGB")
    return Image.composite(result, Image.new("RGB", result.size), mask)


def _masked_average(pixels: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted local average of `pixels` (already multiplied by `weights`).

    The blur is smooth, so it runs at a reduced scale where sigma is still >= 3 px and is
    enlarged back: a few ms at 512 px, in float (no 8-bit rounding, times 4 afterwards).
    """
    size = pixels.shape[0]
    small = max(1, round(size / max(1.0, sigma / 3)))
    planes = [pixels[..., c] for c in range(3)] + [weights]
    reduced = np.stack([_resize_plane(p, small, Image.Resampling.BOX) for p in planes])
    blurred = _gaussian(reduced, sigma * small / size)
    average = blurred[:3] / np.maximum(blurred[3], 1e-6)
    return np.stack([_resize_plane(a, size, Image.Resampling.BILINEAR) for a in average], axis=2)


def _resize_plane(plane: np.ndarray, side: int, method: Image.Resampling) -> np.ndarray:
    plane_image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), "F")
    return np.asarray(plane_image.resize((side, side), method))


def _gaussian(planes: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (n, h, w) planes, zero beyond the edges.

    Shifted sums rather than matrix products: BLAS threads stall on a loaded machine.
    """
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    n, h, w = planes.shape
    padded = np.pad(planes, [(0, 0), (radius, radius), (0, 0)])
    planes = sum(t * padded[:, i: i + h, :] for i, t in enumerate(taps))
    padded = np.pad(planes, [(0, 0), (0, 0), (radius, radius)])
    return sum(t * padded[:, :, i: i + w] for i, t in enumerate(taps))


# --- everything together -------------------------------------------------------------------


def preprocess_photograph(source: str | Path | BinaryIO, size: int, enhance: str = "none",
                          max_megapixels: float | None = None) -> Photograph:
    """A photograph (or npz reference) as the model sees it: fundus square, size x size.

    npz images (MedMNIST) were cropped to the disc by their publisher and are only resized.
    Unusable images raise `RejectedImage` naming the file and the reason; `file_mode` and
    `warning` of the result say whether the photograph had colour.
    """
    if enhance not in ENHANCEMENTS:
        raise DrgradeError(f"unknown enhancement {enhance!r}; choose one of {ENHANCEMENTS}")
    if size < 1:
        raise DrgradeError(f"size must be a positive number of pixels, got {size}")
    with PILLOW_SETTINGS:
        photograph = read_photograph(source, size, max_megapixels)
        image = photograph.image
        if is_npz_reference(source_name(source)):
            fundus = square_box((0, 0, image.width, image.height), circular=False)
        else:
            try:
                fundus = find_fundus(image)
                # The square reaches past the photograph: a picture far wider than tall
                # would make a huge one, allocated in full before it is resized.
                left, top, right, _ = fundus.box
                check_pixels(right - left, right - left, max_pixels(max_megapixels),
                             "the fundus square to crop")
            except RejectedImage as error:
                raise type(error)(error.reason, source_name(source)) from None
        square, mask = crop_square(image, fundus, size)
    if enhance == "ben-graham":
        square = ben_graham(square, mask)
    return Photograph(square, photograph.file_mode)


def preprocess(source: str | Path | BinaryIO, size: int, enhance: str = "none",
               max_megapixels: float | None = None) -> Image.Image:
    """The image of `preprocess_photograph`: what `prepare` caches and the model is given."""
    return preprocess_photograph(source, size, enhance, max_megapixels).image
