"""timm as a model source: its preprocessing defaults, checkpoints, and a clear message when missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.config import Config
from gradcam_cli.config import parse_config as parse_raw_config
from gradcam_cli.errors import ConfigError
from gradcam_cli.models.sources import with_source_defaults
from tests.conftest import write_yaml

timm = pytest.importorskip("timm")


def parse_config(data: dict, base_dir: Path) -> Config:
    """A config as `gradcam run` sees it: validated, then the model source's preprocessing filled in."""
    return with_source_defaults(parse_raw_config(data, base_dir))


def test_preprocessing_defaults_come_from_timm_unless_set(tmp_path: Path) -> None:
    vit = parse_config({"model": {"timm": "vit_small_patch16_224"}}, tmp_path)
    assert vit.preprocess.std == (0.5, 0.5, 0.5) and vit.preprocess.size == (224, 224)
    chosen = parse_config(
        {"model": {"timm": "vit_small_patch16_224"}, "preprocess": {"std": [0.2, 0.2, 0.2]}}, tmp_path
    )
    assert chosen.preprocess.std == (0.2, 0.2, 0.2) and chosen.preprocess.mean == (0.5, 0.5, 0.5)


def test_unknown_timm_model_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="convnext_tiny"):
        parse_config({"model": {"timm": "convnext_tiyn"}}, tmp_path)


def test_missing_extra_gives_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match=r"pip install 'gradcam-cli\[timm\]'"):
        parse_config({"model": {"timm": "resnet18"}}, tmp_path)


def test_timm_model_through_gradcam_run(tmp_path: Path, image_folder: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "r10.pt")
    config = write_yaml(
        tmp_path / "timm.yaml",
        {
            "model": {"timm": "resnet10t", "kwargs": {"num_classes": 3}, "weights": "r10.pt"},
            "preprocess": {"size": [96, 96]},
            "output": {"dir": str(tmp_path / "out")},
            "runtime": {"workers": 0, "device": "cpu"},
        },
    )
    result = CliRunner().invoke(app, ["run", "-c", str(config), "-i", str(image_folder), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model"]["source"] == "timm:resnet10t" and manifest["target_layer"] == "layer4"
    assert manifest["config"]["preprocess"]["size"] == [96, 96]
    assert len(manifest["images"]) == 3
