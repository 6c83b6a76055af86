"""Decoding an image file into the RGB picture a person sees.

EXIF orientation is applied first (the "original image" is the image as displayed), any mode becomes
RGB (transparency composited over white, 16-bit scaled down), animated files use frame 0, and images
larger than `max_pixels` are refused before their pixels are decoded (decompression bombs). Whatever a
decoder raises on hostile bytes (NotImplementedError, TypeError, ...) becomes an ImageReadError; only
MemoryError passes through, for the decode stage to record.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# We apply our own pixel limit (max_pixels) before decoding; Pillow's global one would raise or warn.
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(Exception):
    """An image that cannot become a picture; becomes an error record, never stops the run."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        scale = 257.0  # 16-bit range to 8-bit
        array = np.asarray(image, dtype=np.float64) / scale
        return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(np.rint(array).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_bytes(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes to an RGB, upright Pillow image; raises ImageReadError with a short kind and message."""
    if not data:
        raise ImageReadError("EmptyFile", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings are noise here
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageReadError(
                    "DecompressionBomb",
                    f"{width}x{height} = {width * height} pixels exceeds input.max_pixels ({max_pixels})",
                )
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("NotAnImage", "not a recognised image format") from None
    except MemoryError:
        raise  # the decode stage (runner/loader.py) records it with its own message
    except Exception as exc:  # any decoder bug on hostile bytes is this image's error, not the run's
        message = str(exc) or type(exc).__name__
        kind = "TruncatedImage" if "truncated" in message.lower() else "DecodeError"
        raise ImageReadError(kind, message[:500]) from None
