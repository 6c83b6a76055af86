"""Procedural "shape on clutter" images for the demo model and the localisation tests.

Each image holds exactly one filled shape of a class in :data:`CLASSES` on a cluttered background
(colour gradient, low-frequency colour blotches, straight lines, curved scribbles and pixel noise).
The clutter never contains closed shapes, so the only class evidence in an image is the object,
which is what lets a Grad-CAM "pointing game" check whether a model looks at the right place.

Geometry contract (relied on by the pointing-game tests):

* the object's circumscribed circle has a diameter of 22%..45% of the image's short side, so its
  bounding box is at least 15% of the short side in its larger dimension;
* the whole object lies inside the central ``short x short`` square of the image (with a small
  margin), so a centre crop of the short side -- the ``center_crop`` resize mode -- never cuts it;
  on the long axis of a non-square image the object is therefore never near the ends;
* ``box`` is the tight bounding box of the drawn (anti-aliased) shape, ``(x0, y0, x1, y1)`` with
  ``x1``/``y1`` exclusive.

Only numpy and Pillow are used so that the generator is importable without torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

MIN_SIDE = 160
MAX_SIDE = 640
MAX_ASPECT = 2.0
MIN_DIAMETER = 0.22  # fractions of the short side
MAX_DIAMETER = 0.45
_MARGIN = 0.03  # fraction of the short side kept free around the object inside the central square
_SUPERSAMPLE = 4  # the object is drawn at this scale and downsampled, for anti-aliased edges
_MIN_CONTRAST = 110.0  # minimum RGB distance between the object and the background under it


@dataclass(frozen=True)
class ShapeSample:
    """One generated image with its class index and the object's pixel bounding box."""

    image: Image.Image
    label: int
    box: tuple[int, int, int, int]


def _polygon(label: int, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a class polygon inscribed in the unit circle, rotated by ``angle``."""
    name = CLASSES[label]
    if name == "square":
        t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif name == "triangle":
        t = angle - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif name == "star":
        t = angle - np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    elif name == "cross":
        w = 0.32
        base = np.array(
            [
                (w, 1),
                (w, w),
                (1, w),
                (1, -w),
                (w, -w),
                (w, -1),
                (-w, -1),
                (-w, -w),
                (-1, -w),
                (-1, w),
                (-w, w),
                (-w, 1),
            ],
            dtype=np.float64,
        ) / math.hypot(1.0, w)
        c, s = math.cos(angle), math.sin(angle)
        pts = base @ np.array([[c, s], [-s, c]])
    else:
        raise ValueError(f"{name!r} has no polygon")
    return pts


def _object_mask(label: int, radius: float, angle: float, frac: tuple[float, float]) -> tuple[Image.Image, int]:
    """Anti-aliased alpha mask of the shape on a square patch; returns (mask, patch side)."""
    side = int(math.ceil(2 * radius)) + 3
    big = side * _SUPERSAMPLE
    # Centre at (side/2 + sub-pixel offset), so that objects are not all pixel-aligned.
    cx = (side / 2 + frac[0] - 0.5) * _SUPERSAMPLE
    cy = (side / 2 + frac[1] - 0.5) * _SUPERSAMPLE
    r = radius * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if CLASSES[label] == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        pts = _polygon(label, angle) * r + (cx, cy)
        draw.polygon([tuple(p) for p in pts], fill=255)
    return mask.resize((side, side), Image.Resampling.BOX), side


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Gradient plus low-frequency colour blotches.

    Both are smooth, so they are computed at 1/8 resolution and upsampled (generation speed matters:
    the training script draws thousands of images on two CPU cores).
    """
    sw, sh = max(2, width // 8), max(2, height // 8)
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    phi = rng.uniform(0, 2 * np.pi)
    xs = np.linspace(0.0, 1.0, sw, dtype=np.float32)[None, :]
    ys = np.linspace(0.0, 1.0, sh, dtype=np.float32)[:, None]
    t = xs * math.cos(phi) + ys * math.sin(phi)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    gradient = c0 + (c1 - c0) * t[..., None]
    grid = rng.uniform(0, 255, size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3)).astype(np.uint8)
    blotches = np.asarray(Image.fromarray(grid).resize((sw, sh), Image.Resampling.BICUBIC), np.float32)
    mix = rng.uniform(0.2, 0.6)
    small = np.clip(gradient * (1 - mix) + blotches * mix, 0, 255).astype(np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def _draw_clutter(rng: np.random.Generator, image: Image.Image) -> None:
    """Straight lines and smooth open scribbles in random colours (never closed shapes)."""
    width, height = image.size
    short = min(width, height)
    draw = ImageDraw.Draw(image)

    def colour() -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(0, 256, size=3))

    for _ in range(int(rng.integers(3, 10))):
        x0, x1 = rng.uniform(-0.1, 1.1, size=2) * width
        y0, y1 = rng.uniform(-0.1, 1.1, size=2) * height
        lw = max(1, int(rng.uniform(0.005, 0.03) * short))
        draw.line([(x0, y0), (x1, y1)], fill=colour(), width=lw)
    for _ in range(int(rng.integers(1, 5))):
        n = int(rng.integers(8, 20))
        step = rng.uniform(0.03, 0.08) * short
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.35, size=n))
        xy = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1) * step, axis=0)
        xy += (rng.uniform(0, width), rng.uniform(0, height))
        lw = max(1, int(rng.uniform(0.005, 0.025) * short))
        draw.line([tuple(p) for p in xy], fill=colour(), width=lw, joint="curve")


def generate_sample(
    rng: np.random.Generator, width: int, height: int, label: int | None = None, *, clutter: bool = True
) -> ShapeSample:
    """Draw one shape of class ``label`` (random if None) at a random place, size, angle and colour.

    The object is placed inside the central ``short x short`` square (see the module docstring), so
    stretch, letterbox and centre-crop resizing all keep it in view. ``clutter=False`` leaves out the
    lines, scribbles and noise (the smooth background stays): the easy first stage of the demo model's
    training curriculum.
    """
    if label is None:
        label = int(rng.integers(len(CLASSES)))
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in [0, {len(CLASSES)}), got {label}")
    short = min(width, height)

    image = _background(rng, width, height)
    if clutter:
        _draw_clutter(rng, image)

    radius = rng.uniform(MIN_DIAMETER, MAX_DIAMETER) * short / 2
    margin = _MARGIN * short
    off_x, off_y = (width - short) / 2, (height - short) / 2
    cx = off_x + rng.uniform(radius + margin, short - radius - margin)
    cy = off_y + rng.uniform(radius + margin, short - radius - margin)
    mask, side = _object_mask(label, radius, rng.uniform(0, 2 * np.pi), tuple(rng.uniform(0, 1, size=2)))
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))

    # Pick the most contrasting of a few random colours against what lies under the object, so the
    # object is always visible (clutter may share its colour; the shape is what identifies it).
    under = np.asarray(image.crop((left, top, left + side, top + side)), np.float32)
    alpha = np.asarray(mask, np.float32)[..., None] / 255
    mean_under = (under * alpha).sum(axis=(0, 1)) / max(float(alpha.sum()), 1.0)
    candidates = rng.integers(0, 256, size=(8, 3))
    distances = np.linalg.norm(candidates - mean_under, axis=1)
    good = np.flatnonzero(distances >= _MIN_CONTRAST)
    fill = candidates[good[0]] if good.size else candidates[int(np.argmax(distances))]
    image.paste(tuple(int(v) for v in fill), (left, top), mask)

    if clutter:
        # Luminance noise (one value per pixel, shared by the channels): as hard as colour noise for
        # the model, at a third of the generation cost.
        noisy = np.asarray(image, np.float32)
        sigma = np.float32(rng.uniform(0, 18))
        noisy += rng.standard_normal((height, width, 1), dtype=np.float32) * sigma
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))

    bx0, by0, bx1, by1 = mask.getbbox() or (0, 0, side, side)
    box = (
        max(0, left + bx0),
        max(0, top + by0),
        min(width, left + bx1),
        min(height, top + by1),
    )
    return ShapeSample(image=image, label=label, box=box)


def random_size(rng: np.random.Generator) -> tuple[int, int]:
    """A (width, height) with both sides in [MIN_SIDE, MAX_SIDE] and aspect ratio in [1/2, 2]."""
    aspect = math.exp(rng.uniform(-math.log(MAX_ASPECT), math.log(MAX_ASPECT)))
    ratio = max(aspect, 1 / aspect)
    long_side = rng.uniform(MIN_SIDE * ratio, MAX_SIDE)
    short_side = long_side / ratio
    width, height = (long_side, short_side) if aspect >= 1 else (short_side, long_side)
    return int(round(width)), int(round(height))


def _parse_sizes(sizes: str) -> tuple[int, int] | None:
    if sizes == "varied":
        return None
    try:
        w, h = (int(v) for v in sizes.lower().split("x"))
    except ValueError:
        raise ValueError(f"sizes must be 'varied' or 'WIDTHxHEIGHT', got {sizes!r}") from None
    if w < 32 or h < 32:
        raise ValueError(f"images must be at least 32x32, got {sizes!r}")
    return w, h


def generate_dataset(seed: int, count: int, sizes: str = "varied") -> Iterator[ShapeSample]:
    """Yield ``count`` samples, deterministic for ``seed``.

    ``sizes`` is ``"varied"`` (random sizes and aspect ratios, see :func:`random_size`) or a fixed
    ``"WIDTHxHEIGHT"``. Sample ``i`` depends only on ``(seed, i)``, so datasets of different lengths
    share their prefix and can be generated in parallel shards.
    """
    fixed = _parse_sizes(sizes)
    for i in range(count):
        yield sample_at(seed, i, fixed)


def sample_at(seed: int, index: int, size: tuple[int, int] | None = None, *, clutter: bool = True) -> ShapeSample:
    """Sample ``index`` of the dataset for ``seed``; ``size`` None means a random (varied) size."""
    rng = np.random.default_rng([seed, index])
    width, height = size if size is not None else random_size(rng)
    return generate_sample(rng, width, height, clutter=clutter)
