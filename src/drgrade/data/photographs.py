"""Reading photograph files safely: formats, pixel limits, orientation, bit depth, npz images.

Every way a file can be unusable becomes a `RejectedImage` naming it and the reason.
"""

from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from drgrade.errors import DrgradeError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
# How a manifest names a MedMNIST image: 'file.npz#split/index'.
NPZ_REF = re.compile(r"^(?P<file>.+\.npz)#(?P<split>\w+)/(?P<index>\d+)$")
# The most pixels decoded (or cropped) for one photograph: fundus cameras give up to about
# 25 MP, while a 500 kB PNG can declare 169 MP and cost 1.2 GB to decode.
MAX_MEGAPIXELS = 80.0
MAX_MEGAPIXELS_ENV = "DRGRADE_MAX_MEGAPIXELS"
# The formats of IMAGE_SUFFIXES (JPEG includes the MPO JPEGs of some cameras). Pillow reads
# many more, some of which hide a larger image than their header says (ICO) or run a program
# (EPS), which matters for uploads to serve.
FORMATS = ("JPEG", "PNG", "TIFF", "BMP")
# Modes without colour: the model, trained on colour, sees them as grey RGB.
GREYSCALE_MODES = {"1", "L", "LA", "La", "I", "F"}


class RejectedImage(DrgradeError):
    """An image that cannot be used, with a short `reason` for rejected.csv."""

    def __init__(self, reason: str, source: str = ""):
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)


class NotAnImage(RejectedImage):
    """A file that is no image in a format drgrade reads."""


class TooManyPixels(RejectedImage):
    """An image over the pixel limit, refused before it is decoded."""


@dataclass(frozen=True)
class Photograph:
    """A photograph as RGB, and the PIL mode of its file (what the model did not see)."""

    image: Image.Image
    file_mode: str

    @property
    def greyscale(self) -> bool:
        """Whether the file had no colour, so the model saw its grey copied into R, G and B."""
        return self.file_mode in GREYSCALE_MODES or self.file_mode.startswith("I;16")

    @property
    def warning(self) -> str | None:
        """What to tell the user about how the photograph was read, if anything."""
        if self.greyscale:
            return (f"greyscale photograph (mode {self.file_mode}): graded as grey RGB by a "
                    f"model trained on colour photographs; the grade may be unreliable")
        return None


def source_name(source: str | Path | BinaryIO) -> str:
    """How messages name a photograph: its path, or 'upload' for an in-memory file."""
    return str(source) if isinstance(source, str | Path) else "upload"


def _is_empty(file: str | Path | BinaryIO) -> bool:
    if isinstance(file, str | Path):
        return Path(file).stat().st_size == 0
    size = file.seek(0, os.SEEK_END)
    file.seek(0)
    return size == 0


def is_npz_reference(source: str | Path) -> bool:
    """Whether `source` is a manifest reference 'file.npz#split/index' (MedMNIST)."""
    return ".npz#" in str(source)


class _PillowSettings:
    """PIL's globals set for photographs while any drgrade load is under way.

    Some libraries switch PIL to filling truncated files with grey; a half photograph would
    then be cached and graded silently, so insist on complete files. PIL's own bomb check
    runs inside Image.open, before ours can: a warning past its limit (89 MP by default), an
    error past twice that, neither saying how to raise it. Ours tests the same header size
    against one limit and `preprocess` the crop too, so PIL's is switched off meanwhile.
    Serve loads in several threads: a count restores the globals when the last one ends.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved: tuple[bool, int | None] = (False, None)

    def __enter__(self) -> None:
        with self.lock:
            if self.users == 0:
                self.saved = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
                ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = False, None
            self.users += 1

    def __exit__(self, *_) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = self.saved


PILLOW_SETTINGS = _PillowSettings()


def max_pixels(max_megapixels: float | None = None) -> int:
    """The pixel limit: `max_megapixels`, else $DRGRADE_MAX_MEGAPIXELS, else MAX_MEGAPIXELS."""
    if max_megapixels is not None:
        return _pixels(max_megapixels, f"max_megapixels={max_megapixels!r}")
    text = os.environ.get(MAX_MEGAPIXELS_ENV, "").strip()
    if not text:
        return _pixels(MAX_MEGAPIXELS, "MAX_MEGAPIXELS")
    try:
        megapixels = float(text)
    except ValueError:
        megapixels = math.nan
    return _pixels(megapixels, f"{MAX_MEGAPIXELS_ENV}={text!r}")


def _pixels(megapixels: float, where: str) -> int:
    if not (math.isfinite(megapixels) and megapixels > 0):
        raise DrgradeError(f"{where}: the largest photograph to decode must be a positive "
                           f"number of megapixels (default {MAX_MEGAPIXELS:g})")
    return int(megapixels * 1e6)


def check_pixels(width: int, height: int, limit: int, what: str = "the image") -> None:
    """`TooManyPixels` if width x height is over `limit`, saying how to raise it."""
    if width * height > limit:
        megapixels = width * height / 1e6
        raise TooManyPixels(
            f"{what} is {width}x{height} px ({megapixels:.1f} megapixels), over the "
            f"{limit / 1e6:g}-megapixel limit for decoding safely; if it is a real photograph, "
            f"set {MAX_MEGAPIXELS_ENV}={math.ceil(megapixels)} (or more)")


def read_photograph(path: str | Path | BinaryIO, size: int,
                    max_megapixels: float | None = None) -> Photograph:
    """A photograph file (or npz reference) as RGB, decoded no smaller than needed.

    `path` may also be an open binary file (an upload held in memory). The pixel count in
    the header is checked against `max_pixels(max_megapixels)` before anything is decoded.
    JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (`draft`) when that still
    leaves both sides >= `size`: a 4288x2848 photograph is never fully decoded for 512 px.
    """
    source = source_name(path)
    if is_npz_reference(source):
        return _npz_image(source)
    limit = max_pixels(max_megapixels)
    try:
        if _is_empty(path):
            raise RejectedImage("empty file (0 bytes)", source)
        with PILLOW_SETTINGS, Image.open(path, formats=FORMATS) as image:
            check_pixels(*image.size, limit)  # the header only: nothing is decoded yet
            file_mode = image.mode
            image.draft("RGB", (size, size))  # a no-op for formats other than JPEG
            image.load()
            return Photograph(to_rgb(_upright(image)), file_mode)
    except RejectedImage as error:
        raise type(error)(error.reason, source) from None
    except UnidentifiedImageError:
        raise NotAnImage(f"not an image in a format drgrade reads "
                         f"({', '.join(FORMATS)})", source) from None
    except FileNotFoundError:
        raise RejectedImage("file not found", source) from None
    except PermissionError:
        raise RejectedImage("file not readable (permission denied)", source) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # PIL reports a short file as OSError("image file is truncated ...").
        if "truncated" in str(error).lower():
            raise RejectedImage("truncated image data", source) from None
        raise RejectedImage(f"corrupt image data ({error})", source) from None


def load_photograph(path: str | Path | BinaryIO, size: int,
                    max_megapixels: float | None = None) -> Image.Image:
    """The RGB image of `read_photograph`."""
    return read_photograph(path, size, max_megapixels).image


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (phones and some cameras set it)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block says nothing reliable about orientation
        return image.copy()  # a copy: the caller closes the file behind `image`


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16-bit scaled (not clipped), transparency on black."""
    if image.mode.startswith("I") or image.mode == "F":
        image = Image.fromarray(_to_8bit(np.asarray(image), image.mode), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if "A" in image.mode or "a" in image.mode:
        rgba = image.convert("RGBA")
        black = Image.new("RGB", image.size)
        black.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return black
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit, 32-bit or float single-channel array to 0-255 (PIL would clip it)."""
    values = values.astype(np.float64)
    top = float(values.max()) if values.size else 1.0
    if mode.startswith("I;16"):
        full = 65535.0
    elif mode == "F":
        full = 1.0 if top <= 1.0 else top
    else:  # mode I holds 8- or 16-bit data in 32 bits; the range tells which
        full = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    return np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)


def _npz_image(reference: str) -> Photograph:
    match = NPZ_REF.match(reference)
    if not match:
        raise RejectedImage("not an npz image reference (file.npz#split/index)", reference)
    try:
        images = _npz_split(match["file"], match["split"])
        image = Image.fromarray(images[int(match["index"])])
        return Photograph(to_rgb(image), image.mode)
    except (OSError, KeyError, IndexError, ValueError) as error:
        raise RejectedImage(f"cannot read npz image ({error})", reference) from None


@lru_cache(maxsize=1)
def _npz_split(file: str, split: str) -> np.ndarray:
    # Reading one image decompresses its whole split array: keep the last one, since a
    # worker gets a run of images of the same split.
    with np.load(file) as arrays:
        return arrays[f"{split}_images"]
