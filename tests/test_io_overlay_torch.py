"""io/overlay.py and io/overlay_torch.py: colormaps and blending; the torch path equals OpenCV byte for byte."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam_cli.config import COLORMAP_NAMES
from gradcam_cli.io.overlay import blend, blend_bgr, colorize, colormap_lut
from gradcam_cli.io.overlay_torch import blend_tensor


@pytest.mark.parametrize("colormap", COLORMAP_NAMES)
def test_the_lookup_table_is_opencvs_colormap(colormap: str) -> None:
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = colorize(ramp, colormap)[:, :, ::-1]  # colorize gives RGB; the table is BGR
    assert np.array_equal(colormap_lut(colormap)[ramp], expected)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.3, 0.5, 0.6, 0.7, 1 / 3, 1.0])
def test_torch_blend_equals_opencv_for_every_pixel_pair(alpha: float) -> None:
    """All 256 x 256 (heatmap, image) value pairs, every colour channel: the same bytes as cv2.addWeighted."""
    heatmap = np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)
    image = np.stack([np.tile(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)] * 3, axis=-1)
    image[..., 1] = 255 - image[..., 1]
    for colormap in ("jet", "turbo", "gray"):
        expected = blend_bgr(image, heatmap, colormap, alpha)
        lut = torch.from_numpy(colormap_lut(colormap))
        found = blend_tensor(torch.from_numpy(image), torch.from_numpy(heatmap), lut, alpha).numpy()
        assert np.array_equal(found, expected), f"{colormap} alpha={alpha}: {(found != expected).sum()} bytes differ"


def test_bgr_blend_is_the_rgb_blend_with_channels_swapped() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    heatmap = rng.integers(0, 256, (40, 60), dtype=np.uint8)
    assert np.array_equal(
        blend_bgr(image[:, :, ::-1].copy(), heatmap, "jet", 0.5)[:, :, ::-1], blend(image, heatmap, "jet", 0.5)
    )


def test_torchvision_encodes_a_tensor_overlay_as_jpeg() -> None:
    """The GPU render path's encoder (torchvision.io.encode_jpeg, CUDA tensors there) on a CPU tensor."""
    from torchvision.io import encode_jpeg

    rng = np.random.default_rng(1)
    overlay = blend_tensor(
        torch.from_numpy(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)),
        torch.from_numpy(rng.integers(0, 256, (48, 64), dtype=np.uint8)),
        torch.from_numpy(colormap_lut("jet")),
        0.5,
    )
    data = encode_jpeg(overlay.flip(-1).permute(2, 0, 1).contiguous(), quality=90)  # RGB, channels first
    with Image.open(io.BytesIO(data.numpy().tobytes())) as picture:
        assert picture.size == (64, 48) and picture.format == "JPEG"
