"""ONNX as a model source: same CAMs as the native model, NHWC + softmax exports, batching, clear errors."""

from __future__ import annotations

import builtins
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.config import load_config, parse_config
from gradcam_cli.errors import ConfigError, GradcamWarning
from gradcam_cli.models import load_model
from tests.conftest import ASSETS, calibrated_random_model, random_image, write_yaml

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")

SIZE = 160  # both models work below 224; keeps the CPU cost down
runner = CliRunner()


def export(model: nn.Module, path: Path, shape: tuple[int, ...] = (1, 3, SIZE, SIZE), **kwargs: Any) -> Path:
    """torch.onnx.export with the TorchScript exporter (no onnxscript needed), fixed batch of 1 by default."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model.eval(), torch.randn(*shape), str(path), dynamo=False, **kwargs)
    return path


def run_cli(config: Path, images: Path) -> dict[str, Any]:
    result = runner.invoke(app, ["run", "-c", str(config), "-i", str(images), "-q"])
    assert result.exit_code == 0, result.output
    return json.loads((config.parent / "out" / "manifest.json").read_text()) | {"_out": str(config.parent / "out")}


def config_for(folder: Path, model: dict[str, Any], **sections: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "model": {"labels": "none", **model},
        "output": {"dir": str(folder / "out"), "raw": True, "overlays": False},
        "runtime": {"workers": 0, "device": "cpu", "batch_size": 4},
        **sections,
    }
    return write_yaml(folder / "config.yaml", data)


def raw_cams(manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    out = Path(manifest["_out"])
    return {record["path"]: np.load(out / record["cams"][0]["raw"]) for record in manifest["images"]}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx_images")
    for seed, (width, height) in enumerate([(200, 150), (120, 180), (160, 160)]):
        random_image(folder / f"img{seed}.png", width, height, seed=seed + 10)
    return folder


@pytest.mark.parametrize(
    ("name", "native_layer"),
    [("resnet18", "layer4"), ("mobilenet_v3_large", "features")],
)
def test_onnx_export_gives_the_native_cams(name: str, native_layer: str, tmp_path: Path, images: Path) -> None:
    model = calibrated_random_model(name)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    export(model, tmp_path / "model.onnx")
    onnx_config = config_for(tmp_path / "onnx", {"onnx": "../model.onnx", "target_layer": "auto"})
    native_config = config_for(
        tmp_path / "native",
        {"torchvision": name, "kwargs": {"num_classes": 10}, "weights": "../weights.pt", "target_layer": native_layer},
        preprocess={"size": [SIZE, SIZE]},
    )
    # auto picks the converted module of the native layer's output (layer4's last ReLU, features' last block)
    expected = {
        "resnet18": "layer4/layer4/1/relu_1/Relu",
        "mobilenet_v3_large": "features/features/16/features/16/2/HardSwish",
    }
    converted, native = run_cli(onnx_config, images), run_cli(native_config, images)
    assert converted["config"]["preprocess"]["size"] == [SIZE, SIZE]  # read from the graph's input
    assert converted["model"]["source"].startswith("onnx:") and converted["model"]["softmax_removed"] is False
    assert converted["model"]["input_layout"] == "nchw" and converted["model"]["per_image_nodes"] == []
    assert converted["target_layer"] == expected[name]
    for ours, theirs in zip(converted["images"], native["images"], strict=True):
        assert ours["status"] == theirs["status"] == "ok"
        assert ours["predictions"][0]["class_index"] == theirs["predictions"][0]["class_index"]
        assert ours["predictions"][0]["score"] == pytest.approx(theirs["predictions"][0]["score"], abs=1e-4)
    ours, theirs = raw_cams(converted), raw_cams(native)
    for path in theirs:
        assert pearson(ours[path], theirs[path]) >= 0.99, path


class KerasLike(nn.Module):
    """What a Keras export looks like from outside: NHWC input in BGR 0..255 ('caffe' preprocessing inside the
    graph) and a softmax at the end; `net` underneath is the plain NCHW logits model."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x.permute(0, 3, 1, 2)[:, [2, 1, 0]]
        return torch.softmax(self.net((rgb - self.mean) / self.std), dim=1)


class FixedBatch(nn.Module):
    """The tiny CNN flattened with a hard-coded batch of 1, as `x.view(1, -1)` exports do."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.head(self.net.pool(self.net.features(x)).reshape(1, 16))


def tiny(weights: Path) -> nn.Module:
    from tests.assets.tiny_models import build

    model = build()
    model.load_state_dict(torch.load(weights))
    return model.eval()


def native_tiny(folder: Path, weights: Path) -> Path:
    return config_for(
        folder,
        {"factory": str(ASSETS / "tiny_models.py") + ":build", "weights": str(weights), "target_layer": "features.3"},
        preprocess={"size": [32, 32]},
    )


def assert_same_results(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    for mine, native in zip(ours["images"], theirs["images"], strict=True):
        assert [p["class_index"] for p in mine["predictions"]] == [p["class_index"] for p in native["predictions"]]
        for p, q in zip(mine["predictions"], native["predictions"], strict=True):
            assert p["score"] == pytest.approx(q["score"], abs=1e-5)
    cams, expected = raw_cams(ours), raw_cams(theirs)
    for path in expected:
        assert pearson(cams[path], expected[path]) >= 0.999, path
        np.testing.assert_allclose(cams[path], expected[path], rtol=1e-3, atol=1e-4 * expected[path].max())


def test_nhwc_softmax_caffe_export(tmp_path: Path, images: Path, tiny_weights: Path) -> None:
    export(KerasLike(tiny(tiny_weights)), tmp_path / "keras.onnx", shape=(1, 32, 32, 3))
    config = config_for(
        tmp_path / "onnx",
        {"onnx": "../keras.onnx", "target_layer": "net/features/features/3/Conv"},
        preprocess={"pixel_range": [0, 255], "channel_order": "bgr", "mean": [0, 0, 0], "std": [1, 1, 1]},
    )
    ours, theirs = run_cli(config, images), run_cli(native_tiny(tmp_path / "native", tiny_weights), images)
    model = ours["model"]
    assert model["input_layout"] == "nhwc" and model["input_layout_detected"] is True
    assert model["softmax_removed"] is True and model["input_shape"] == "1x32x32x3"
    assert ours["config"]["preprocess"]["size"] == [32, 32]  # from the NHWC graph input
    assert_same_results(ours, theirs)


def test_fixed_batch_nodes_run_per_image(tmp_path: Path, images: Path, tiny_weights: Path, capfd) -> None:
    export(FixedBatch(tiny(tiny_weights)), tmp_path / "fixed.onnx", shape=(1, 3, 32, 32))
    config = config_for(tmp_path / "onnx", {"onnx": "../fixed.onnx", "target_layer": "features/features/3/Conv"})
    with pytest.warns(GradcamWarning, match="run once per image"):
        loaded = load_model(load_config(config).model)
    (node,) = loaded.description["per_image_nodes"]
    assert "Reshape" in node
    batch = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.module(batch), tiny(tiny_weights)(batch), rtol=1e-4, atol=1e-5)
    assert_same_results(run_cli(config, images), run_cli(native_tiny(tmp_path / "native", tiny_weights), images))


def test_a_graph_that_cannot_batch_runs_image_by_image(
    tmp_path: Path, images: Path, tiny_weights: Path, capfd, monkeypatch
) -> None:
    """When no node-by-node repair works, the run falls back to batch 1 with a warning (and still agrees)."""
    from gradcam_cli.models import from_onnx as onnx_model

    def no_repair(module, inputs):
        raise onnx_model._NoBatch("no repair")

    monkeypatch.setattr(onnx_model, "_unbatched_nodes", no_repair)
    export(FixedBatch(tiny(tiny_weights)), tmp_path / "fixed.onnx", shape=(1, 3, 32, 32))
    config = config_for(tmp_path / "onnx", {"onnx": "../fixed.onnx", "target_layer": "features/features/3/Conv"})
    with pytest.warns(GradcamWarning, match="running with batch size 1"):
        assert load_model(load_config(config).model).description["max_batch"] == 1
    ours = run_cli(config, images)
    assert ours["config"]["runtime"]["batch_size"] == 1

    assert_same_results(ours, run_cli(native_tiny(tmp_path / "native", tiny_weights), images))


def test_library_warnings_reach_the_user_through_the_cli_only(tmp_path: Path, images: Path, tiny_weights: Path) -> None:
    """The per-image fallback warning: one line on stderr, none with --quiet, an event in --log-file."""
    export(FixedBatch(tiny(tiny_weights)), tmp_path / "fixed.onnx", shape=(1, 3, 32, 32))
    config = config_for(tmp_path / "onnx", {"onnx": "../fixed.onnx", "target_layer": "features/features/3/Conv"})
    log = tmp_path / "events.jsonl"
    shown = runner.invoke(app, ["run", "-c", str(config), "-i", str(images), "--no-resume"])
    assert shown.exit_code == 0 and "gradcam: warning: the ONNX graph has a fixed batch size" in shown.stderr
    command = ["run", "-c", str(config), "-i", str(images), "-q", "--no-resume", "--log-file", str(log)]
    quiet = runner.invoke(app, command)
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr, quiet.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(e["event"] == "warning" and "fixed batch size" in e["message"] for e in events)


def test_opset_newer_than_the_converter_is_converted_down(tmp_path: Path, tiny_weights: Path) -> None:
    model = tiny(tiny_weights)
    export(model, tmp_path / "new.onnx", shape=(1, 3, 32, 32), opset_version=21)  # Flatten-21: no converter
    loaded = load_model(parse_config({"model": {"onnx": "new.onnx"}}, tmp_path).model)
    assert loaded.description["opset"] == 21 and loaded.description["opset_converted_to"] == 17
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.module(batch), model(batch), rtol=1e-4, atol=1e-5)


def test_layers_command_lists_converted_modules(tmp_path: Path, tiny_weights: Path) -> None:
    export(KerasLike(tiny(tiny_weights)), tmp_path / "keras.onnx", shape=(1, 32, 32, 3))
    config = config_for(tmp_path, {"onnx": "keras.onnx"})
    result = runner.invoke(app, ["layers", "-c", str(config)])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()[1:]}
    assert lines["gradcam/nchw_to_nhwc"][:2] == ["OnnxTranspose", "1x32x32x3"]
    assert lines["net/features/features/3/Conv"][:2] == ["Conv2d", "1x16x8x8"]
    assert "auto" in lines["net/features/features/4/Relu"]
    assert not any("Softmax" in name for name in lines)


# --- graphs built with the onnx helper API: layouts and errors -------------------------------------------------


def helper_model(input_shape: list[Any], *nodes: Any, opset: int = 13, initializers: list[Any] = ()) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    conv_weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), dtype=np.float32), name="w")
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[conv_weight, *initializers],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def classifier(last: Any, *extra: Any) -> list[Any]:
    from onnx import helper

    return [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        *extra,
        last,
    ]


@pytest.mark.parametrize(
    ("shape", "setting", "layout", "detected", "size"),
    [
        ([1, 3, 64, 48], "auto", "nchw", True, (64, 48)),
        ([1, 64, 48, 3], "auto", "nhwc", True, (64, 48)),
        (["N", "H", "W", 3], "auto", "nhwc", True, None),
        (["N", 3, "H", "W"], "auto", "nchw", True, None),
        (["N", 3, 3, 3], "auto", "nchw", False, (3, 3)),  # ambiguous: NCHW assumed
        (["N", 3, 3, 3], "nhwc", "nhwc", False, (3, 3)),
    ],
)
def test_input_layout_detection(
    shape: list[Any], setting: str, layout: str, detected: bool, size: tuple[int, int] | None
) -> None:
    from onnx import helper

    from gradcam_cli.models.from_onnx import graph_input

    model = helper_model(shape, helper.make_node("Identity", ["x"], ["y"]))
    found = graph_input(model, setting)
    assert (found.layout, found.detected) == (layout, detected)
    assert found.size == size


def test_grayscale_input_is_a_clear_error() -> None:
    from onnx import helper

    from gradcam_cli.models.from_onnx import graph_input

    with pytest.raises(ConfigError, match="1 channels; gradcam feeds RGB"):
        graph_input(helper_model([1, 1, 28, 28], helper.make_node("Identity", ["x"], ["y"])))


def write_model(model: Any, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_unsupported_operator_names_op_and_node(tmp_path: Path, images: Path) -> None:
    from onnx import helper

    last = helper.make_node("Hardmax", ["f"], ["y"], name="decision/hardmax")
    write_model(helper_model([1, 3, 16, 16], *classifier(last)), tmp_path / "hardmax.onnx")
    config = config_for(tmp_path, {"onnx": "hardmax.onnx"})
    result = runner.invoke(app, ["run", "-c", str(config), "-i", str(images), "-q"])
    assert result.exit_code == 2
    assert "Hardmax (node 'decision/hardmax')" in result.output and "onnx2torch" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_operator_setting_the_converter_lacks_names_the_node(tmp_path: Path) -> None:
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.array([1, 4], dtype=np.int64), name="shape")
    last = helper.make_node("Reshape", ["f", "shape"], ["y"], name="head/reshape", allowzero=1)
    model = helper_model([1, 3, 16, 16], *classifier(last), opset=14, initializers=[shape])
    write_model(model, tmp_path / "allowzero.onnx")
    with pytest.raises(ConfigError, match=r"Reshape \(node 'head/reshape'\).*allowzero"):
        load_model(parse_config({"model": {"onnx": "allowzero.onnx"}}, tmp_path).model)


def test_softmax_at_the_end_is_removed(tmp_path: Path) -> None:
    from onnx import helper

    last = helper.make_node("Softmax", ["f"], ["y"], name="probs", axis=-1)
    write_model(helper_model([1, 3, 16, 16], *classifier(last)), tmp_path / "softmax.onnx")
    loaded = load_model(parse_config({"model": {"onnx": "softmax.onnx"}}, tmp_path).model)
    assert loaded.description["softmax_removed"] is True
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        logits = loaded.module(x)
    expected = nn.functional.conv2d(x, torch.ones(4, 3, 3, 3), padding=1).mean(dim=(2, 3))
    assert torch.allclose(logits, expected, rtol=1e-4)  # the scores before the softmax


def test_missing_and_invalid_files(tmp_path: Path, images: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"definitely not protobuf")
    for name, message in (("absent.onnx", "file not found"), ("broken.onnx", "not a valid ONNX model")):
        config = config_for(tmp_path / name.split(".")[0], {"onnx": f"../{name}"})
        result = runner.invoke(app, ["run", "-c", str(config), "-i", str(images), "-q"])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output


def test_missing_extra_gives_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_onnx2torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "onnx2torch":
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx2torch)
    config = parse_config({"model": {"onnx": "model.onnx"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"onnx2torch is not installed\): pip install 'gradcam-cli\[onnx\]'"):
        load_model(config.model)


def test_batchnorm_nodes_of_a_dynamic_batch_graph(tmp_path: Path) -> None:
    """MATLAB-style graphs keep BatchNormalization nodes: they must batch (inference statistics) and fuse."""
    from onnx import helper, numpy_helper

    from gradcam_cli.models import fuse_conv_batchnorm

    rng = np.random.default_rng(0)
    stats = {name: rng.random(4).astype(np.float32) + 0.5 for name in ("gamma", "beta", "mean", "var")}
    bn = helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], name="bn")
    relu = helper.make_node("Relu", ["n"], ["r"], name="relu")
    gap, flat = (
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["y"], name="flat"),
    )
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])
    initializers = [numpy_helper.from_array(value, name=name) for name, value in stats.items()]
    model = helper_model(["N", 3, 16, 16], conv, bn, relu, gap, flat, initializers=initializers)
    write_model(model, tmp_path / "bn.onnx")
    loaded = load_model(parse_config({"model": {"onnx": "bn.onnx"}}, tmp_path).model)
    assert loaded.description["per_image_nodes"] == [] and loaded.description["input_shape"] == "?x3x16x16"
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        before = loaded.module(x)
    assert fuse_conv_batchnorm(loaded.module, x, []) == 1
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), before, atol=1e-5)


def softmax_graph(*after: Any) -> Any:
    """conv -> gap -> flatten -> dense (random weights) -> Softmax 's', then `after` (the last writes 'y')."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    dense = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32) * 0.1, name="dense_w")
    extras = [numpy_helper.from_array(np.array([-1, 4], dtype=np.int64), name="shape"), dense]
    extras.append(numpy_helper.from_array(np.array(2.0, dtype=np.float32), name="two"))
    nodes = classifier(
        after[-1],
        helper.make_node("MatMul", ["f", "dense_w"], ["l"], name="dense"),
        helper.make_node("Softmax", ["l"], ["s"], name="probs", axis=-1),
        *after[:-1],
    )
    return helper_model([1, 3, 16, 16], *nodes, initializers=extras)


def reference_output(model: Any, x: torch.Tensor) -> np.ndarray:
    """The original graph's output, image by image (fixed batch of 1), from ONNX's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(model)
    return np.concatenate([evaluator.run(None, {"x": x[i : i + 1].numpy()})[0] for i in range(len(x))])


@pytest.mark.parametrize(
    "after",
    [
        [("Identity", ["s"], {})],
        [("Flatten", ["s"], {"axis": 1})],
        [("Reshape", ["s", "shape"], {})],
        [("Identity", ["s"], {"out": "i"}), ("Cast", ["i"], {"to": 1})],
    ],
    ids=["identity", "flatten", "reshape", "identity-cast"],
)
def test_softmax_before_shape_nodes_is_removed(after: list[Any], tmp_path: Path, images: Path, capfd) -> None:
    """Reviewer repro: Softmax -> Identity kept the softmax and reported softmax(probabilities)."""
    from onnx import helper

    nodes = [
        helper.make_node(op, inputs, [attrs.pop("out", "y")], name=f"{op.lower()}{i}", **attrs)
        for i, (op, inputs, attrs) in enumerate((op, inputs, dict(attrs)) for op, inputs, attrs in after)
    ]
    model = softmax_graph(*nodes)
    write_model(model, tmp_path / "soft.onnx")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        loaded = load_model(parse_config({"model": {"onnx": "soft.onnx"}}, tmp_path).model)
    assert loaded.description["softmax_removed"] is True
    assert not [w for w in seen if issubclass(w.category, GradcamWarning) and "Softmax" in str(w.message)]
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        probabilities = torch.softmax(loaded.module(x), dim=1).numpy()
    np.testing.assert_allclose(probabilities, reference_output(model, x), rtol=1e-4, atol=1e-6)
    if after[0][0] == "Identity" and len(after) == 1:  # end to end: the manifest and its scores
        manifest = run_cli(config_for(tmp_path / "run", {"onnx": "../soft.onnx"}), images)
        assert manifest["model"]["softmax_removed"] is True
        for record in manifest["images"]:
            assert sum(p["score"] for p in record["predictions"]) == pytest.approx(1.0, abs=1e-4)


def test_softmax_followed_by_arithmetic_is_kept_with_a_warning(tmp_path: Path, capfd) -> None:
    from onnx import helper

    model = softmax_graph(helper.make_node("Mul", ["s", "two"], ["y"], name="scale"))
    write_model(model, tmp_path / "scaled.onnx")
    with pytest.warns(GradcamWarning, match="Softmax node 'probs'"):
        loaded = load_model(parse_config({"model": {"onnx": "scaled.onnx"}}, tmp_path).model)
    assert loaded.description["softmax_removed"] is False
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.module(x).numpy(), reference_output(model, x), rtol=1e-4, atol=1e-6)
