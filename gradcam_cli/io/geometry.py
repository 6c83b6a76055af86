"""Resize modes and their exact inverse: model input <-> original image.

A `Geometry` records how one original image (H0, W0) became the model input (H, W): the whole image
was resized to (rh, rw) and placed with its top-left corner at (top, left) in the model frame (positive
offsets are letterbox padding, negative ones are a centre crop). The inverse maps a CAM at the model
input size onto the original pixels with the same pixel-centre convention the forward resize used, so
heatmaps are pixel-aligned with the original whatever its size or aspect ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESIZE_MODES = ("stretch", "letterbox", "center_crop")


@dataclass(frozen=True)
class Geometry:
    original: tuple[int, int]  # H0, W0 of the image as displayed
    resized: tuple[int, int]  # rh, rw: size the whole image was resized to
    offset: tuple[int, int]  # top, left of the resized image in the model frame
    model: tuple[int, int]  # H, W: model input size


def plan(original: tuple[int, int], model: tuple[int, int], mode: str) -> Geometry:
    """How an image of size `original` (H0, W0) maps onto a model input of size `model` (H, W)."""
    h0, w0 = original
    h, w = model
    if mode == "stretch":
        return Geometry(original, (h, w), (0, 0), model)
    if mode == "letterbox":
        scale = min(h / h0, w / w0)
    elif mode == "center_crop":
        scale = max(h / h0, w / w0)
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    rh, rw = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    if mode == "letterbox":
        rh, rw = min(rh, h), min(rw, w)
    else:
        rh, rw = max(rh, h), max(rw, w)
    return Geometry(original, (rh, rw), ((h - rh) // 2, (w - rw) // 2), model)


def to_model_input(image: Image.Image, geometry: Geometry, pad_rgb: tuple[int, int, int]) -> np.ndarray:
    """The model-size uint8 RGB array (H, W, 3) for one image, as `geometry` planned it."""
    rh, rw = geometry.resized
    resized = image if image.size == (rw, rh) else image.resize((rw, rh), Image.Resampling.BILINEAR)
    array = np.array(resized, dtype=np.uint8)  # writable: becomes a torch tensor
    top, left = geometry.offset
    h, w = geometry.model
    if (rh, rw) == (h, w):
        return np.ascontiguousarray(array)
    if rh >= h and rw >= w:  # centre crop (a letterbox 1 px short of the model size has offset 0 too)
        return np.ascontiguousarray(array[-top : -top + h, -left : -left + w])
    canvas = np.empty((h, w, 3), dtype=np.uint8)  # letterbox
    canvas[:] = pad_rgb
    canvas[top : top + rh, left : left + rw] = array
    return canvas


def to_model_input_tensor(image: torch.Tensor, geometry: Geometry, pad_rgb: tuple[int, int, int]) -> torch.Tensor:
    """`to_model_input` on a (3, H0, W0) uint8 tensor, on its device (preprocess.device_decode): the same
    bilinear, antialiased resize and placement. On the CPU torch's uint8 kernel gives Pillow's pixels
    (within 1 grey level on a few pixels in 10,000); CUDA has only a float kernel, within 1 grey level on
    more of them (tests/test_io_geometry.py). Returns (3, H, W) uint8."""
    rh, rw = geometry.resized
    resized = image
    if tuple(image.shape[-2:]) != (rh, rw):
        if image.device.type == "cpu":
            resized = F.interpolate(image[None], size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)[0]
        else:
            scaled = F.interpolate(
                image[None].float(), size=(rh, rw), mode="bilinear", antialias=True, align_corners=False
            )
            resized = scaled[0].round_().clamp_(0, 255).to(torch.uint8)
    top, left = geometry.offset
    h, w = geometry.model
    if (rh, rw) == (h, w):
        return resized.contiguous()
    if rh >= h and rw >= w:  # centre crop
        return resized[:, -top : -top + h, -left : -left + w].contiguous()
    canvas = torch.tensor(pad_rgb, dtype=torch.uint8, device=image.device).view(3, 1, 1).repeat(1, h, w)
    canvas[:, top : top + rh, left : left + rw] = resized
    return canvas


def to_original_frame(cam: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Map CAMs (K, H, W) at the model input size onto the original image: (K, H0, W0).

    Bilinear, pixel centres aligned (align_corners=False), the same convention as the forward resize.
    Letterbox padding is cut away; outside a centre crop the result is 0.
    """
    top, left = geometry.offset
    rh, rw = geometry.resized
    h, w = geometry.model
    h0, w0 = geometry.original
    if top >= 0 and left >= 0:
        canvas = cam[:, top : top + rh, left : left + rw]
    else:  # centre crop: extend the edges so interpolation at the crop border sees no false zeros
        pad = (-left, rw - w + left, -top, rh - h + top)
        canvas = F.pad(cam[:, None], pad, mode="replicate")[:, 0]
    mapped = F.interpolate(canvas[:, None], size=(h0, w0), mode="bilinear", align_corners=False)[:, 0]
    if top < 0 or left < 0:
        rows = (torch.arange(h0, device=cam.device) + 0.5) * (rh / h0)
        cols = (torch.arange(w0, device=cam.device) + 0.5) * (rw / w0)
        inside_rows = (rows >= -top) & (rows < -top + h)
        inside_cols = (cols >= -left) & (cols < -left + w)
        mapped = mapped * (inside_rows[:, None] & inside_cols[None, :]).to(mapped.dtype)
    return mapped


def grey_levels(maps: torch.Tensor) -> np.ndarray:
    """CAMs in [0, 1] (K, H, W) float32 on the CPU as uint8 heatmaps: round(255 * x), half to even, saturated;
    the bytes of `x.mul(255).round().clamp(0, 255)` in torch (tested), in one pass instead of four, which
    at 12 MP is a tenth of a render worker's time."""
    k, h, w = maps.shape
    flat = maps.detach().contiguous().numpy().reshape(k * h, w)
    return cv2.convertScaleAbs(flat, alpha=255.0).reshape(k, h, w)
