"""Pure image functions: load a photograph, find the fundus disc, crop, resize, enhance.

Nothing here writes files. `prepare` runs `preprocess` on every image of a dataset; run on
a raw photograph with the settings in prepare.json, it gives inference the same pixels.
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

ENHANCEMENTS = ("none", "ben-graham")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
# How a manifest names a MedMNIST image: 'file.npz#split/index'.
NPZ_REF = re.compile(r"^(?P<file>.+\.npz)#(?P<split>\w+)/(?P<index>\d+)$")
MIN_SIDE = 32  # smaller photographs carry no gradable detail
DETECT_SIDE = 400  # the disc is found on a copy about this long: a few px at 512 output
BLANK_RANGE = 6.0  # grey levels between the 1st and 99th percentile of a uniform image
MIN_CONTRAST = 8.0  # grey levels the disc must stand above the background
EDGE_LEVEL = 0.2  # the disc edge is where brightness crosses 20% of background -> disc
MIN_DISC = 0.3  # a disc narrower than this share of the short side is not a fundus
# With no disc edge to go by, only colour says it is a fundus: red-orange, blue at 0.01-0.28
# of red on IDRiD and at most 0.75 on RetinaMNIST's 1,080 training images. A white
# screenshot or a blue picture is not one.
MAX_BLUE_TO_RED = 0.9
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


@dataclass(frozen=True)
class Fundus:
    """Where the fundus is: a square box centred on it, which may reach past the image.

    `circular` is True when the box is the bounding square of a fitted circle, so everything
    outside the inscribed circle is background; False for a fallback bounding box.
    """

    box: tuple[int, int, int, int]
    circular: bool


# --- loading ------------------------------------------------------------------------------


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


_PILLOW = _PillowSettings()


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
        with _PILLOW, Image.open(path, formats=FORMATS) as image:
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


# --- finding the fundus --------------------------------------------------------------------


def find_fundus(image: Image.Image) -> Fundus:
    """The square box around the fundus disc of an RGB photograph (see `Fundus`)."""
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise RejectedImage(f"too small ({width}x{height} px; minimum {MIN_SIDE} px)")
    factor = max(1, math.ceil(max(width, height) / DETECT_SIDE))
    small = np.asarray(image.reduce(factor)).astype(np.float32)
    # The brightest channel: a fundus is red, so grey levels would make it look dim.
    value = small.max(axis=2)
    low, high = np.percentile(value, [1, 99])
    if high - low < BLANK_RANGE:
        raise RejectedImage("blank (uniform image)")
    bright = _disc_mask(value)
    if bright is None:  # bright to the corners: all fundus, if it has a fundus's colour
        _check_colour(small.reshape(-1, 3))
        return _square((0, 0, width, height), circular=False)
    if not bright.any():
        raise RejectedImage("no fundus found (only specks stand out from the background)")
    circle = _fit_disc(bright)
    if circle is not None:
        cx, cy, radius = (v * factor for v in circle)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
    else:  # not round (a camera with another field shape): the bright area's bounding box
        x0, y0, x1, y1 = _bright_extent(bright)
        box = (x0 * factor, y0 * factor, min(x1 * factor, width), min(y1 * factor, height))
    if max(box[2] - box[0], box[3] - box[1]) < MIN_DISC * min(width, height):
        raise RejectedImage("no fundus found (the bright region is too small to be one)")
    return _square(box, circular=circle is not None)


def _check_colour(pixels: np.ndarray) -> None:
    """Reject a frame-filling picture that is not red-cast (`pixels`: n x RGB)."""
    red, _, blue = pixels.mean(axis=0)
    if blue > MAX_BLUE_TO_RED * red:
        raise RejectedImage(f"no fundus found (no dark border, and not red: mean red "
                            f"{red:.0f}, blue {blue:.0f} of 255)")


def _disc_mask(value: np.ndarray) -> np.ndarray | None:
    """Pixels brighter than the background; None when there is no dark background at all."""
    background, noise = _background_level(value)
    height, width = value.shape
    # The centre of a photograph is fundus even when the disc is clipped or off-centre.
    inside = float(np.median(value[height // 3: 2 * height // 3, width // 3: 2 * width // 3]))
    if background > 0.5 * inside and inside >= 4 * MIN_CONTRAST:
        return None  # bright to the corners: already cropped inside the disc
    contrast = inside - background
    if background > 0.5 * inside or contrast < max(MIN_CONTRAST, 4 * noise + 4):
        raise RejectedImage("no fundus found (nothing stands out from the dark background)")
    threshold = background + max(EDGE_LEVEL * contrast, 2 * noise + 3)
    # An opening removes noise specks and thin text strokes; the disc edge barely moves.
    return _dilate(_erode(value > threshold))


def _window_count(mask: np.ndarray, k: int = 5) -> np.ndarray:
    """How many pixels are set in the k x k window around each pixel (zero outside)."""
    counts = mask.astype(np.int32)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (k // 2 + 1, k // 2)
        total = np.cumsum(np.pad(counts, pad), axis=axis)
        n = counts.shape[axis]
        counts = (np.take(total, np.arange(k, k + n), axis=axis)
                  - np.take(total, np.arange(n), axis=axis))
    return counts


def _erode(mask: np.ndarray, k: int = 5) -> np.ndarray:
    """Pixels whose whole k x k window is set."""
    return _window_count(mask, k) == k * k


def _dilate(mask: np.ndarray, k: int = 5) -> np.ndarray:
    """Pixels with any set pixel in their k x k window."""
    return _window_count(mask, k) > 0


def _background_level(value: np.ndarray) -> tuple[float, float]:
    """Level and noise (robust sigma) of the corners: background even if the disc is clipped."""
    height, width = value.shape
    k = max(2, round(0.06 * min(height, width)))
    corners = np.concatenate([
        value[:k, :k].ravel(), value[:k, -k:].ravel(),
        value[-k:, :k].ravel(), value[-k:, -k:].ravel(),
    ])
    # Median and median absolute deviation ignore a label covering even a whole corner.
    level = float(np.median(corners))
    return level, 1.4826 * float(np.median(np.abs(corners - level)))


def _bright_extent(bright: np.ndarray, share: float = 0.1) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of the rows and columns that are largely bright.

    A column counts when at least `share` of the fullest column's pixels are bright, so
    labels and specks in the border do not widen the box.
    """
    columns = _longest_run(bright.sum(axis=0) >= share * bright.sum(axis=0).max())
    x0, x1 = columns
    rows = _longest_run(bright[:, x0:x1].sum(axis=1) >= share * bright[:, x0:x1].sum(axis=1).max())
    return x0, rows[0], x1, rows[1]


def _longest_run(flags: np.ndarray) -> tuple[int, int]:
    """Start and end (exclusive) of the longest run of True in a 1-D array."""
    padded = np.concatenate([[0], flags.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[::2], edges[1::2]
    best = int(np.argmax(ends - starts))
    return int(starts[best]), int(ends[best])


def _fit_disc(bright: np.ndarray) -> tuple[float, float, float] | None:
    """Centre x, y and radius of the circle along the disc edge; None if it is no circle.

    Edge points on the image border are the frame, not the disc, and are left out: that is
    what makes a disc clipped at top and bottom (common in EyePACS) come out right.
    """
    height, width = bright.shape
    x0, y0, x1, y1 = _bright_extent(bright)
    pad = round(0.03 * max(height, width))
    xa, xb, ya, yb = max(0, x0 - pad), min(width, x1 + pad), max(0, y0 - pad), min(height, y1 + pad)
    region = bright[ya:yb, xa:xb]
    points = [
        *_run_ends(region, xa, ya, width),
        *((x, y) for y, x in _run_ends(region.T, ya, xa, height)),
    ]
    if len(points) < 12:
        return None
    xs, ys = np.array(points, dtype=np.float64).T
    keep = np.ones(len(xs), dtype=bool)
    # Refit without the points far off the circle: a notch, a label touching the disc.
    for _ in range(4):
        cx, cy, radius = _circle_through(xs[keep], ys[keep])
        residual = np.abs(np.hypot(xs - cx, ys - cy) - radius)
        keep = residual <= max(1.5, 3 * float(np.median(residual[keep])))
        if keep.sum() < 12:
            return None
    if keep.mean() < 0.5 or not _agrees(bright, cx, cy, radius):
        return None
    return cx, cy, radius


def _run_ends(mask: np.ndarray, offset: int, row_offset: int, limit: int) -> list[tuple]:
    """(x, y) of the first and last bright pixel edge on each row, except at the frame."""
    rows = np.flatnonzero(mask.any(axis=1))
    sub = mask[rows]
    first = offset + sub.argmax(axis=1)
    last = offset + sub.shape[1] - sub[:, ::-1].argmax(axis=1)  # the edge after the last
    y = rows + row_offset + 0.5
    ends = [(float(a), float(b)) for a, b in zip(first, y, strict=True) if a > 0]
    ends += [(float(a), float(b)) for a, b in zip(last, y, strict=True) if a < limit]
    return ends


def _circle_through(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float]:
    """Least-squares circle (Kasa): x^2 + y^2 = 2 cx x + 2 cy y + c, linear in cx, cy, c."""
    design = np.column_stack([2 * xs, 2 * ys, np.ones_like(xs)])
    (cx, cy, c), *_ = np.linalg.lstsq(design, xs**2 + ys**2, rcond=None)
    return float(cx), float(cy), float(math.sqrt(max(c + cx**2 + cy**2, 0.0)))


def _agrees(bright: np.ndarray, cx: float, cy: float, radius: float) -> bool:
    """Whether the circle holds nearly all bright pixels and is mostly bright inside."""
    yy, xx = np.mgrid[: bright.shape[0], : bright.shape[1]]
    inside = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) <= radius + 1.5
    held = (bright & inside).sum()
    return held >= 0.95 * bright.sum() and held >= 0.6 * inside.sum()


def _square(box: tuple[float, float, float, float], circular: bool) -> Fundus:
    """The square with the same centre as `box` and a side of its longer side."""
    x0, y0, x1, y1 = box
    side = max(1, round(max(x1 - x0, y1 - y0)))
    left = round((x0 + x1 - side) / 2)
    top = round((y0 + y1 - side) / 2)
    return Fundus((left, top, left + side, top + side), circular)


# --- crop, resize, enhance -----------------------------------------------------------------


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
    with _PILLOW:
        photograph = read_photograph(source, size, max_megapixels)
        image = photograph.image
        if is_npz_reference(source_name(source)):
            fundus = _square((0, 0, image.width, image.height), circular=False)
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
