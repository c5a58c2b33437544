"""Synthetic fundus photographs whose lesions follow the DR grade, for the demo and tests.

Each picture is built the way light makes one: a flat retina (orange-red albedo with an
optic disc, a macula, vessels and the grade's lesions) is multiplied by an illumination
field (vignetting and a tilt), cut to the camera's circular field on a dark surround, and
given a little sensor noise. Lesion sizes scale with the fundus radius and are larger
than in life, so that the grade stays visible after cropping and resizing to ~128 px:
the demo must learn it from scratch in a few CPU minutes.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from drgrade.errors import DrgradeError
from drgrade.grades import NUM_GRADES

# Skewed towards "no DR" like real screening data, but less extreme (EyePACS is 73% grade 0),
# so a model has to beat a ~40% majority baseline.
DEFAULT_GRADE_WEIGHTS = (0.40, 0.15, 0.20, 0.13, 0.12)
DEFAULT_WIDTHS = (600, 1200)
JPEG_QUALITY = 90
# Correlation of the two eyes' latent severity (see `synthetic_labels`).
EYE_CORRELATION = 0.95

# Flat-retina colours (RGB, before illumination).
VEIN = (125, 22, 18)
ARTERY = (170, 40, 28)
HAEMORRHAGE = (115, 14, 10)
EXUDATE = (255, 235, 95)
COTTON_WOOL = (245, 236, 205)
NEW_VESSEL = (175, 22, 20)


@dataclass
class _Eye:
    """Where things are in one photograph (pixels)."""

    width: int
    height: int
    cx: float
    cy: float
    r: float  # radius of the camera's circular field
    disc: tuple[float, float]
    disc_r: float
    macula: tuple[float, float]
    temporal: int  # +1 when the macula lies right of the disc, -1 when left
    veins: list[list[tuple[float, float]]] = field(default_factory=list)

    def inside(self, x: float, y: float, margin: float = 0.0) -> bool:
        """True for a point in the visible fundus, `margin` (fraction of r) away from its rim."""
        in_field = math.hypot(x - self.cx, y - self.cy) < self.r * (1 - margin)
        return in_field and 0 <= x < self.width and 0 <= y < self.height


class _Layer:
    """An opacity mask drawn at full size, then blurred and blended in one colour."""

    def __init__(self, eye: _Eye, colour: tuple[int, int, int], blur: float, opacity: float):
        self.mask = Image.new("L", (eye.width, eye.height), 0)
        self.draw = ImageDraw.Draw(self.mask)
        self.colour = colour
        self.blur = blur
        self.opacity = opacity
        self.used = False

    def blot(self, points: list[tuple[float, float]], value: int = 255) -> None:
        """A filled polygon."""
        self.draw.polygon(points, fill=value)
        self.used = True

    def dot(self, x: float, y: float, radius: float, value: int = 255) -> None:
        """A filled circle."""
        self.draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=value)
        self.used = True

    def line(self, points: list[tuple[float, float]], width: float, value: int = 255) -> None:
        """A polyline with rounded joints."""
        self.draw.line(points, fill=value, width=max(1, round(width)), joint="curve")
        self.used = True

    def blend_into(self, albedo: Image.Image) -> None:
        """Paint this layer's colour over `albedo` where the mask is set, in place."""
        box = self.mask.getbbox() if self.used else None
        if box is None:
            return
        # Work on the drawn region only: most lesion layers cover a small part of the image.
        pad = math.ceil(3 * self.blur) + 1
        box = (max(0, box[0] - pad), max(0, box[1] - pad),
               min(self.mask.width, box[2] + pad), min(self.mask.height, box[3] + pad))
        mask = self.mask.crop(box)
        if self.blur >= 0.3:
            # A box blur is half the cost and looks the same at a radius of a pixel or two.
            blur = ImageFilter.BoxBlur if self.blur < 2 else ImageFilter.GaussianBlur
            mask = mask.filter(blur(self.blur))
        if self.opacity < 1:
            mask = mask.point([round(i * self.opacity) for i in range(256)])
        region = albedo.crop(box)
        paint = Image.new("RGB", region.size, self.colour)
        albedo.paste(Image.composite(paint, region, mask), box[:2])


def synthetic_fundus(
    grade: int,
    rng: np.random.Generator,
    size: tuple[int, int] | None = None,
    eye: str | None = None,
) -> Image.Image:
    """An RGB fundus photograph of `size` (width, height) with lesions typical of `grade`."""
    if grade not in range(NUM_GRADES):
        raise DrgradeError(f"synthetic grade must be 0-{NUM_GRADES - 1}, got {grade!r}")
    width, height = size if size is not None else random_size(rng)
    if eye not in (None, "left", "right"):
        raise DrgradeError(f"eye must be 'left' or 'right', got {eye!r}")
    geometry = _geometry(rng, width, height, eye)
    albedo = _retina(rng, geometry)
    _draw_vessels_and_lesions(rng, geometry, grade, albedo)
    return _photograph(rng, geometry, albedo)


def random_size(rng: np.random.Generator, widths: tuple[int, int] = DEFAULT_WIDTHS
                ) -> tuple[int, int]:
    """A (width, height) like a fundus camera's: width in `widths`, aspect ratio 1.0-1.5."""
    width = int(rng.integers(widths[0], widths[1] + 1))
    ratio = float(rng.choice([1.0, 1.33, 1.5])) if rng.random() < 0.7 else rng.uniform(1.0, 1.5)
    return width, max(1, round(width / ratio))


def _geometry(rng: np.random.Generator, width: int, height: int, eye: str | None) -> _Eye:
    """Camera field, optic disc and macula positions for one photograph."""
    cx = width / 2 + rng.normal(0, 0.01) * width
    cy = height / 2 + rng.normal(0, 0.01) * height
    if rng.random() < 0.35 and width > height * 1.05:
        # EyePACS-style: the round field is cut off at the top and bottom of the frame.
        r = min(height / 2 * rng.uniform(1.05, 1.2), width / 2 * 0.98)
    else:
        r = min(width, height) / 2 * rng.uniform(0.86, 0.97)
    eye = eye or ("left" if rng.random() < 0.5 else "right")
    # Seen from the front, the optic disc is nasal: right of centre in a right eye.
    temporal = -1 if eye == "right" else 1
    disc_r = r * rng.uniform(0.105, 0.125)
    disc = (cx - temporal * r * rng.uniform(0.45, 0.55), cy + r * rng.normal(0, 0.04))
    # The fovea lies about 2.5 disc diameters temporal to the disc, a little below it.
    fovea = (disc[0] + temporal * disc_r * rng.uniform(4.6, 5.2), disc[1] + disc_r * 0.3)
    return _Eye(width, height, cx, cy, r, disc, disc_r, fovea, temporal)


def _retina(rng: np.random.Generator, eye: _Eye) -> Image.Image:
    """The flat retina: orange-red albedo with texture, a bright disc and a darker macula."""
    h, w = eye.height, eye.width
    base = np.array([rng.uniform(205, 240), rng.uniform(80, 125), rng.uniform(25, 60)],
                    dtype=np.float32)
    # Low-frequency mottling (choroid showing through): a small noise image blown up.
    coarse = rng.normal(1, 0.05, (9, 12, 1)).astype(np.float32) * base
    albedo = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB").resize(
        (w, h), Image.Resampling.BICUBIC)
    depth = rng.uniform(0.2, 0.35)

    def macula(d2: np.ndarray, patch: np.ndarray) -> np.ndarray:
        wide = np.exp(-d2 / (2 * (1.6 * eye.disc_r) ** 2))
        fovea = np.exp(-d2 / (2 * (0.35 * eye.disc_r) ** 2))
        return patch * (1 - depth * wide - 0.15 * fovea)[..., None]

    _patch(albedo, eye.macula, 5 * eye.disc_r, macula)
    # The disc: yellow rim, paler cup, soft edge.
    disc_colour = np.array([255, 210, 125], dtype=np.float32)
    cup_colour = np.array([255, 240, 200], dtype=np.float32)
    cup = rng.uniform(0.4, 0.6)

    def disc(d2: np.ndarray, patch: np.ndarray) -> np.ndarray:
        d = np.sqrt(d2) / eye.disc_r
        rim = np.clip((1.1 - d) / 0.35, 0, 1)[..., None]
        centre = np.clip((cup - d) / 0.3, 0, 1)[..., None]
        halo = 0.25 * np.exp(-0.5 * (d / 1.1) ** 2)[..., None]  # peripapillary glow
        patch = patch + np.maximum(rim, halo) * (disc_colour - patch)
        return patch + centre * (cup_colour - patch)

    _patch(albedo, eye.disc, 3 * eye.disc_r, disc)
    return albedo


def _patch(
    image: Image.Image, centre: tuple[float, float], reach: float,
    change: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> None:
    """Replace the square round `centre` by change(squared distance to centre, square)."""
    x0, x1 = max(0, int(centre[0] - reach)), min(image.width, int(centre[0] + reach) + 1)
    y0, y1 = max(0, int(centre[1] - reach)), min(image.height, int(centre[1] + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    ys, xs = np.ogrid[y0:y1, x0:x1]
    d2 = ((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2).astype(np.float32)
    square = np.asarray(image.crop((x0, y0, x1, y1)), dtype=np.float32)
    changed = np.clip(change(d2, square), 0, 255).astype(np.uint8)
    image.paste(Image.fromarray(changed, "RGB"), (x0, y0))


def _draw_vessels_and_lesions(
    rng: np.random.Generator, eye: _Eye, grade: int, albedo: Image.Image
) -> None:
    """Blend vessels and the grade's lesions into `albedo`, in place."""
    r = eye.r
    veins = _Layer(eye, VEIN, blur=0.004 * r, opacity=0.8)
    arteries = _Layer(eye, ARTERY, blur=0.004 * r, opacity=0.7)
    _vessel_tree(rng, eye, veins, arteries)
    # Lesions draw from their own generator, so that everything else in the picture (and
    # what `rng` gives afterwards) is the same whatever the grade: same seed, same eye.
    rng = np.random.default_rng(rng.integers(2**63))
    cotton_wool = _Layer(eye, COTTON_WOOL, blur=0.02 * r, opacity=0.8)
    haemorrhages = _Layer(eye, HAEMORRHAGE, blur=0.004 * r, opacity=0.85)
    exudates = _Layer(eye, EXUDATE, blur=0.002 * r, opacity=0.95)
    new_vessels = _Layer(eye, NEW_VESSEL, blur=0.002 * r, opacity=0.85)

    if grade >= 1:
        count = {1: (4, 11), 2: (6, 16)}.get(grade, (10, 25))
        _microaneurysms(rng, eye, haemorrhages, int(rng.integers(*count)), grade)
    if grade == 2:
        _haemorrhages(rng, eye, haemorrhages, int(rng.integers(4, 13)), posterior=True)
        if rng.random() < 0.8:
            _exudates(rng, eye, exudates, int(rng.integers(1, 4)))
        if rng.random() < 0.25:
            _cotton_wool(rng, eye, cotton_wool, 1)
    if grade >= 3:
        # The 4-2-1 rule's first arm: many haemorrhages in all four quadrants.
        for quadrant in range(4):
            count = int(rng.integers(5, 11))
            _haemorrhages(rng, eye, haemorrhages, count, posterior=False, quadrant=quadrant)
        if rng.random() < 0.7:
            _exudates(rng, eye, exudates, int(rng.integers(1, 5)))
        _cotton_wool(rng, eye, cotton_wool, int(rng.integers(2, 7)))
        if rng.random() < 0.5:
            _venous_beading(rng, eye, veins)
    if grade == 4:
        _new_vessels(rng, eye, new_vessels, near_disc=True)
        for _ in range(int(rng.integers(0, 3))):
            _new_vessels(rng, eye, new_vessels, near_disc=False)
        if rng.random() < 0.6:
            _preretinal_haemorrhage(rng, eye, haemorrhages)

    # Deeper layers first, so vessels run over cotton-wool spots and lesions over vessels.
    for layer in (cotton_wool, arteries, veins, exudates, haemorrhages, new_vessels):
        layer.blend_into(albedo)


# --- vessels -------------------------------------------------------------------------------


def _vessel_tree(rng: np.random.Generator, eye: _Eye, veins: _Layer, arteries: _Layer) -> None:
    """Four arcades arching round the macula and a few nasal vessels, all from the disc."""
    r = eye.r
    for layer, width in ((veins, 0.024 * r), (arteries, 0.018 * r)):
        for up in (-1, 1):
            # Leave the disc steeply, bend round the macula, then run on temporally.
            angle = up * (math.pi / 2 + rng.uniform(-0.35, 0.05))
            curve = -up * rng.uniform(0.06, 0.085)
            path = _vessel(rng, eye, layer, eye.disc, angle, curve, width, 1.6 * r, 0)
            if layer is veins:
                eye.veins.append(path)
        for _ in range(int(rng.integers(2, 4))):
            angle = math.pi + rng.uniform(-1.2, 1.2)  # nasal: away from the macula
            _vessel(rng, eye, layer, eye.disc, angle, rng.normal(0, 0.02), width * 0.6,
                    0.8 * r, 1)


def _vessel(
    rng: np.random.Generator, eye: _Eye, layer: _Layer, start: tuple[float, float],
    angle: float, curve: float, width: float, length: float, depth: int,
) -> list[tuple[float, float]]:
    """Grow one vessel (angles in the frame where temporal is +x), branching; its path."""
    step = eye.r * 0.03
    x, y = start
    path = [(x, y)]
    chunk = [(x, y)]
    for i in range(int(length / step)):
        angle += curve + rng.normal(0, 0.04)
        curve *= 0.96
        x += eye.temporal * step * math.cos(angle)
        y += step * math.sin(angle)
        if not eye.inside(x, y, margin=0.01):
            break
        chunk.append((x, y))
        path.append((x, y))
        if depth < 3 and i > 2 and rng.random() < 0.1:
            side = 1 if rng.random() < 0.5 else -1
            _vessel(rng, eye, layer, (x, y), angle + side * rng.uniform(0.4, 1.0),
                    rng.normal(0, 0.03), width * rng.uniform(0.5, 0.7),
                    length * rng.uniform(0.3, 0.55), depth + 1)
            # The parent narrows after giving off a branch.
            layer.line(chunk, width)
            chunk = [(x, y)]
            width *= 0.88
    layer.line(chunk, width)
    return path


def _venous_beading(rng: np.random.Generator, eye: _Eye, veins: _Layer) -> None:
    """Sausage-like swellings along a stretch of one main vein."""
    path = eye.veins[int(rng.integers(len(eye.veins)))]
    if len(path) < 12:
        return
    start = int(rng.integers(4, len(path) - 6))
    for x, y in path[start : start + 12 : 2]:
        veins.dot(x, y, eye.r * rng.uniform(0.018, 0.026))


# --- lesions -------------------------------------------------------------------------------


def _place(
    rng: np.random.Generator, eye: _Eye, posterior: bool, quadrant: int | None = None
) -> tuple[float, float]:
    """A random visible point away from the optic disc; near the macula when `posterior`."""
    for _ in range(100):
        if posterior:
            centre, reach = eye.macula, 0.6 * eye.r
        else:
            centre, reach = (eye.cx, eye.cy), 0.9 * eye.r
        angle = rng.uniform(0, 2 * math.pi)
        if quadrant is not None:  # quadrants around the disc-macula midpoint
            centre = ((eye.disc[0] + eye.macula[0]) / 2, (eye.disc[1] + eye.macula[1]) / 2)
            angle = (quadrant + rng.uniform(0.1, 0.9)) * math.pi / 2
        distance = reach * math.sqrt(rng.uniform(0.02, 1))
        x, y = centre[0] + distance * math.cos(angle), centre[1] + distance * math.sin(angle)
        if eye.inside(x, y, margin=0.06) and \
                math.hypot(x - eye.disc[0], y - eye.disc[1]) > 1.6 * eye.disc_r:
            return x, y
    return eye.macula


def _ellipse(
    x: float, y: float, a: float, b: float, theta: float, points: int = 14
) -> list[tuple[float, float]]:
    """Polygon of an ellipse with half-axes a, b turned by theta."""
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    out = []
    for k in range(points):
        t = 2 * math.pi * k / points
        u, v = a * math.cos(t), b * math.sin(t)
        out.append((x + u * cos_t - v * sin_t, y + u * sin_t + v * cos_t))
    return out


def _microaneurysms(
    rng: np.random.Generator, eye: _Eye, layer: _Layer, count: int, grade: int
) -> None:
    """Tiny round dark-red dots, mostly around the macula."""
    for _ in range(count):
        x, y = _place(rng, eye, posterior=grade < 3 or rng.random() < 0.5)
        layer.dot(x, y, eye.r * rng.uniform(0.015, 0.024), int(rng.integers(190, 256)))


def _haemorrhages(
    rng: np.random.Generator, eye: _Eye, layer: _Layer, count: int, posterior: bool,
    quadrant: int | None = None,
) -> None:
    """Dot, blot and a few flame haemorrhages."""
    r = eye.r
    for _ in range(count):
        x, y = _place(rng, eye, posterior, quadrant)
        kind = rng.random()
        value = int(rng.integers(150, 256))  # some fresh and dark, some faded
        if kind < 0.4:  # dot
            layer.dot(x, y, r * rng.uniform(0.028, 0.04), value)
        elif kind < 0.85:  # blot: a few overlapping irregular ellipses
            size = r * rng.uniform(0.03, 0.055)
            for _ in range(int(rng.integers(2, 5))):
                ox, oy = rng.normal(0, 0.4 * size, 2)
                layer.blot(_ellipse(x + ox, y + oy, size * rng.uniform(0.6, 1.0),
                                    size * rng.uniform(0.4, 0.8), rng.uniform(0, math.pi)),
                           value)
        else:  # flame: thin and long, along the nerve fibres (radial from the disc)
            theta = math.atan2(y - eye.disc[1], x - eye.disc[0])
            layer.blot(_ellipse(x, y, r * rng.uniform(0.05, 0.08), r * rng.uniform(0.012, 0.02),
                                theta), value)


def _exudates(rng: np.random.Generator, eye: _Eye, layer: _Layer, clusters: int) -> None:
    """Clusters of small sharp yellow spots around the macula, some in partial rings."""
    r = eye.r
    for _ in range(clusters):
        x, y = _place(rng, eye, posterior=True)
        spread = r * rng.uniform(0.05, 0.11)
        ring = rng.random() < 0.3
        for _ in range(int(rng.integers(5, 16))):
            if ring:  # circinate: spots on an arc round a leaking point
                t = rng.uniform(0, 1.5 * math.pi)
                ex, ey = x + spread * math.cos(t), y + spread * math.sin(t)
            else:
                ex, ey = x + rng.normal(0, spread / 2), y + rng.normal(0, spread / 2)
            if eye.inside(ex, ey, margin=0.03):
                layer.dot(ex, ey, r * rng.uniform(0.01, 0.022))


def _cotton_wool(rng: np.random.Generator, eye: _Eye, layer: _Layer, count: int) -> None:
    """Pale fluffy patches, mostly along the arcades near the disc."""
    r = eye.r
    for _ in range(count):
        angle = rng.uniform(-1.3, 1.3) + (math.pi / 2 if rng.random() < 0.5 else -math.pi / 2)
        distance = r * rng.uniform(0.2, 0.45)
        x = eye.disc[0] + eye.temporal * distance * abs(math.cos(angle)) * 0.8
        y = eye.disc[1] + distance * math.sin(angle)
        if not eye.inside(x, y, margin=0.08):
            x, y = _place(rng, eye, posterior=True)
        size = r * rng.uniform(0.04, 0.07)
        layer.blot(_ellipse(x, y, size, size * rng.uniform(0.5, 0.8), rng.uniform(0, math.pi)))


def _new_vessels(rng: np.random.Generator, eye: _Eye, layer: _Layer, near_disc: bool) -> None:
    """A tuft of fine tortuous vessels, on or next to the disc or along an arcade."""
    r = eye.r
    if near_disc or not eye.veins:
        angle = rng.uniform(0, 2 * math.pi)
        distance = eye.disc_r * rng.uniform(0.5, 1.6)
        x = eye.disc[0] + distance * math.cos(angle)
        y = eye.disc[1] + distance * math.sin(angle)
    else:
        path = eye.veins[int(rng.integers(len(eye.veins)))]
        x, y = path[int(rng.integers(len(path) // 3, len(path)))]
    spread = r * rng.uniform(0.08, 0.13)
    width = max(1.0, r * 0.008)
    # The web is too fine to survive a resize to ~128 px alone; its red haze does survive.
    layer.dot(x, y, 0.7 * spread, value=70)
    for _ in range(int(rng.integers(15, 30))):
        px, py = x + rng.normal(0, spread / 2), y + rng.normal(0, spread / 2)
        heading = rng.uniform(0, 2 * math.pi)
        loop = [(px, py)]
        for _ in range(int(rng.integers(6, 12))):
            heading += rng.normal(0, 0.9)
            px += spread * 0.18 * math.cos(heading)
            py += spread * 0.18 * math.sin(heading)
            loop.append((px, py))
        layer.line(loop, width)


def _preretinal_haemorrhage(rng: np.random.Generator, eye: _Eye, layer: _Layer) -> None:
    """A boat-shaped haemorrhage: blood settled under gravity, flat on top."""
    x, y = _place(rng, eye, posterior=True)
    a, b = eye.r * rng.uniform(0.1, 0.17), eye.r * rng.uniform(0.06, 0.1)
    arc = [(x + a * math.cos(t), y + b * math.sin(t)) for t in np.linspace(0, math.pi, 16)]
    layer.blot(arc)


# --- the camera ----------------------------------------------------------------------------


def _photograph(rng: np.random.Generator, eye: _Eye, albedo: Image.Image) -> Image.Image:
    """Light the retina (vignetting, tilt), cut to the round field and add sensor noise."""
    h, w = eye.height, eye.width
    u = ((np.arange(w, dtype=np.float32) - eye.cx) / eye.r)[None, :]
    v = ((np.arange(h, dtype=np.float32) - eye.cy) / eye.r)[:, None]
    d2 = u * u + v * v
    d = np.sqrt(d2)
    # Vignetting falls off between d^2 and d^3: darker toward the rim, as in real cameras.
    steep = rng.uniform(0, 1)
    fall = d2 * ((1 - steep) + steep * d)
    tilt = rng.normal(0, 0.1, 2).astype(np.float32)
    light = rng.uniform(0.85, 1.05) * (1 - rng.uniform(0.4, 0.55) * fall)
    light *= 1 + tilt[0] * u + tilt[1] * v
    np.clip(light, 0.15, 1, out=light)
    light *= np.clip((1 - d) * (eye.r / 1.5), 0, 1)  # ~1.5 px soft rim of the field
    light_rgb = Image.fromarray((light * 255).astype(np.uint8), "L").convert("RGB")
    lit = ImageChops.multiply(albedo, light_rgb)
    # Sensor noise and a dark but not black surround.
    noise = rng.integers(0, 7, (h, w), dtype=np.uint8)
    return ImageChops.add(lit, Image.fromarray(noise, "L").convert("RGB"))


# --- a dataset -----------------------------------------------------------------------------


def write_synthetic_dataset(
    out: Path | str,
    n_images: int,
    seed: int = 0,
    grade_weights: Sequence[float] = DEFAULT_GRADE_WEIGHTS,
    widths: tuple[int, int] = DEFAULT_WIDTHS,
) -> Path:
    """Write an EyePACS-layout dataset (trainLabels.csv + train/<patient>_<eye>.jpeg); `out`."""
    out = Path(out)
    weights = np.asarray(grade_weights, dtype=float)
    if weights.shape != (NUM_GRADES,) or (weights < 0).any() or weights.sum() <= 0:
        raise DrgradeError(
            f"grade_weights must be {NUM_GRADES} non-negative numbers with a positive sum, "
            f"got {list(grade_weights)}"
        )
    if n_images < 1:
        raise DrgradeError(f"n_images must be at least 1, got {n_images}")
    if not 16 <= widths[0] <= widths[1]:
        raise DrgradeError(f"widths must be (low, high) with 16 <= low <= high, got {widths}")
    rows = synthetic_labels(n_images, seed, weights / weights.sum())
    images = out / "train"
    images.mkdir(parents=True, exist_ok=True)
    for index, (image_id, grade) in enumerate(rows):
        # One generator per image: any image can be remade alone, and the order is free.
        rng = np.random.default_rng([seed, index])
        eye = image_id.rsplit("_", 1)[1]
        picture = synthetic_fundus(grade, rng, random_size(rng, widths), eye=eye)
        picture.save(images / f"{image_id}.jpeg", quality=JPEG_QUALITY)
    with (out / "trainLabels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "level"])
        writer.writerows(rows)
    return out


def synthetic_labels(n_images: int, seed: int, weights: np.ndarray) -> list[tuple[str, int]]:
    """(image id, grade) rows: two eyes per patient with correlated grades, EyePACS names."""
    rng = np.random.default_rng([seed, 2**31])
    # A Gaussian copula: each eye's grade has exactly the `weights` distribution, and the two
    # eyes of a patient agree most of the time, as in EyePACS, so a split must keep patients
    # whole. A grade of weight zero never appears.
    cut = np.cumsum(weights)[:-1]
    n_patients = (n_images + 1) // 2
    shared = rng.standard_normal(n_patients)
    own = rng.standard_normal((n_patients, 2))
    latent = EYE_CORRELATION**0.5 * shared[:, None] + (1 - EYE_CORRELATION) ** 0.5 * own
    uniform = 0.5 * (1 + np.vectorize(math.erf)(latent / math.sqrt(2)))
    grades = np.searchsorted(cut, uniform, side="right")
    patients = np.cumsum(rng.integers(1, 6, n_patients))  # EyePACS numbers have gaps
    rows = [
        (f"{patient}_{side}", int(grade))
        for patient, pair in zip(patients, grades, strict=True)
        for side, grade in zip(("left", "right"), pair, strict=True)
    ]
    return rows[:n_images]
