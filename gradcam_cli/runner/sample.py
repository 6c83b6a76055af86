"""A sample of images for the commands that study a model on a few of them (`gradcam sanity`, `gradcam sweep`):
the first N in discovery order, decoded and preprocessed exactly as `gradcam run` does (the same discovery,
filters, archive members, decode workers and resize), kept in memory as model-size uint8 inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

import torch

from gradcam_cli.config import Config
from gradcam_cli.errors import InputError
from gradcam_cli.io.discovery import discover, read_tar_members
from gradcam_cli.io.geometry import Geometry
from gradcam_cli.runner.loader import DecodeDataset, decoded_batches
from gradcam_cli.runner.todo import filters_of, limited


@dataclass
class Sample:
    paths: list[str]
    pixels: torch.Tensor  # (N, 3, H, W) uint8 model inputs
    boxes: list[tuple[int, int, int, int]]  # top, bottom, left, right of the image in the model frame
    skipped: list[tuple[str, str]]  # (path, why) of the images that could not be read


def content_box(geometry: Geometry) -> tuple[int, int, int, int]:
    """Where the image lies in the model frame: letterbox padding is not part of the explanation."""
    top, left = geometry.offset
    rh, rw = geometry.resized
    h, w = geometry.model
    return max(top, 0), min(top + rh, h), max(left, 0), min(left + rw, w)


def load_sample(config: Config, inputs: list[str], stdin: TextIO | None, workers: int, limit: int) -> Sample:
    """The first `limit` images in discovery order, decoded to model-size inputs (the run's decode); an
    InputError (exit 2) when none of them can be read. Unreadable ones are listed in `skipped`."""
    sources = read_tar_members(limited(discover(inputs, filters_of(config), stdin), limit))
    dataset = DecodeDataset(config.preprocess, config.input)
    paths, pixels, boxes, skipped = [], [], [], []
    for batch in decoded_batches(sources, dataset, config.runtime.batch_size, workers):
        for index, item in enumerate(batch.items):
            if item.error is not None:
                skipped.append((item.source.path, f"{item.error[0]}: {item.error[1]}"))
            elif batch.pixels is not None and item.geometry is not None:
                paths.append(item.source.path)
                pixels.append(batch.pixels[batch.ok.index(index)])
                boxes.append(content_box(item.geometry))
    if not paths:
        shown = "; ".join(f"{path}: {reason}" for path, reason in skipped[:3])
        raise InputError(
            f"no image to check: the inputs gave {len(skipped)} images and none could be read"
            + (f" ({shown})" if shown else "")
            + ". Pass a folder or files of images the model can read."
        )
    return Sample(paths, torch.stack(pixels), boxes, skipped)
