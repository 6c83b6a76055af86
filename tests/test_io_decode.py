from __future__ import annotations

import io
import random
import struct

import numpy as np
import pytest
from PIL import Image

from gradcam_cli.io.decode import ImageReadError, decode_bytes


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied() -> None:
    # Stored 40 wide x 20 high with a red left half; Orientation 6 means "rotate 90 CW to display".
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(stored), "JPEG", exif=exif.tobytes(), quality=95)
    shown = np.asarray(decode_bytes(data, 10**8))
    assert shown.shape == (40, 20, 3)  # displayed upright: 20 wide, 40 high
    assert shown[5, 10, 0] > 200 and shown[35, 10, 0] < 60  # red half is now on top


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_any_mode_becomes_rgb(mode: str) -> None:
    base = Image.linear_gradient("L").resize((16, 8))
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base, dtype=np.uint16) * 257)
    fmt = "TIFF" if mode in ("I;16", "I", "F", "CMYK") else "PNG"
    decoded = decode_bytes(_encode(image, fmt), 10**8)
    assert decoded.mode == "RGB" and decoded.size == (16, 8)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    array = np.full((4, 4), 65535, dtype=np.uint16)
    decoded = decode_bytes(_encode(Image.fromarray(array), "TIFF"), 10**8)
    assert np.asarray(decoded).min() == 255


def test_transparency_composited_over_white() -> None:
    decoded = decode_bytes(_encode(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG"), 10**8)
    assert np.asarray(decoded).min() == 255


def test_animated_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(decode_bytes(buffer.getvalue(), 10**8))[0, 0, 0] > 200


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "EmptyFile"),
        (b"definitely not an image", "NotAnImage"),
    ],
)
def test_bad_bytes(data: bytes, kind: str) -> None:
    with pytest.raises(ImageReadError) as info:
        decode_bytes(data, 10**8)
    assert info.value.kind == kind


def test_truncated_file() -> None:
    data = _encode(Image.linear_gradient("L").convert("RGB"), "JPEG")
    with pytest.raises(ImageReadError) as info:
        decode_bytes(data[: len(data) // 2], 10**8)
    assert info.value.kind in ("TruncatedImage", "DecodeError")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageReadError) as info:
        decode_bytes(_encode(Image.new("L", (100, 100)), "PNG"), max_pixels=5000)
    assert info.value.kind == "DecompressionBomb" and "5000" in str(info.value)


@pytest.mark.parametrize("kind", ["rgb-jpeg", "grey-jpeg", "cmyk-jpeg", "exif-rotated-jpeg", "rgba-png", "p-gif"])
def test_decode_bgr_gives_the_pixels_decode_bytes_gives(tmp_path, kind: str) -> None:
    """The render workers' fast path (OpenCV for plain JPEGs) must show the same original as Pillow's."""
    import io

    import numpy as np
    from PIL import Image

    from gradcam_cli.io.decode import decode_bgr, decode_bytes

    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((160, 120))
    buffer = io.BytesIO()
    if kind == "rgb-jpeg":
        base.save(buffer, "JPEG", quality=90)
    elif kind == "grey-jpeg":
        base.convert("L").save(buffer, "JPEG", quality=90)
    elif kind == "cmyk-jpeg":
        base.convert("CMYK").save(buffer, "JPEG", quality=90)
    elif kind == "exif-rotated-jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6
        base.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    elif kind == "rgba-png":
        rgba = base.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(buffer, "PNG")
    else:
        base.convert("P").save(buffer, "GIF")
    data = buffer.getvalue()
    expected = np.asarray(decode_bytes(data, 10**9))
    found = decode_bgr(data, 10**9, expected.shape[:2])
    assert found.shape == expected.shape and np.array_equal(found[:, :, ::-1], expected)


def _small_image() -> Image.Image:
    return Image.linear_gradient("L").resize((12, 10)).convert("RGB")


def test_an_unimplemented_format_is_a_read_error() -> None:
    # A 384-byte DDS file (whatever its name says): Pillow raises NotImplementedError for its pixel format.
    header = struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + bytes(44) + struct.pack("<2I4s", 32, 4, b"ZZZZ")
    data = (b"DDS " + header).ljust(384, b"\0")
    with pytest.raises(ImageReadError) as caught:
        decode_bytes(data, 10**8)
    assert caught.value.kind == "DecodeError"


def test_a_tiff_missing_its_dimensions_is_a_read_error() -> None:
    mutated = bytearray(_encode(_small_image(), "TIFF"))
    mutated[131], mutated[254] = 203, 60  # Pillow raises TypeError("Missing dimensions")
    with pytest.raises(ImageReadError):
        decode_bytes(bytes(mutated), 10**8)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP"])
def test_mutated_files_decode_or_raise_read_error(fmt: str) -> None:
    """A seeded fuzz: a few byte changes to a small valid file never escape as another exception."""
    data = _encode(_small_image(), fmt)
    rng = random.Random(0)
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            image = decode_bytes(bytes(mutated), 10**6)
        except ImageReadError:
            continue
        assert image.mode == "RGB"
