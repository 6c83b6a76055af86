"""The overlay of io/overlay.py on torch tensors, CPU or GPU, byte for byte the same as OpenCV's.

A GPU render path colours, blends and JPEG-encodes on the device (torchvision.io.encode_jpeg takes CUDA
tensors) and copies only encoded bytes back; these functions are its colour maths, tested on the CPU
against cv2 (tests/test_io_overlay_torch.py).
"""

from __future__ import annotations

import numpy as np
import torch


def blend_tensor(image_bgr: torch.Tensor, heatmap: torch.Tensor, lut: torch.Tensor, alpha: float) -> torch.Tensor:
    """`blend_bgr` on torch tensors (CPU or GPU), byte-identical to OpenCV's: the colormap by table lookup,
    then `colour * alpha + (image * beta)` in fp32 with one fused multiply-add, as cv2.addWeighted computes
    it, rounded half to even. image (H, W, 3) uint8, heatmap (H, W) uint8, lut (256, 3) uint8."""
    coloured = lut[heatmap.long()].float()
    weighted_image = image_bgr.float() * float(np.float32(1.0 - alpha))
    weight = torch.tensor(float(np.float32(alpha)), dtype=torch.float32, device=image_bgr.device)
    return torch.addcmul(weighted_image, coloured, weight).round_().clamp_(0, 255).to(torch.uint8)
