"""Transformers: token sequences and NHWC maps become feature maps, in agreement with the reference."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.engine import METHODS, CamEngine, TargetSpec
from gradcam_cli.engine.layouts import describe_layout, looks_nhwc, token_grid
from gradcam_cli.models import auto_layer, trace_layers
from tests.conftest import ASSETS, write_yaml
from tests.test_engine_methods import pearson

reference = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def test_token_grid_drops_class_and_register_tokens() -> None:
    assert token_grid(197, (224, 224)) == (14, 14, 1)
    assert token_grid(196, (224, 224)) == (14, 14, 0)
    assert token_grid(198, (224, 224)) == (14, 14, 2)  # class + distillation token (DeiT)
    assert token_grid(14 * 28 + 1, (224, 448)) == (14, 28, 1)
    assert describe_layout((1, 2, 8), (224, 224)) is None  # one patch token is no map


def test_layout_detection() -> None:
    assert looks_nhwc((1, 7, 7, 768), (224, 224)) and not looks_nhwc((1, 512, 7, 7), (224, 224))
    assert describe_layout((1, 512, 7, 7), (224, 224))[0] == "nchw"
    assert describe_layout((1, 7, 7, 768), (224, 224))[0] == "nhwc"
    assert describe_layout((1, 197, 768), (224, 224))[0] == "tokens (drop 1, grid 14x14)"
    assert describe_layout((1, 512, 1, 1), (224, 224)) is None
    assert describe_layout((1, 10), (224, 224)) is None
    forced = describe_layout((1, 50, 8), (224, 224), "tokens", grid=(7, 7))
    assert forced is not None and forced[1](torch.zeros(2, 50, 8)).shape == (2, 8, 7, 7)


def _reshape_vit(tensor: torch.Tensor, height: int = 14, width: int = 14) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT reshape transform."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def _reshape_swin(tensor: torch.Tensor) -> torch.Tensor:
    """The reference's Swin transform for torchvision's NHWC blocks."""
    return tensor.permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("name", "layer", "transform", "expected_auto"),
    [
        ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", _reshape_vit, "encoder.layers.encoder_layer_11.ln_1"),
        ("swin_t", "features.7.1.norm1", _reshape_swin, "permute"),
    ],
)
def test_transformers_agree_with_reference(name: str, layer: str, transform, expected_auto: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval()
    images = torch.randn(2, 3, 224, 224)
    ours_model = copy.deepcopy(model).requires_grad_(False)
    layers, output = trace_layers(ours_model, images[:1])
    assert auto_layer(layers) == expected_auto
    info = next(i for i in layers if i.name == layer)
    _, adapter = describe_layout(info.shape, (224, 224))
    classes = output.argmax(dim=1).tolist() * 2
    with reference.GradCAM(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=transform) as cam:
        expected = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])
    target = [ours_model.get_submodule(layer)]
    with CamEngine(ours_model, target, METHODS["gradcam"], to_spatial=[adapter]) as engine:
        ours = engine.explain(images, TargetSpec("fixed", classes=(classes[0],))).cams[:, 0].numpy()
    for i in range(2):
        assert pearson(ours[i], expected[i]) >= 0.99


def test_vit_through_gradcam_run(tmp_path: Path, image_folder: Path) -> None:
    config = write_yaml(
        tmp_path / "vit.yaml",
        {
            "model": {"factory": str(ASSETS / "tiny_models.py") + ":build_tiny_vit"},
            "preprocess": {"size": [64, 64]},
            "output": {"dir": str(tmp_path / "out")},
            "runtime": {"workers": 0, "device": "cpu"},
        },
    )
    result = CliRunner().invoke(app, ["run", "-c", str(config), "-i", str(image_folder), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["target_layer"] == "encoder.layers.encoder_layer_1.ln_1"
    assert all(r["status"] == "ok" for r in manifest["images"])
    layers = CliRunner().invoke(app, ["layers", "-c", str(config)])
    line = next(x for x in layers.stdout.splitlines() if x.startswith("encoder.layers.encoder_layer_1.ln_1 "))
    assert " auto " in line and line.endswith("tokens (drop 1, grid 4x4)")
