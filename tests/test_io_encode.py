"""io/encode.py: lossless heatmaps, overlays as JPEG (4:4:4), PNG or WebP, small previews."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from gradcam_cli.io.encode import OVERLAY_SUFFIXES, encode_overlay, encode_png, jpeg_preview


def _overlay(height: int = 96, width: int = 128) -> np.ndarray:
    rows = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    cols = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    return np.stack([rows + 0 * cols, 0 * rows + cols, 255 - (rows + cols) / 2], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("fmt", sorted(OVERLAY_SUFFIXES))
def test_every_overlay_format_round_trips(fmt: str) -> None:
    pixels = _overlay()
    data = encode_overlay(pixels, fmt, quality=90)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
        decoded = np.asarray(image.convert("RGB"))
    assert decoded.shape == pixels.shape
    tolerance = 0 if fmt == "png" else 12  # lossy formats: close, lossless: exact
    assert np.abs(decoded.astype(int) - pixels.astype(int)).mean() <= tolerance
    assert encode_overlay(pixels, fmt, quality=90) == data  # deterministic


def test_jpeg_overlays_keep_full_chroma() -> None:
    with Image.open(io.BytesIO(encode_overlay(_overlay(), "jpeg", quality=90))) as image:
        assert JpegImagePlugin.get_sampling(image) == 0  # 4:4:4, so the colormap's edges stay clean


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown overlay format"):
        encode_overlay(_overlay(), "gif")


def test_heatmaps_stay_single_channel_png_and_previews_never_enlarge() -> None:
    heatmap = np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    with Image.open(io.BytesIO(encode_png(heatmap))) as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), heatmap)
    with Image.open(io.BytesIO(jpeg_preview(heatmap, size=160))) as small:
        assert small.size == (64, 48)
    with Image.open(io.BytesIO(jpeg_preview(np.zeros((300, 600, 3), np.uint8), size=160))) as small:
        assert small.size == (160, 80)
