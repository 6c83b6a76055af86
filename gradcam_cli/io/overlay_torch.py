"""The overlay of io/overlay.py on torch tensors, CPU or GPU, byte for byte the same as OpenCV's.

A GPU render path colours, blends and JPEG-encodes on the device (torchvision.io.encode_jpeg takes CUDA
tensors) and copies only encoded bytes back; these functions are its colour maths, tested on the CPU
against cv2 (tests/test_io_overlay_torch.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchvision.io import encode_jpeg

from gradcam_cli.io.encode import encode_overlay


def blend_tensor(image_bgr: torch.Tensor, heatmap: torch.Tensor, lut: torch.Tensor, alpha: float) -> torch.Tensor:
    """`blend_bgr` on torch tensors (CPU or GPU), byte-identical to OpenCV's: the colormap by table lookup,
    then `colour * alpha + (image * beta)` in fp32 with one fused multiply-add, as cv2.addWeighted computes
    it, rounded half to even. image (H, W, 3) uint8, heatmap (H, W) uint8, lut (256, 3) uint8."""
    coloured = lut[heatmap.long()].float()
    weighted_image = image_bgr.float() * float(np.float32(1.0 - alpha))
    weight = torch.tensor(float(np.float32(alpha)), dtype=torch.float32, device=image_bgr.device)
    return torch.addcmul(weighted_image, coloured, weight).round_().clamp_(0, 255).to(torch.uint8)


def overlay_tensor(
    original_rgb: torch.Tensor, heatmap: torch.Tensor, lut_rgb: torch.Tensor, alpha: float
) -> torch.Tensor:
    """The overlay of a (3, H, W) uint8 RGB original, as (3, H, W) uint8 RGB, on the original's device;
    `lut_rgb` is `colormap_lut` in RGB order (the blend works channel by channel, so the order is free)."""
    return blend_tensor(original_rgb.permute(1, 2, 0), heatmap, lut_rgb, alpha).permute(2, 0, 1).contiguous()


def encode_jpeg_tensor(pixels_rgb: torch.Tensor, quality: int) -> bytes:
    """JPEG bytes of a (3, H, W) uint8 RGB tensor: on CUDA by nvJPEG (torchvision.io.encode_jpeg), elsewhere
    by OpenCV with 4:4:4 chroma, as the CPU overlays (io/encode.py)."""
    if pixels_rgb.device.type == "cuda":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec
            return encode_jpeg(pixels_rgb, quality=quality).cpu().numpy().tobytes()
    return encode_overlay(pixels_rgb.permute(1, 2, 0).numpy(), "jpeg", quality)
