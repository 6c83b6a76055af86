"""`gradcam sanity`: the cascade of blocks, seeded re-initialisation, the check on the demo CNN (passes) and on
a weight-independent edge detector (flagged), and the command's exit codes, reports and promises."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.config import load_config
from gradcam_cli.engine.methods import METHODS, CamInputs, CamMethod
from gradcam_cli.models.layers import trace_layers
from gradcam_cli.runner.sanity import Block, cascade_blocks, check_sanity, reinitialise
from tests.conftest import REPO, write_yaml

runner = CliRunner()
DEMO_IMAGES = REPO / "sample_images" / "demo"
DEMO_WEIGHTS = REPO / "gradcam_cli" / "demo" / "demo_cnn.safetensors"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def demo_config(tmp_path: Path) -> Path:
    """configs/demo.yaml with its asset paths made absolute, on the CPU, decoding in this process."""
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["model"]["weights"] = str(DEMO_WEIGHTS)
    data["model"]["labels"] = str(REPO / "gradcam_cli" / "demo" / "labels.txt")
    data["runtime"].update(device="cpu", workers=0)
    data["output"]["dir"] = str(tmp_path / "never-written")
    return write_yaml(tmp_path / "demo.yaml", data)


def sobel_edges(x: CamInputs) -> torch.Tensor:
    """The test hook: an "explanation" that is the Sobel edge magnitude of the input, whatever the weights."""
    grey = x.images.float().mean(dim=1, keepdim=True)
    kernel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx, gy = F.conv2d(grey, kernel, padding=1), F.conv2d(grey, kernel.transpose(-1, -2), padding=1)
    return (gx**2 + gy**2).sqrt()  # (B, 1, H, W): the engine's channel sum leaves the edge map


@pytest.fixture
def edge_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    """cam.method gradcam computes the edge map instead, for this test only."""
    monkeypatch.setitem(METHODS, "gradcam", CamMethod("gradcam", sobel_edges, needs_gradients=False))


# The cascade -----------------------------------------------------------------------------------------


def resnet18_blocks(target_layers: list[str]) -> list[Block]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    order = [info.name for info in trace_layers(model, torch.zeros(1, 3, 64, 64))[0]]
    return cascade_blocks(model, target_layers, order)


def test_resnet18_cascade_runs_from_the_logits_down_through_the_target_layer() -> None:
    blocks = resnet18_blocks(["layer4"])
    assert [b.name for b in blocks] == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    assert [b.reaches_target for b in blocks] == [False, True, True, True, True, True, True]
    assert not any(b.own_only for b in blocks)


def test_a_block_holding_the_target_layer_is_split_into_its_children() -> None:
    """Target layer3.1.conv2: the blocks above it (bn2) change only the gradients; from conv2 down, the
    target's activations change too."""
    blocks = resnet18_blocks(["layer3.1.conv2"])
    assert [b.name for b in blocks] == [
        "fc",
        "layer4",
        "layer3.1.bn2",
        "layer3.1.conv2",
        "layer3.1.bn1",
        "layer3.1.conv1",
        "layer3.0",
        "layer2",
        "layer1",
        "bn1",
        "conv1",
    ]
    assert [b.name for b in blocks if not b.reaches_target] == ["fc", "layer4", "layer3.1.bn2"]


class Embedded(nn.Module):
    """A model with parameters of its own beside its children (a position embedding), layers in a
    ModuleList that is never called itself, and children registered out of forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)  # registered first, runs last
        self.position = nn.Parameter(torch.zeros(1, 4, 1, 1))
        self.stages = nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)])
        self.unused = nn.Linear(3, 3)  # never called: cannot change the maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x) + self.position
        return self.head(x.mean(dim=(2, 3)))


def test_own_parameters_module_lists_and_forward_order() -> None:
    model = Embedded()
    order = [info.name for info in trace_layers(model, torch.zeros(1, 3, 8, 8))[0]]
    blocks = cascade_blocks(model, ["stages.1"], order)
    assert [b.label for b in blocks] == ["head", "stages.1", "stages.0", "model (own parameters)"]


def test_reinitialise_is_seeded_and_touches_only_its_block() -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval().requires_grad_(False)
    trained = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    reinitialise(model, Block("layer4"), seed=7)
    assert torch.equal(torch.rand(3), before), "the global random state must not move"
    first = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for name, tensor in first.items():
        if not name.startswith("layer4."):
            assert torch.equal(tensor, trained[name]), name
    assert not torch.equal(first["layer4.0.conv1.weight"], trained["layer4.0.conv1.weight"])
    assert first["layer4.0.conv1.weight"].std() == pytest.approx(trained["layer4.0.conv1.weight"].std(), rel=0.5)

    model.load_state_dict(trained)
    reinitialise(model, Block("layer4"), seed=7)
    assert all(torch.equal(model.state_dict()[n], first[n]) for n in first), "same seed, same weights"
    model.load_state_dict(trained)
    reinitialise(model, Block("layer4"), seed=8)
    assert not torch.equal(model.state_dict()["layer4.0.conv1.weight"], first["layer4.0.conv1.weight"])


def test_own_parameters_are_redrawn_at_their_scale() -> None:
    model = Embedded()
    with torch.no_grad():
        model.position.copy_(torch.linspace(-3, 3, 4).view(1, 4, 1, 1))
    head = model.head.weight.clone()
    reinitialise(model, Block("", own_only=True), seed=1)
    assert not torch.equal(model.position, torch.linspace(-3, 3, 4).view(1, 4, 1, 1))
    assert torch.equal(model.head.weight, head), "own parameters only, not the children"


# The check, end to end -------------------------------------------------------------------------------


def test_gradcam_on_the_demo_cnn_passes(demo_config: Path) -> None:
    result = check_sanity(load_config(demo_config, {"sanity.limit": 4}), [str(DEMO_IMAGES)])
    assert result.images == 4 and not result.skipped
    assert [s.name for s in result.steps] == ["head", "features", "random class"]
    assert [s.reaches_target for s in result.cascade] == [False, True]
    assert result.steps[1].randomised == ("head", "features")
    assert result.deepest.mean_spearman < 0.4, "gradcam must follow the weights"
    assert result.deepest.unchanged_fraction(0.9) == 0.0
    assert not result.flagged and result.exit_code == 0
    again = check_sanity(load_config(demo_config, {"sanity.limit": 4}), [str(DEMO_IMAGES)])
    assert [c.spearman for c in again.deepest.changes] == [c.spearman for c in result.deepest.changes]


def test_an_edge_detector_is_flagged(demo_config: Path, edge_detector: None) -> None:
    result = check_sanity(load_config(demo_config, {"sanity.limit": 4}), [str(DEMO_IMAGES)])
    assert result.flagged and result.exit_code == 1
    for s in result.steps:  # a map that does not depend on the weights is the same map at every step
        assert s.mean_spearman == pytest.approx(1.0) and s.mean_ssim == pytest.approx(1.0)
    assert result.reasons()[0].startswith("mean Spearman 1.000 > 0.7")


def test_the_check_never_changes_the_checkpoint(config_file, image_folder: Path, tiny_weights: Path) -> None:
    stat, digest = tiny_weights.stat(), sha256(tiny_weights)
    result = check_sanity(load_config(config_file()), [str(image_folder)])
    assert [s.name for s in result.cascade] == ["head", "features.3", "features.1", "features.0"]
    assert sha256(tiny_weights) == digest and tiny_weights.stat().st_mtime_ns == stat.st_mtime_ns


def test_the_runs_metrics_are_not_computed_by_the_check(
    config_file, image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gradcam_cli.engine.metrics as metrics

    computed: list[int] = []
    real = metrics.compute
    monkeypatch.setattr(metrics, "compute", lambda *a, **k: computed.append(1) or real(*a, **k))
    config = config_file(cam={"metrics": ["deletion", "insertion"], "metric_steps": 4}, sanity={"max_steps": 2})
    result = check_sanity(load_config(config), [str(image_folder)])
    assert len(result.steps) == 3 and computed == []  # the maps only: cam.metrics are for `gradcam run`


def test_max_steps_stops_the_cascade_early(config_file, image_folder: Path) -> None:
    result = check_sanity(load_config(config_file(sanity={"max_steps": 2, "random_class": False})), [str(image_folder)])
    assert [s.name for s in result.steps] == ["head", "features.3"]
    assert result.deepest.randomised == ("head", "features.3")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reinitialise_draws_the_same_weights_on_a_gpu() -> None:
    import torchvision

    torch.manual_seed(0)
    on_cpu = torchvision.models.resnet18(num_classes=10).eval().requires_grad_(False)
    on_gpu = torchvision.models.resnet18(num_classes=10).eval().requires_grad_(False)
    on_gpu.load_state_dict(on_cpu.state_dict())
    on_gpu = on_gpu.cuda().to(memory_format=torch.channels_last)
    for model in (on_cpu, on_gpu):
        reinitialise(model, Block("layer4"), seed=3)
    weight = on_gpu.layer4[0].conv1.weight
    assert weight.is_cuda and weight.is_contiguous(memory_format=torch.channels_last)
    for name, tensor in on_cpu.state_dict().items():
        assert torch.equal(on_gpu.state_dict()[name].cpu(), tensor), name


def test_unreadable_images_are_skipped_and_reported(config_file, image_folder: Path) -> None:
    (image_folder / "broken.jpg").write_bytes(b"not an image")
    result = check_sanity(load_config(config_file()), [str(image_folder)])
    assert result.images == 3
    assert [path for path, _ in result.skipped] == ["broken.jpg"]


# The command -----------------------------------------------------------------------------------------


def gradcam(*args: str) -> Any:
    return runner.invoke(app, list(args))


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_cli_passes_gradcam_with_json_and_junit(demo_config: Path, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    before, weights = files_under(tmp_path), sha256(DEMO_WEIGHTS)
    result = gradcam(
        "sanity", "-c", str(demo_config), "-i", str(DEMO_IMAGES), "--limit", "3",
        "--json", str(reports / "sanity.json"), "--junit", str(reports / "junit.xml"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "PASS: gradcam's maps change" in result.output and "features" in result.output
    assert "gradcam: step 2/2: features re-initialised, mean Spearman" in result.output  # progress, on stderr
    assert files_under(tmp_path) - before == {reports / "sanity.json", reports / "junit.xml"}, "writes only those"
    assert sha256(DEMO_WEIGHTS) == weights
    data = json.loads((reports / "sanity.json").read_text())
    assert data["images"] == 3 and data["verdict"]["flagged"] is False and data["verdict"]["exit_code"] == 0
    assert [s["name"] for s in data["steps"]] == ["head", "features", "random class"]
    assert len(data["steps"][1]["maps"]) == 3 and data["thresholds"]["limit"] == 3
    suite = ET.parse(reports / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("tests") == "3"


def test_cli_flags_an_edge_detector(demo_config: Path, tmp_path: Path, edge_detector: None) -> None:
    result = gradcam(
        "sanity", "-c", str(demo_config), "-i", str(DEMO_IMAGES), "--limit", "2", "--junit", str(tmp_path / "j.xml")
    )
    assert result.exit_code == 1, result.output
    assert "FLAGGED: gradcam's maps barely change" in result.output
    failures = list(ET.parse(tmp_path / "j.xml").getroot().iter("failure"))
    assert len(failures) == 1 and failures[0].get("type") == "flagged"


def test_cli_threshold_option_overrides_the_config(demo_config: Path) -> None:
    """With a limit below what even a fully random model reaches, gradcam is flagged: the option is used."""
    result = gradcam("sanity", "-c", str(demo_config), "-i", str(DEMO_IMAGES), "--limit", "2", "--max-spearman", "-1")
    assert result.exit_code == 1, result.output
    assert "> -1.0" in result.output


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown-key", "sanity.max_spearmen"),
        ("bad-value", "sanity.max_spearman"),
        ("missing-input", "input not found"),
        ("no-images", "no image to check"),
        ("report-folder", "does not exist"),
        ("bad-layer", "model.target_layer"),
    ],
)
def test_cli_unusable_config_or_input_is_exit_2_with_one_paragraph(
    case: str, expected: str, config_file, image_folder: Path, tmp_path: Path
) -> None:
    config, inputs, extra = config_file(), str(image_folder), []
    if case == "unknown-key":
        config = config_file(sanity={"max_spearmen": 0.5})
    elif case == "bad-value":
        config = config_file(sanity={"max_spearman": 3})
    elif case == "missing-input":
        inputs = str(tmp_path / "nowhere")
    elif case == "no-images":
        inputs = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "broken.png").write_bytes(b"\x89PNG broken")
    elif case == "report-folder":
        extra = ["--json", str(tmp_path / "missing" / "s.json")]
    elif case == "bad-layer":
        extra = ["--target-layer", "features.99"]
    before = files_under(tmp_path)
    result = gradcam("sanity", "-c", str(config), "-i", inputs, *extra)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("gradcam: error: ") and expected in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert files_under(tmp_path) == before


def test_cli_help_documents_the_exit_codes() -> None:
    result = gradcam("sanity", "--help")
    assert result.exit_code == 0 and "1 flagged" in result.output and "--junit" in result.output
