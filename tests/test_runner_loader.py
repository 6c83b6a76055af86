"""runner/loader.py: decoded uint8 batches become the model's input; the decode stage streams in order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gradcam_cli.config import parse_config
from gradcam_cli.runner.loader import normalise


def test_normalise_applies_pixel_range_and_channel_order(tmp_path: Path) -> None:
    pixels = torch.tensor([10, 128, 250], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 5)
    default = parse_config({"model": {"torchvision": "resnet18"}}, tmp_path)
    expected = (pixels.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    assert torch.equal(normalise(pixels, default.preprocess, torch.device("cpu")), expected)
    caffe = parse_config(
        {
            "model": {"torchvision": "resnet18"},
            "preprocess": {"pixel_range": [0, 255], "channel_order": "bgr", "mean": [1, 2, 3], "std": [1, 1, 2]},
        },
        tmp_path,
    )
    x = normalise(pixels, caffe.preprocess, torch.device("cpu"))
    assert x.shape == (2, 3, 4, 5)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([250 - 1, 128 - 2, (10 - 3) / 2]))  # B, G, R
    tf_style = parse_config(
        {"model": {"torchvision": "resnet18"}, "preprocess": {"pixel_range": [-1, 1], "mean": [0] * 3, "std": [1] * 3}},
        tmp_path,
    )
    assert torch.allclose(
        normalise(pixels, tf_style.preprocess, torch.device("cpu"))[0, :, 0, 0], pixels[0, :, 0, 0] / 127.5 - 1
    )


def _big_jpeg(path: Path, width: int, height: int, orientation: int | None = None) -> Path:
    from PIL import Image

    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, (height // 64, width // 64, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(path, quality=92, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orientation", [None, 6])
def test_fast_decode_reads_a_large_jpeg_at_reduced_scale(tmp_path: Path, orientation: int | None) -> None:
    """input.fast_decode: same geometry (the original's size as displayed), a model input within a few grey
    levels of the exact path; EXIF rotation is respected."""
    from gradcam_cli.io.decode import decode_bytes
    from gradcam_cli.io.discovery import ImageSource
    from gradcam_cli.runner.loader import DecodeDataset

    path = _big_jpeg(tmp_path / "big.jpg", 2048, 1536, orientation)
    base = {"model": {"torchvision": "resnet18"}, "preprocess": {"size": [224, 224], "resize": "letterbox"}}
    exact = parse_config(base, tmp_path)
    fast = parse_config({**base, "preprocess": {**base["preprocess"], "fast_decode": True}}, tmp_path)
    source = ImageSource(source=str(path), path="big.jpg")
    a = DecodeDataset(exact.preprocess, exact.input)[source]
    b = DecodeDataset(fast.preprocess, fast.input)[source]
    expected = (1536, 2048) if orientation == 6 else (2048, 1536)
    assert a.size == b.size == expected and a.geometry == b.geometry
    difference = (a.pixels.int() - b.pixels.int()).abs()
    assert difference.float().mean() < 2.0 and difference.max() <= 40
    drafted = decode_bytes(path.read_bytes(), 10**9, draft=b.geometry.resized[::-1])
    assert max(drafted.size) <= 1024  # decoded at 1/2 scale or less, not at 2048 px


def test_fast_decode_is_part_of_the_config_hash_only_when_on(tmp_path: Path) -> None:
    base = {"model": {"torchvision": "resnet18"}}
    off = parse_config(base, tmp_path)
    on = parse_config({**base, "preprocess": {"fast_decode": True}}, tmp_path)
    # the hash of a config that leaves fast_decode alone is the one it had before the key existed
    assert off.config_hash() == "588cd891518db14389e850089c6efe10c7e2def02d9e060d5cc6b7d6d70a7524"
    assert on.config_hash() != off.config_hash()


def test_only_regular_files_are_read(tmp_path: Path, tiny_config: dict) -> None:
    """A FIFO named a.jpg blocked open() forever; `b.jpg -> /dev/zero` read past 6 GB: error records now."""
    import os
    import subprocess

    from tests.conftest import REPO, gradcam_command, random_image, write_yaml

    folder = tmp_path / "images"
    random_image(folder / "good.jpg", 40, 30)
    os.mkfifo(folder / "a.jpg")
    (folder / "b.jpg").symlink_to("/dev/zero")
    config = write_yaml(tmp_path / "c.yaml", {**tiny_config, "runtime": {**tiny_config["runtime"], "workers": 1}})
    done = subprocess.run(
        gradcam_command(config, folder, tmp_path / "out", "--json"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 1, done.stderr
    records = {r["path"]: r for r in json.loads((tmp_path / "out" / "manifest.json").read_text())["images"]}
    assert records["good.jpg"]["status"] == "ok"
    assert records["a.jpg"]["error"]["type"] == records["b.jpg"]["error"]["type"] == "NotAFile"


def test_reads_are_capped_even_when_the_size_lies(tmp_path: Path) -> None:
    from gradcam_cli.io.decode import ImageReadError
    from gradcam_cli.io.discovery import ImageSource
    from gradcam_cli.runner.loader import SourceReader

    path = tmp_path / "big.jpg"
    path.write_bytes(b"\xff" * 5000)
    reader = SourceReader(max_bytes=4096)
    with pytest.raises(ImageReadError, match="max_file_mb"):
        reader.read(ImageSource(source=str(path), path="big.jpg"))
    assert SourceReader(max_bytes=8192).read(ImageSource(source=str(path), path="big.jpg")) == b"\xff" * 5000


@pytest.mark.parametrize("device_decode", [False, True])
def test_a_batch_crosses_from_a_worker_through_one_file_descriptor(tmp_path: Path, device_decode: bool) -> None:
    """PyTorch shares each tensor a worker sends through its own file descriptor: per-image tensors at batch
    256 with batches in flight and held would pass `ulimit -n` (1024 by default). One stacked tensor per
    batch (device_decode: the bytes travel as bytes) keeps the count flat."""
    import os

    from PIL import Image

    from gradcam_cli.io.discovery import ImageSource
    from gradcam_cli.runner.loader import DecodeDataset, decoded_batches

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sources = []
    for i in range(768):
        path = folder / (f"{i:03d}.png" if i % 3 == 0 else f"{i:03d}.jpg")  # device_decode: some on the CPU
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(path)
        sources.append(ImageSource(source=str(path), path=path.name))
    config = parse_config(
        {"model": {"torchvision": "resnet18"}, "preprocess": {"size": [16, 16], "device_decode": device_decode}},
        tmp_path,
    )

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    held = []  # keep every batch alive, as batches waiting for the model and the render stage would be
    for batch in decoded_batches(sources, DecodeDataset(config.preprocess, config.input), 256, workers=2):
        assert len(batch.ok) == 256 and batch.pixels is not None
        held.append(batch)
    assert open_fds() - before <= 3 * 4  # a handful per batch (one for its tensor), not one per image
