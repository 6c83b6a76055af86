"""Fast checks of the procedural demo data: determinism and the geometry contract of shapes.py."""

from __future__ import annotations

import numpy as np
import pytest

from gradcam_cli.demo.shapes import (
    CLASSES,
    MAX_ASPECT,
    MAX_SIDE,
    MIN_SIDE,
    ShapeSample,
    generate_dataset,
    generate_sample,
)


@pytest.fixture(scope="module")
def samples() -> list[ShapeSample]:
    return list(generate_dataset(seed=123, count=40))


def test_same_seed_same_data() -> None:
    a = list(generate_dataset(seed=7, count=5))
    b = list(generate_dataset(seed=7, count=5))
    for x, y in zip(a, b, strict=True):
        assert (x.label, x.box, x.image.size) == (y.label, y.box, y.image.size)
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))


def test_different_seed_different_data() -> None:
    a = next(generate_dataset(seed=1, count=1))
    b = next(generate_dataset(seed=2, count=1))
    assert a.image.size != b.image.size or not np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_prefix_is_stable() -> None:
    """Sample i depends only on (seed, i), not on how many samples are requested."""
    short = list(generate_dataset(seed=5, count=3))
    long = list(generate_dataset(seed=5, count=6))[:3]
    assert [(s.label, s.box) for s in short] == [(s.label, s.box) for s in long]


def test_images_are_rgb_with_valid_labels(samples: list[ShapeSample]) -> None:
    for s in samples:
        assert s.image.mode == "RGB"
        assert 0 <= s.label < len(CLASSES)
    assert len({s.label for s in samples}) == len(CLASSES)


def test_varied_sizes_and_aspects(samples: list[ShapeSample]) -> None:
    sizes = {s.image.size for s in samples}
    assert len(sizes) > 30
    for w, h in sizes:
        assert MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE
        assert 1 / MAX_ASPECT - 0.01 <= w / h <= MAX_ASPECT + 0.01
    aspects = [w / h for w, h in sizes]
    assert min(aspects) < 0.75 and max(aspects) > 1.33


def test_fixed_size() -> None:
    for s in generate_dataset(seed=3, count=3, sizes="200x100"):
        assert s.image.size == (200, 100)
    with pytest.raises(ValueError):
        next(generate_dataset(seed=3, count=1, sizes="big"))


def test_box_inside_image_and_large_enough(samples: list[ShapeSample]) -> None:
    for s in samples:
        w, h = s.image.size
        x0, y0, x1, y1 = s.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert max(x1 - x0, y1 - y0) >= 0.15 * min(w, h)
        assert max(x1 - x0, y1 - y0) <= 0.46 * min(w, h)


def test_box_survives_center_crop(samples: list[ShapeSample]) -> None:
    """The object lies inside the central short-side square, so centre-cropping keeps it."""
    for s in samples:
        w, h = s.image.size
        short = min(w, h)
        left, top = (w - short) / 2, (h - short) / 2
        x0, y0, x1, y1 = s.box
        assert left <= x0 and x1 <= left + short and top <= y0 and y1 <= top + short


@pytest.mark.parametrize("label", range(len(CLASSES)))
def test_given_label_is_used(label: int) -> None:
    s = generate_sample(np.random.default_rng(label), 256, 192, label=label)
    assert s.label == label


def test_invalid_label_rejected() -> None:
    with pytest.raises(ValueError):
        generate_sample(np.random.default_rng(0), 256, 256, label=len(CLASSES))
