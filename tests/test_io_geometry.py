from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam_cli.io.geometry import plan, to_model_input, to_model_input_tensor, to_original_frame

SIZES = [(48, 64), (70, 30), (64, 64), (301, 199), (17, 400)]


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center_crop"])
@pytest.mark.parametrize("original", SIZES)
def test_heatmap_has_original_size(mode: str, original: tuple[int, int]) -> None:
    geometry = plan(original, (32, 32), mode)
    mapped = to_original_frame(torch.rand(2, 32, 32), geometry)
    assert mapped.shape == (2, *original)


def _model_coordinates(geometry, axis: int) -> torch.Tensor:
    """A CAM whose value is its own pixel-centre coordinate along `axis` in the model frame."""
    h, w = geometry.model
    ramp = torch.arange(w if axis == 1 else h, dtype=torch.float64) + 0.5
    return (ramp[None, :].expand(h, w) if axis == 1 else ramp[:, None].expand(h, w))[None]


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center_crop"])
@pytest.mark.parametrize("original", SIZES)
def test_inverse_mapping_is_pixel_exact(mode: str, original: tuple[int, int]) -> None:
    """Every original pixel centre lands where the forward resize put it: (u + 0.5) * scale + offset."""
    geometry = plan(original, (40, 40), mode)
    (top, left), (rh, rw) = geometry.offset, geometry.resized
    h0, w0 = original
    for axis, (n0, n_resized, shift) in enumerate([(h0, rh, top), (w0, rw, left)]):
        mapped = to_original_frame(_model_coordinates(geometry, axis), geometry)[0]
        line = mapped[:, w0 // 2] if axis == 0 else mapped[h0 // 2, :]
        expected = (torch.arange(n0, dtype=torch.float64) + 0.5) * n_resized / n0 + shift
        model_size = geometry.model[axis]
        # Bilinear reproduces a linear ramp exactly away from the edges of the sampled region.
        inside = (expected > max(shift, 0) + 1) & (expected < min(shift + n_resized, model_size) - 1)
        assert torch.allclose(line[inside], expected[inside], atol=1e-4)
        if mode == "center_crop":
            outside = (expected < 0) | (expected >= model_size)
            assert torch.all(line[outside] == 0)


def test_letterbox_and_crop_offsets() -> None:
    wide = plan((100, 200), (50, 50), "letterbox")
    assert wide.resized == (25, 50) and wide.offset == (12, 0)
    crop = plan((100, 200), (50, 50), "center_crop")
    assert crop.resized == (50, 100) and crop.offset == (0, -25)
    assert plan((100, 200), (50, 50), "stretch").resized == (50, 50)


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center_crop"])
def test_forward_and_inverse_put_a_marker_back_in_place(mode: str) -> None:
    """A bright square in the original comes back (through the model frame) at the same place."""
    h0, w0 = 120, 200
    array = np.zeros((h0, w0, 3), dtype=np.uint8)
    array[50:70, 110:130] = 255
    geometry = plan((h0, w0), (64, 64), mode)
    model_input = to_model_input(Image.fromarray(array), geometry, (0, 0, 0))
    assert model_input.shape == (64, 64, 3)
    cam = torch.from_numpy(model_input[:, :, 0].astype(np.float32) / 255.0)[None]
    mapped = to_original_frame(cam, geometry)[0].numpy()
    ys, xs = np.nonzero(mapped > 0.5)
    assert abs(ys.mean() - 59.5) < 1.0 and abs(xs.mean() - 119.5) < 1.0


def test_letterbox_pads_with_given_colour() -> None:
    geometry = plan((10, 40), (20, 20), "letterbox")
    out = to_model_input(Image.new("RGB", (40, 10), (255, 0, 0)), geometry, (1, 2, 3))
    assert tuple(out[0, 0]) == (1, 2, 3) and tuple(out[10, 10]) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center_crop"])
@pytest.mark.parametrize("original", [(199, 200), (200, 199), (127, 128), (129, 128), *SIZES])
def test_model_input_always_has_the_model_size(mode: str, original: tuple[int, int]) -> None:
    """Regression: a letterbox 1 px short of the model size (offset 0) was taken for a centre crop."""
    geometry = plan(original, (128, 128), mode)
    image = Image.new("RGB", (original[1], original[0]), (10, 20, 30))
    assert to_model_input(image, geometry, (0, 0, 0)).shape == (128, 128, 3)


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center_crop"])
@pytest.mark.parametrize("size", [(97, 61), (300, 200), (20, 30)])
def test_the_tensor_model_input_is_pillows_within_a_grey_level(mode: str, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    geometry = plan((size[1], size[0]), (48, 64), mode)
    expected = to_model_input(image, geometry, (10, 20, 30)).astype(int)
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    found = to_model_input_tensor(tensor, geometry, (10, 20, 30)).permute(1, 2, 0).numpy().astype(int)
    assert found.shape == expected.shape == (48, 64, 3)
    assert np.abs(found - expected).max() <= 1 and (found != expected).mean() < 0.01


def test_grey_levels_are_torchs_rounding_byte_for_byte() -> None:
    from gradcam_cli.io.geometry import grey_levels

    maps = torch.rand(2, 40, 300, generator=torch.Generator().manual_seed(3))
    halves = (torch.arange(256).float() + 0.5) / 255.0  # exactly between two grey levels: half to even
    maps[0, 0, :256] = halves
    maps[0, 1, :256] = torch.nextafter(halves, torch.tensor(2.0))
    maps[0, 2, :256] = torch.nextafter(halves, torch.tensor(-2.0))
    maps[1, 0, :6] = torch.tensor([0.0, -0.0, 1.0, 1.0000001, 1e-9, 0.5 / 255])
    expected = maps.clone().mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()
    found = grey_levels(maps)
    assert found.dtype == np.uint8 and found.shape == (2, 40, 300)
    assert np.array_equal(found, expected)
