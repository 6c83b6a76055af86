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

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# We apply our own pixel limit (max_pixels) before decoding; Pillow's global one would raise or warn.
Image.MAX_IMAGE_PIXELS = None
ORIENTATION_TAG = 0x0112


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


def _swaps_axes(image: Image.Image) -> bool:
    """EXIF orientations 5-8 rotate by 90 degrees: the stored width is the displayed height."""
    return image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8)


def displayed_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) of the image as displayed (EXIF orientation applied), from its header alone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            swapped = _swaps_axes(image)
    except Exception:  # noqa: BLE001 - an unreadable header: the full decode says why, as an ImageReadError
        return decode_bytes(data, max_pixels).size
    return (height, width) if swapped else (width, height)


def decode_bytes(data: bytes, max_pixels: int, draft: tuple[int, int] | None = None) -> Image.Image:
    """Bytes to an RGB, upright Pillow image; raises ImageReadError with a short kind and message.

    `draft` (width, height as displayed): a JPEG may decode at 1/2, 1/4 or 1/8 scale in the DCT domain,
    keeping at least that many pixels (input.fast_decode); other formats decode at full size."""
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
            if draft is not None and image.format == "JPEG":
                image.draft(image.mode, draft[::-1] if _swaps_axes(image) else draft)
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


def decode_bgr(data: bytes, max_pixels: int, expected: tuple[int, int]) -> np.ndarray:
    """The picture `decode_bytes` gives, as a BGR uint8 array (OpenCV's order), for the render workers.

    Baseline RGB or greyscale JPEGs go through OpenCV's decoder: the same libjpeg-turbo pixels as Pillow's
    (tested), about twice as fast, straight into an array. Anything else, or a size other than `expected`
    (height, width as displayed), takes Pillow's path."""
    if data[:3] == b"\xff\xd8\xff":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mode = Image.open(io.BytesIO(data)).mode
        except Exception:  # noqa: BLE001 - Pillow's full decode below reports it
            mode = None
        if mode in ("RGB", "L"):
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if pixels is not None and pixels.shape[:2] == expected:
                return pixels
    rgb = np.asarray(decode_bytes(data, max_pixels), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def device_decodable(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) when the bytes are a JPEG the model's device can decode to the same picture as
    `decode_bytes` (preprocess.device_decode): baseline, RGB or greyscale, upright (no EXIF rotation),
    within `max_pixels`. None for anything else (progressive, CMYK, rotated, not a JPEG, unreadable):
    those take the CPU path."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            upright = image.getexif().get(ORIENTATION_TAG, 1) == 1
            progressive = bool(image.info.get("progressive") or image.info.get("progression"))
            mode = image.mode
    except Exception:  # noqa: BLE001 - the CPU path decodes it, or says why it cannot
        return None
    if mode not in ("RGB", "L") or progressive or not upright or width * height > max_pixels:
        return None
    return width, height
