"""Shared fixtures: tiny models saved to files, configs written to temp folders, generated images."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

ASSETS = Path(__file__).parent / "assets"
REPO = Path(__file__).resolve().parents[1]


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def random_image(path: Path, width: int, height: int, seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    # Smooth blobs rather than white noise so JPEG round trips and CAMs are not degenerate.
    small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert(mode).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from tests.assets.tiny_models import build

    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(build().state_dict(), path)
    return path


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_weights: Path) -> dict[str, Any]:
    """A minimal valid config dict (tiny CNN by factory file) writing into tmp_path/out."""
    return {
        "model": {
            "factory": str(ASSETS / "tiny_models.py") + ":build",
            "weights": str(tiny_weights),
            "labels": ["cat", "dog", "bird"],
            "target_layer": "features.3",
        },
        "preprocess": {"size": [32, 32]},
        "output": {"dir": str(tmp_path / "out")},
        "runtime": {"batch_size": 4, "workers": 0, "device": "cpu"},
    }


@pytest.fixture
def config_file(tmp_path: Path, tiny_config: dict[str, Any]):
    """Write a (modified) tiny config to a YAML file: config_file(**{"cam": {...}})."""

    def make(**sections: Any) -> Path:
        data = copy.deepcopy(tiny_config)
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        return write_yaml(tmp_path / "config.yaml", data)

    return make


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    random_image(folder / "a.jpg", 64, 48, seed=1)
    random_image(folder / "a.png", 40, 40, seed=2)
    random_image(folder / "sub" / "b.png", 30, 70, seed=3)
    return folder


def calibrated_random_model(name: str, num_classes: int = 10, seed: int = 0):
    """A random-initialised torchvision model whose BatchNorm statistics were run on random inputs.

    Fresh torchvision inits (mobilenet_v3 especially) give logits near 1e-10, where every CAM is float
    noise; calibrating BN keeps weights random but activations well scaled.
    """
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, num_classes=num_classes)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 224, 224))
    return model.eval()


def write_slow_config(path: Path, tiny_weights: Path, **runtime: Any) -> Path:
    """A config for the deliberately slow tiny CNN (signal and concurrency tests need runs that take a while)."""
    import json

    data = {
        "model": {
            "factory": str(ASSETS / "tiny_models.py") + ":build_slow",
            "weights": str(tiny_weights),
            "target_layer": "features.3",
        },
        "preprocess": {"size": [32, 32]},
        "runtime": {"device": "cpu", **runtime},
    }
    path.write_text(json.dumps(data))
    return path


def remove_tree(root: Path) -> None:
    """shutil.rmtree without recursion (pytest's own cleanup recurses and fails on very deep trees)."""
    stack = [os.fsencode(root)]
    while stack:
        folder = stack[-1]
        subfolders = []
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.path)
            else:
                os.unlink(entry.path)
        if subfolders:
            stack.extend(subfolders)
        else:
            os.rmdir(stack.pop())


@pytest.fixture
def deep_folder(tmp_path: Path) -> Iterator[Callable[[Path, int], Path]]:
    """deep_folder(root, depth): a folder `depth` levels of d/ below root; removed without recursion."""
    made: list[Path] = []

    def make(root: Path, depth: int) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        made.append(root)
        folder = root
        for _ in range(depth):
            folder = folder / "d"
            folder.mkdir()
        return folder

    yield make
    for root in made:
        for child in (root / "d", root.parent / "out"):
            if child.exists():
                remove_tree(child)


def gradcam_command(config: Path, inputs: Path, out: Path, *extra: str, entry: tuple[str, ...] = ()) -> list[str]:
    """`python -m gradcam_cli.cli run -c CONFIG -i INPUTS -o OUT -q ...` for a real process (or `entry`, e.g.
    ("-c", CODE), instead of the module)."""
    import sys

    start = [sys.executable, *(entry or ("-m", "gradcam_cli.cli"))]
    return [*start, "run", "-c", str(config), "-i", str(inputs), "-o", str(out), "-q", *extra]


def wait_for_records(out: Path, process: Any, lines: int = 2, seconds: float = 120) -> None:
    """Until the run in `process` has made `lines` records durable (then a test can interrupt it)."""
    import time

    deadline = time.time() + seconds
    records = out / "records.jsonl"
    while time.time() < deadline and process.poll() is None:
        if records.exists() and records.read_text().count("\n") >= lines:
            return
        time.sleep(0.05)
    raise AssertionError("the run finished or stalled before the test could act")
