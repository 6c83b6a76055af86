"""`gradcam init`: a commented starter config that `gradcam run` accepts unchanged."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
import yaml
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.config import Config, load_config
from gradcam_cli.reference import rows
from tests.conftest import random_image

runner = CliRunner()


def test_every_key_is_written_with_its_default_and_explanation(tmp_path: Path) -> None:
    path = tmp_path / "gradcam.yaml"
    result = runner.invoke(app, ["init", "--model", "resnet18", "-o", str(path)])
    assert result.exit_code == 0, result.output
    text = path.read_text()
    for key, _, _, description in rows():
        leaf = key.split(".")[-1]
        assert f"{leaf}: " in text and description in text, key
    config = load_config(path)
    assert config.model.torchvision == "resnet18" and config.model.weights == "DEFAULT"
    defaults = Config(model={"torchvision": "resnet18", "weights": "DEFAULT"})
    assert config == defaults  # the file is exactly the defaults, spelled out
    data = yaml.safe_load(text)
    assert "timm" not in data["model"]  # the other sources are there, commented out
    assert "# timm: null" in text and "# factory: null" in text


def test_dry_run_accepts_the_starter_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "gradcam.yaml"
    assert runner.invoke(app, ["init", "--model", "resnet50", "-o", str(path)]).exit_code == 0
    random_image(tmp_path / "images" / "a.jpg", 40, 30)
    result = runner.invoke(app, ["run", "-c", str(path), "-i", str(tmp_path / "images"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "1 to process" in result.output


def test_run_with_a_local_checkpoint(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "models" / "resnet18.pt"
    weights.parent.mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    config = tmp_path / "configs" / "gradcam.yaml"
    config.parent.mkdir()
    result = runner.invoke(app, ["init", "--model", "resnet18", "--weights", str(weights), "-o", str(config)])
    assert result.exit_code == 0, result.output
    assert 'weights: "../models/resnet18.pt"' in config.read_text()  # relative to the config file
    random_image(tmp_path / "images" / "a.jpg", 64, 48)
    monkeypatch.chdir(tmp_path)
    args = ["run", "-c", str(config), "-i", "images", "-q", "--workers", "0"]
    result = runner.invoke(app, [*args, "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "gradcam-out" / "manifest.json").is_file()
    assert (tmp_path / "gradcam-out" / "heatmaps" / "a.jpg.png").is_file()


def test_refuses_to_overwrite_and_suggests_names(tmp_path: Path) -> None:
    path = tmp_path / "gradcam.yaml"
    path.write_text("mine\n")
    result = runner.invoke(app, ["init", "-o", str(path)])
    assert result.exit_code == 2 and "--force" in result.output and path.read_text() == "mine\n"
    assert runner.invoke(app, ["init", "-o", str(path), "--force"]).exit_code == 0
    result = runner.invoke(app, ["init", "--model", "resnet55", "-o", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2 and "did you mean" in result.output and "resnet50" in result.output
    result = runner.invoke(app, ["init", "--weights", "missing.pt", "-o", str(tmp_path / "y.yaml")])
    assert result.exit_code == 2 and "not found" in result.output


def test_classifiers_only_and_the_weights_own_preprocessing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "--model", "fasterrcnn_resnet50_fpn", "-o", str(tmp_path / "a.yaml")])
    assert result.exit_code == 2 and "not an image classifier" in result.output
    args = ["init", "--model", "resnet18", "--weights", "IMAGENET1K_V9", "-o", str(tmp_path / "b.yaml")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "IMAGENET1K_V1" in result.output
    path = tmp_path / "vit.yaml"
    assert runner.invoke(app, ["init", "--model", "vit_h_14", "-o", str(path)]).exit_code == 0
    assert load_config(path).preprocess.size == (518, 518)  # what its DEFAULT weights were trained at, not 224
