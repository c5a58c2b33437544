"""Finding the fundus disc in a photograph: its fitted circle, or a fallback bounding box."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from drgrade.data.photographs import RejectedImage

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


@dataclass(frozen=True)
class Fundus:
    """Where the fundus is: a square box centred on it, which may reach past the image.

    `circular` is True when the box is the bounding square of a fitted circle, so everything
    outside the inscribed circle is background; False for a fallback bounding box.
    """

    box: tuple[int, int, int, int]
    circular: bool


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
        return square_box((0, 0, width, height), circular=False)
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
    return square_box(box, circular=circle is not None)


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


def square_box(box: tuple[float, float, float, float], circular: bool) -> Fundus:
    """The square with the same centre as `box` and a side of its longer side."""
    x0, y0, x1, y1 = box
    side = max(1, round(max(x1 - x0, y1 - y0)))
    left = round((x0 + x1 - side) / 2)
    top = round((y0 + y1 - side) / 2)
    return Fundus((left, top, left + side, top + side), circular)
