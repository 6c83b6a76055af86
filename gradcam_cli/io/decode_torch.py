"""JPEG decoding on the model's device (nvJPEG on CUDA, libjpeg-turbo on the CPU), for
preprocess.device_decode: a decoded 12 MP original stays on the GPU for the model input and the overlay,
and only the file's bytes cross from the decode workers. Which files qualify: io/decode.device_decodable."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg


def decode_jpegs(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """(3, H, W) uint8 RGB per JPEG, on `device`; None for one the decoder refuses (its error record comes
    from the CPU decoder). One batched call when every file decodes, else one call per file."""
    encoded = [torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()) for data in datas]
    if not encoded:
        return []
    if device.type == "cuda":
        # the decoder writes on its own stream: the caller's must have finished with the memory it reuses
        torch.cuda.current_stream(device).synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec (README, GPU)
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad file fails the whole batched call: find which
            pictures: list[torch.Tensor | None] = []
            for tensor in encoded:
                try:
                    pictures.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    pictures.append(None)
            return pictures
