from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gradcam_cli.config import parse_config
from gradcam_cli.errors import ConfigError, ModelError
from gradcam_cli.models import fuse_conv_batchnorm, load_model, resolve_target_layers, score_reader, trace_layers
from tests.assets.tiny_models import build
from tests.conftest import ASSETS

FACTORY = str(ASSETS / "tiny_models.py") + ":build"


def _model_config(tmp_path: Path, **model):
    return parse_config({"model": model}, tmp_path).model


def _reference_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    return build().state_dict()


def _same_weights(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(module.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("wrapper", ["plain", "state_dict", "model", "ddp", "safetensors"])
def test_checkpoint_formats(tmp_path: Path, wrapper: str) -> None:
    state = _reference_state()
    if wrapper == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "w.pt"
        payload = {
            "plain": state,
            "state_dict": {"state_dict": state, "epoch": 3},
            "model": {"model": state},
            "ddp": {f"module.{k}": v for k, v in state.items()},
        }[wrapper]
        torch.save(payload, path)
    loaded = load_model(_model_config(tmp_path, factory=FACTORY, weights=str(path)))
    assert _same_weights(loaded.module, state)
    assert not any(p.requires_grad for p in loaded.module.parameters()) and not loaded.module.training
    assert len(loaded.description["checkpoint_sha256"]) == 64


def test_mismatched_checkpoint_lists_offending_keys(tmp_path: Path) -> None:
    state = _reference_state()
    state["head.weight"] = torch.zeros(5, 16)
    state["extra.bias"] = torch.zeros(1)
    del state["features.0.weight"]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ModelError) as info:
        load_model(_model_config(tmp_path, factory=FACTORY, weights="w.pt"))
    message = str(info.value)
    assert "features.0.weight" in message and "extra.bias" in message and "head.weight (5, 16)" in message


def test_pickled_objects_are_not_unpickled_by_default(tmp_path: Path) -> None:
    torch.save(build(), tmp_path / "whole.pt")  # a full module object, needs unpickling
    with pytest.raises(ModelError, match="allow_pickle"):
        load_model(_model_config(tmp_path, factory=FACTORY, weights="whole.pt"))
    loaded = load_model(_model_config(tmp_path, factory=FACTORY, weights="whole.pt", allow_pickle=True))
    assert loaded.module is not None
    pickled = load_model(_model_config(tmp_path, pickled="whole.pt", allow_pickle=True))
    assert type(pickled.module).__name__ == "TinyCNN"


def test_missing_checkpoint_and_factory_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_model(_model_config(tmp_path, factory=FACTORY, weights="missing.pt"))
    with pytest.raises(ConfigError, match="not found"):
        load_model(_model_config(tmp_path, factory="nowhere.py:build"))
    with pytest.raises(ConfigError, match="no callable"):
        load_model(_model_config(tmp_path, factory=str(ASSETS / "tiny_models.py") + ":missing"))
    with pytest.raises(ConfigError, match="not a torch module"):
        load_model(_model_config(tmp_path, factory=str(ASSETS / "tiny_models.py") + ":not_a_module"))
    with pytest.raises(ConfigError, match="cannot import"):
        load_model(_model_config(tmp_path, factory="no_such_package.mod:build"))
    with pytest.raises(ConfigError, match="unknown model 'resnet19'.*resnet18"):
        load_model(_model_config(tmp_path, torchvision="resnet19"))
    with pytest.raises(ConfigError, match="not a weights name"):
        load_model(_model_config(tmp_path, torchvision="resnet18", weights="IMAGENET9K"))


def test_missing_checkpoint_points_to_a_readme_next_to_it(tmp_path: Path) -> None:
    """A folder of git-ignored weights can say how to get them (configs/weights/README.md does)."""
    (tmp_path / "weights").mkdir()
    with pytest.raises(ConfigError) as info:
        load_model(_model_config(tmp_path, factory=FACTORY, weights="weights/net.pt"))
    assert "README" not in str(info.value)
    (tmp_path / "weights" / "README.md").write_text("make weights\n")
    with pytest.raises(ConfigError, match=r"checkpoint file not found: .*net\.pt\. .*README\.md says how to get it"):
        load_model(_model_config(tmp_path, factory=FACTORY, weights="weights/net.pt"))


def test_torchvision_weights_offline_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelError) as info:
        load_model(_model_config(tmp_path, torchvision="resnet18", weights="IMAGENET1K_V1"))
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "torch-home") in message
    assert "model.weights" in message


def test_torchvision_random_init_with_local_checkpoint_and_labels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), tmp_path / "r18.pt")
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b", "c", "d"]))
    loaded = load_model(
        _model_config(
            tmp_path, torchvision="resnet18", kwargs={"num_classes": 4}, weights="r18.pt", labels="labels.json"
        )
    )
    assert loaded.labels == ["a", "b", "c", "d"]
    layers, output = trace_layers(loaded.module, torch.zeros(1, 3, 64, 64))
    assert output.shape == (1, 4)
    assert resolve_target_layers(loaded.module, ["auto"], layers)[0][0] == "layer4"


def test_target_layer_names(tmp_path: Path) -> None:
    module = build()
    layers, _ = trace_layers(module, torch.zeros(1, 3, 32, 32))
    assert resolve_target_layers(module, ["auto"], layers)[0][0] == "features"
    assert resolve_target_layers(module, ["features.3"], layers)[0][1] is module.features[3]
    with pytest.raises(ConfigError) as info:
        resolve_target_layers(module, ["featurs.3"], layers)
    assert "'features.3'" in str(info.value) and "Usable layers" in str(info.value)


def test_labels_from_text_file(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n\n")
    loaded = load_model(_model_config(tmp_path, factory=FACTORY, labels="labels.txt"))
    assert loaded.labels == ["cat", "dog", "bird"]
    with pytest.raises(ConfigError, match="not found"):
        load_model(_model_config(tmp_path, factory=FACTORY, labels="nope.txt"))


@pytest.mark.parametrize(
    ("builder", "selector"), [("build_tuple", 1), ("build_dict", "logits"), ("build_object", "logits")]
)
def test_score_reader_selects_scores(tmp_path: Path, builder: str, selector) -> None:
    loaded = load_model(_model_config(tmp_path, factory=str(ASSETS / "tiny_models.py") + f":{builder}"))
    scores = score_reader(selector)(loaded.module(torch.zeros(2, 3, 32, 32)))
    assert scores.shape == (2, 3)
    with pytest.raises(ModelError, match="does not select"):
        score_reader("nope" if selector != "nope" else 5)(loaded.module(torch.zeros(1, 3, 32, 32)))


def test_batchnorm_folding_keeps_scores_and_target_layers() -> None:
    import copy

    from gradcam_cli.engine import METHODS, CamEngine, TargetSpec
    from tests.conftest import calibrated_random_model

    original = calibrated_random_model("resnet18").requires_grad_(False)
    fused = copy.deepcopy(original)
    target_conv = fused.layer4[1].conv2  # a conv that is itself a target layer keeps its BatchNorm
    images = torch.randn(2, 3, 96, 96)
    count = fuse_conv_batchnorm(fused, images, keep=[target_conv])
    assert count == 19  # 20 conv+bn pairs in resnet18, one protected
    assert isinstance(fused.layer4[1].bn2, torch.nn.BatchNorm2d)
    assert isinstance(fused.bn1, torch.nn.Identity)
    with torch.no_grad():
        assert torch.allclose(fused(images), original(images), atol=1e-4)
    for model in (original, fused):
        with CamEngine(model, [model.layer4], METHODS["gradcam"]) as engine:
            model.cams = engine.explain(images, TargetSpec("fixed", classes=(2,))).cams
    assert (fused.cams - original.cams).abs().max() < 1e-3


def test_batchnorm_folding_is_undone_when_scores_change() -> None:
    class Shared(torch.nn.Module):
        """The conv output feeds the BN and a skip path: folding would change the result."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.head((self.bn(y) + y).mean(dim=(2, 3)))

    model = Shared().eval()
    with torch.no_grad():
        model.bn.running_var.fill_(4.0)
        model.bn.running_mean.fill_(0.5)
    weight = model.conv.weight.clone()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(images)
    assert fuse_conv_batchnorm(model, images, keep=[]) == 0
    assert isinstance(model.bn, torch.nn.BatchNorm2d) and torch.equal(model.conv.weight, weight)
    with torch.no_grad():
        assert torch.equal(model(images), before)
