"""runner/loader.py: decoded uint8 batches become the model's input; the decode stage streams in order."""

from __future__ import annotations

from pathlib import Path

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
