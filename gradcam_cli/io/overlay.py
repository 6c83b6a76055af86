"""Colour: heatmaps to colormaps, blended over the original image (NumPy/OpenCV; io/overlay_torch.py gives
the same bytes from torch tensors, for a GPU render path). No torch here: the gallery and --dry-run use it."""

from __future__ import annotations

import cv2
import numpy as np

_COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "hot": cv2.COLORMAP_HOT,
    "bone": cv2.COLORMAP_BONE,
    "gray": None,
    "parula": cv2.COLORMAP_PARULA,
    "cividis": cv2.COLORMAP_CIVIDIS,
}


def colorize(heatmap: np.ndarray, colormap: str) -> np.ndarray:
    """uint8 heatmap (H, W) -> colour image (H, W, 3) in RGB order."""
    code = _COLORMAPS[colormap]
    if code is None:
        return np.repeat(heatmap[:, :, None], 3, axis=2)
    return cv2.cvtColor(cv2.applyColorMap(heatmap, code), cv2.COLOR_BGR2RGB)


def blend(image_rgb: np.ndarray, heatmap: np.ndarray, colormap: str, alpha: float) -> np.ndarray:
    """The overlay: alpha * colormap(heatmap) + (1 - alpha) * image, rounded to uint8 RGB."""
    return cv2.addWeighted(colorize(heatmap, colormap), alpha, image_rgb, 1.0 - alpha, 0.0)


def blend_bgr(image_bgr: np.ndarray, heatmap: np.ndarray, colormap: str, alpha: float) -> np.ndarray:
    """`blend` in OpenCV's channel order, for the render workers: the same pixels, channels swapped, without
    the two full-size colour conversions (decoder and encoders work in BGR)."""
    code = _COLORMAPS[colormap]
    coloured = cv2.cvtColor(heatmap, cv2.COLOR_GRAY2BGR) if code is None else cv2.applyColorMap(heatmap, code)
    return cv2.addWeighted(coloured, alpha, image_bgr, 1.0 - alpha, 0.0)


def colormap_lut(colormap: str) -> np.ndarray:
    """OpenCV's own colormap as a (256, 3) uint8 BGR table: what `applyColorMap` does, as a lookup any array
    library can apply (the GPU render path indexes it with the heatmap)."""
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    code = _COLORMAPS[colormap]
    if code is None:
        return np.repeat(ramp, 3, axis=1)
    return cv2.applyColorMap(ramp, code).reshape(256, 3)
