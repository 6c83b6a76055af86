"""preprocess.device_decode: the model's device decodes the JPEGs the decode workers passed on as bytes,
makes their model inputs, and later colours, blends and encodes their overlays; only bytes cross processes.

On a GPU (nvJPEG) a batch's originals stay in GPU memory from the decode to the overlay, never in host
memory: batch_size x width x height x 3 bytes of GPU memory (9 GB for 256 photos of 12 MP) when the device
makes the overlays (full-size JPEG ones); otherwise they are decoded DECODE_CHUNK at a time and dropped
once their model inputs are made. Heatmaps are still made by the render workers from the CAM at the model
input size, as on the CPU path, so they do not depend on where the JPEG was decoded beyond its model input.
"""

from __future__ import annotations

import numpy as np
import torch

from gradcam_cli.config import OutputConfig
from gradcam_cli.io.decode import ImageReadError, decode_bytes
from gradcam_cli.io.decode_torch import decode_jpegs
from gradcam_cli.io.geometry import Geometry, to_model_input, to_model_input_tensor, to_original_frame
from gradcam_cli.io.overlay import colormap_lut
from gradcam_cli.io.overlay_torch import encode_jpeg_tensor, overlay_tensor
from gradcam_cli.runner.loader import DecodeDataset, DecodedBatch

DECODE_CHUNK = 32  # JPEGs decoded per call: bounds the originals in device memory when none are kept


def overlays_on_device(output: OutputConfig) -> bool:
    """Whether the device makes the overlays (full-size JPEGs), so a batch's originals are kept for them;
    PNG/WebP overlays and previews (output.overlay_max_side) are the render workers'."""
    return output.overlays and output.overlay_format == "jpeg" and output.overlay_max_side is None


def complete_on_device(
    batch: DecodedBatch, dataset: DecodeDataset, device: torch.device, keep_originals: bool = True
) -> dict[int, torch.Tensor]:
    """Fill `batch.pixels` (n_ok, 3, H, W) uint8 on `device`; returns item index -> its original (3, H0, W0)
    uint8 RGB on `device` when `keep_originals`. A JPEG the device refuses (its decoder, or the resize:
    out of memory, a downscale too large for the kernel) is decoded on the CPU here; one neither can
    decode becomes an error item."""
    wanted = [i for i in batch.ok if batch.items[i].encoded is not None]
    cpu_rows = iter(batch.pixels if batch.pixels is not None else [])  # the CPU-decoded ok items, in order
    rows: dict[int, torch.Tensor] = {i: next(cpu_rows) for i in batch.ok if batch.items[i].encoded is None}
    originals: dict[int, torch.Tensor] = {}
    step = max(1, len(wanted)) if keep_originals else DECODE_CHUNK  # kept originals are all held anyway
    for start in range(0, len(wanted), step):
        chunk = wanted[start : start + step]
        pictures = decode_jpegs([batch.items[i].encoded for i in chunk], device)  # type: ignore[misc]
        for index, picture in zip(chunk, pictures, strict=True):
            item = batch.items[index]
            assert item.geometry is not None and item.encoded is not None
            row = _on_device(picture, item.geometry, dataset)
            if row is not None:
                rows[index] = row
                if keep_originals:
                    originals[index] = picture  # type: ignore[assignment]
            else:
                pixels, item.error = _on_cpu(item.encoded, item.geometry, dataset)
                if pixels is not None:
                    rows[index] = pixels
            item.encoded = None
        del pictures
    batch.ok = [i for i in batch.ok if batch.items[i].error is None]
    batch.pixels = torch.stack([rows[i].to(device, non_blocking=True) for i in batch.ok]) if batch.ok else None
    batch.encoded = False
    return originals


def _on_device(picture: torch.Tensor | None, geometry: Geometry, dataset: DecodeDataset) -> torch.Tensor | None:
    """The model input made from a device-decoded original; None when the CPU must do it instead."""
    if picture is None or tuple(picture.shape[-2:]) != geometry.original:
        return None
    try:
        return to_model_input_tensor(picture, geometry, dataset.pad_rgb)
    except RuntimeError:  # torch.OutOfMemoryError, or CUDA's antialiased resize refusing a large downscale
        return None


def _on_cpu(
    data: bytes, geometry: Geometry, dataset: DecodeDataset
) -> tuple[torch.Tensor | None, tuple[str, str] | None]:
    try:
        image = decode_bytes(data, dataset.max_pixels)
        array = to_model_input(image, geometry, dataset.pad_rgb)
    except ImageReadError as exc:
        return None, (exc.kind, str(exc))
    except MemoryError:
        return None, ("MemoryError", "not enough memory to decode the image")
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), None


def device_overlays(
    originals: dict[int, torch.Tensor],
    cams: torch.Tensor,
    rows: dict[int, int],
    geometries: dict[int, Geometry],
    colormap: str,
    alpha: float,
    quality: int,
) -> dict[int, list[bytes]]:
    """Item index -> its JPEG overlays (one per explained class), made where its original is: the CAM
    (row of `cams`, (n_ok, K, H, W) on the device) mapped onto the original frame and quantised as the
    render workers do it, coloured by OpenCV's own table, blended with cv2.addWeighted's rounding."""
    if not originals:
        return {}
    device = next(iter(originals.values())).device
    lut = torch.from_numpy(np.ascontiguousarray(colormap_lut(colormap)[:, ::-1])).to(device)  # BGR -> RGB
    overlays: dict[int, list[bytes]] = {}
    for index, original in originals.items():
        try:
            mapped = to_original_frame(cams[rows[index]].float(), geometries[index])
            heatmaps = mapped.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
            overlays[index] = [
                encode_jpeg_tensor(overlay_tensor(original, heatmap, lut, alpha), quality) for heatmap in heatmaps
            ]
        except RuntimeError:  # torch.OutOfMemoryError and the like: this image's render worker does it instead
            continue
    return overlays
