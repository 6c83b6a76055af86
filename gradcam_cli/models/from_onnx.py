"""ONNX networks (exported from MATLAB, Keras/TensorFlow, PyTorch ...) as a model source (`model.onnx`).

onnx2torch turns the graph into a torch.fx GraphModule: a differentiable PyTorch module with one submodule
per graph node, named after the node (`/layer4/layer4.1/relu_1/Relu` becomes `layer4/layer4/1/relu_1/Relu`),
so target layers, hooks, `auto` and `gradcam layers` work as for any other model. Before conversion the
graph is adapted to the pipeline's conventions:

- NHWC inputs (Keras) get a leading Transpose node, so the module always takes NCHW images;
- a final Softmax/LogSoftmax over the classes is removed, also when only shape nodes (Identity, Flatten,
  Reshape, Squeeze, Unsqueeze, Cast to float) follow it: CAMs explain the logit, the engine applies softmax
  itself for the reported probabilities; a softmax near the output that cannot be removed safely is kept
  with a warning;
- constant Identity nodes (PyTorch's exporter writes them for shared initializers) are folded, and graphs
  of an opset newer than the converter knows are converted down when that makes every operator supported.

After conversion, a batch of two is checked against the two images one at a time: exports with a fixed
batch of 1 usually batch anyway; nodes that do not (a Reshape to a hard-coded `[1, ...]`) are run once per
image, with a warning; a graph that batches wrongly even then is a ModelError asking for a dynamic-batch
export; when no node-by-node repair works, the run falls back to batch size 1 (manifest `max_batch`), with a
warning. Warnings go through `warnings` (GradcamWarning), so the CLI shows them, `--quiet` silences them and
`--log-file` records them. Needs the optional extra `gradcam-cli[onnx]` (onnx, onnx2torch), imported only here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from gradcam_cli.config import ModelConfig
from gradcam_cli.errors import ConfigError, GradcamWarning, ModelError
from gradcam_cli.models.built import Built
from gradcam_cli.models.checkpoints import file_sha256

MAX_OPSET = 17  # onnx2torch has converters for (nearly) every operator up to this opset
SOFTMAX_OPS = ("Softmax", "LogSoftmax")
SHAPE_ONLY_OPS = ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze")
FLOAT_TYPE = 1  # onnx.TensorProto.FLOAT
NCHW_INPUT = "gradcam_input_nchw"
TRANSPOSE_NODE = "gradcam/nchw_to_nhwc"
# The message of the repair step that found no fix; the caller then runs the graph at batch size 1 (running the
# whole module once per image inside one batch would fire the target layer's hook once per image, and the
# engine keeps a single activation leaf per batch).
BATCH_ONE_HINT = (
    "gradcam cannot run it image by image (runtime.batch_size: 1 does not help: this check runs when the model "
    "is loaded). Re-export it with a dynamic batch dimension: torch.onnx.export(..., input_names=['input'], "
    "dynamic_axes={'input': {0: 'batch'}}); tf2onnx and MATLAB exportONNXNetwork write one by default."
)
INSTALL_HINT = "pip install 'gradcam-cli[onnx]' (or pip install onnx onnx2torch)"


def require_onnx() -> tuple[Any, Any]:
    """The `onnx` and `onnx2torch` modules, or a ConfigError with the install hint."""
    try:
        import onnx
        import onnx2torch
    except ImportError as exc:
        raise ConfigError(
            f"model.onnx needs the optional onnx extra ({exc.name or 'onnx'} is not installed): {INSTALL_HINT}."
        ) from None
    return onnx, onnx2torch


def read_graph(path: Path) -> Any:
    """The ONNX ModelProto in `path`; a missing or invalid file is a ConfigError."""
    onnx, _ = require_onnx()
    if not path.is_file():
        raise ConfigError(f"model.onnx: file not found: {path}.")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(str(path) if model.ByteSize() >= 2**31 else model)  # > 2 GiB: by path
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError, external data errors
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"model.onnx: {path} is not a valid ONNX model ({type(exc).__name__}: {first_line}). Export it again "
            "(MATLAB exportONNXNetwork, tf2onnx, torch.onnx.export) and check that the file was copied completely."
        ) from None
    return model


@dataclass(frozen=True)
class GraphInput:
    """The graph's image input: its name, shape (None for symbolic dims) and layout."""

    name: str
    shape: tuple[int | None, ...]
    layout: str  # nchw | nhwc
    detected: bool  # the layout was read from the shape (not configured or assumed)

    @property
    def channels(self) -> int | None:
        return self.shape[1] if self.layout == "nchw" else self.shape[3]

    @property
    def size(self) -> tuple[int, int] | None:
        """Fixed (height, width) of the input, or None when either is symbolic."""
        height, width = self.shape[2:] if self.layout == "nchw" else self.shape[1:3]
        return (height, width) if height and width else None


def graph_input(model: Any, layout: str = "auto", path: Path | None = None) -> GraphInput:
    """The one image input of the graph; layout `auto` reads NHWC/NCHW from where the 1 or 3 channels are."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    where = f"model.onnx: {path}" if path else "model.onnx"
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs) or "none"
        raise ConfigError(f"{where} has {len(inputs)} inputs ({names}); gradcam feeds one image tensor.")
    value = inputs[0]
    dims = value.type.tensor_type.shape.dim
    shape = tuple(dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None for dim in dims)
    if len(shape) != 4:
        raise ConfigError(
            f"{where}: the input {value.name!r} has {len(shape)} dimensions, not an image batch "
            "(batch, channels, height, width) or (batch, height, width, channels)."
        )
    detected = False
    if layout == "auto":
        first, last = shape[1] in (1, 3), shape[3] in (1, 3)
        detected = first != last
        layout = "nhwc" if last and not first else "nchw"
    found = GraphInput(value.name, shape, layout, detected)
    if found.channels not in (None, 3):
        raise ConfigError(
            f"{where}: the input {value.name!r} of shape {_shape_text(shape)} ({layout}) has {found.channels} "
            "channels; gradcam feeds RGB images (3 channels). If the layout was misread, set model.input_layout."
        )
    return found


def graph_input_size(path: Path, layout: str = "auto") -> tuple[int, int] | None:
    """The fixed input (height, width) of the graph in `path`, or None (unknown, or the file is unusable:
    loading the model reports that)."""
    try:
        onnx, _ = require_onnx()
        model = onnx.load(str(path), load_external_data=False)
        return graph_input(model, layout).size
    except Exception:
        return None


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "x".join("?" if dim is None else str(dim) for dim in shape)


def _fold_constant_identities(model: Any) -> None:
    """Identity nodes of an initializer become initializers (the converter wants weights as initializers)."""
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    outputs = {value.name for value in model.graph.output}
    for node in list(model.graph.node):
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs:
            array = numpy_helper.to_array(initializers[node.input[0]])
            copy = numpy_helper.from_array(array, name=node.output[0])
            model.graph.initializer.append(copy)
            initializers[copy.name] = copy
            model.graph.node.remove(node)


def _softmax_over_classes(model: Any, node: Any) -> bool:
    """Whether a Softmax/LogSoftmax node normalises over the class axis of (batch, classes[, 1, 1]) scores."""
    from onnx import shape_inference

    axis = next((attr.i for attr in node.attribute if attr.name == "axis"), None)
    axis = axis if axis is not None else (-1 if _opsets(model).get("", 0) >= 13 else 1)
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort here: an unknown rank is judged by the axis alone
        inferred = model
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    value = next((v for v in values if v.name == node.input[0]), None)
    dims = list(value.type.tensor_type.shape.dim) if value is not None else []
    if len(dims) <= 2:  # (batch, classes), or rank unknown
        return axis in (-1, 1)
    return axis == 1 and all(dim.HasField("dim_value") and dim.dim_value == 1 for dim in dims[2:])


def _value_preserving(node: Any) -> bool:
    """Nodes that only move or relabel values (so a Softmax before them still yields the graph's scores)."""
    if node.op_type == "Cast":
        return next((attr.i for attr in node.attribute if attr.name == "to"), None) == FLOAT_TYPE
    return node.op_type in SHAPE_ONLY_OPS


def _strip_softmax(model: Any) -> str | None:
    """Remove the Softmax/LogSoftmax over the classes that gives the graph's only output, directly or through
    shape-only nodes (Identity, Flatten, Reshape, Squeeze, Unsqueeze, Cast to float), which are kept; its op
    type. A softmax near the output that cannot be removed safely (followed by arithmetic, feeding other
    nodes, not over the classes) is kept with a warning: the scores are then computed from probabilities."""
    if len(model.graph.output) != 1:
        return None
    nodes = list(model.graph.node)
    producer = {name: node for node in nodes for name in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    output = model.graph.output[0]
    node, after = producer.get(output.name), None  # `after`: the node that reads the softmax output
    while node is not None and _value_preserving(node) and len(consumers.get(node.input[0], [])) == 1:
        node, after = producer.get(node.input[0]), node
    if node is not None and node.op_type in SOFTMAX_OPS:
        alone = not consumers.get(node.output[0]) if after is None else len(consumers[node.output[0]]) == 1
        if alone and _softmax_over_classes(model, node):
            model.graph.node.remove(node)
            if after is None:
                output.name = node.input[0]
            else:
                after.input[0] = node.input[0]
            for value in [v for v in model.graph.value_info if v.name == node.output[0]]:
                model.graph.value_info.remove(value)
            return node.op_type
    near = _softmax_near(output.name, producer)
    if near is not None:
        warnings.warn(
            f"the ONNX graph's output is computed from {near.op_type} node {near.name!r}, which "
            "cannot be removed safely (other operations follow it or it is not over the classes); it is kept, so "
            "the reported scores are a softmax of that output and CAMs explain it, not the class logits. Export "
            "the network without the final softmax to explain logits.",
            GradcamWarning,
            stacklevel=2,
        )
    return None


def _softmax_near(name: str, producer: dict[str, Any], depth: int = 3) -> Any | None:
    """A Softmax/LogSoftmax node at most `depth` nodes before the tensor `name`, if any."""
    frontier = [name]
    for _ in range(depth):
        found = [producer[item] for item in frontier if item in producer]
        for node in found:
            if node.op_type in SOFTMAX_OPS:
                return node
        frontier = [item for node in found for item in node.input]
    return None


def _insert_transpose(model: Any, found: GraphInput) -> None:
    """Make the graph take NCHW: a new input feeding a Transpose that produces the old NHWC input."""
    from onnx import helper

    old = next(value for value in model.graph.input if value.name == found.name)
    dims = list(old.type.tensor_type.shape.dim)
    new = helper.make_tensor_value_info(NCHW_INPUT, old.type.tensor_type.elem_type, None)
    for index in (0, 3, 1, 2):
        new.type.tensor_type.shape.dim.add().CopyFrom(dims[index])
    transpose = helper.make_node("Transpose", [NCHW_INPUT], [found.name], name=TRANSPOSE_NODE, perm=[0, 2, 3, 1])
    model.graph.input.remove(old)
    model.graph.input.insert(0, new)
    model.graph.node.insert(0, transpose)


def _opsets(model: Any) -> dict[str, int]:
    return {("" if entry.domain == "ai.onnx" else entry.domain): entry.version for entry in model.opset_import}


def _unsupported(model: Any) -> list[str]:
    """'OpType (node 'name')' for every node the converter has no converter for."""
    from onnx2torch.node_converters import get_converter

    opsets = _opsets(model)
    missing = []
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        try:
            if domain not in opsets:
                raise NotImplementedError(domain)
            get_converter(domain=domain, operation_type=node.op_type, version=opsets[domain])
        except NotImplementedError:
            op = f"{domain}::{node.op_type}" if domain else node.op_type
            missing.append(f"{op} (node {node.name or '(unnamed)'!r})")
    return missing


def _supported_graph(model: Any, path: Path) -> tuple[Any, int | None]:
    """The model, converted down to MAX_OPSET when only that makes every operator supported; or a ConfigError
    naming the unsupported operators and their nodes."""
    missing = _unsupported(model)
    if not missing:
        return model, None
    opset = _opsets(model).get("", 0)
    if opset > MAX_OPSET:
        from onnx import version_converter

        try:
            lowered = version_converter.convert_version(model, MAX_OPSET)
            if not _unsupported(lowered):
                return lowered, MAX_OPSET
        except Exception:  # the version converter lacks adapters for some operators
            pass
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    lower = (
        f"re-export with opset {MAX_OPSET} (torch.onnx.export(..., opset_version={MAX_OPSET}), python -m "
        f"tf2onnx.convert --opset {MAX_OPSET}) or "
        if opset > MAX_OPSET
        else ""
    )
    raise ConfigError(
        f"model.onnx: {path} (opset {opset}) uses operators the ONNX-to-PyTorch converter (onnx2torch) cannot "
        f"handle: {shown}. To explain it, {lower}replace these layers with standard ones before exporting."
    )


def _convert(model: Any, path: Path) -> fx.GraphModule:
    """onnx2torch's conversion; an operator attribute it cannot handle names the operator and node."""
    from onnx2torch import convert

    try:
        return convert(model)
    except NotImplementedError as exc:
        raise ConfigError(
            f"model.onnx: {path}: the converter (onnx2torch) cannot handle {_failing_node(model)}: {exc}. Re-export "
            "without this operator setting, or replace the layer before exporting."
        ) from None
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(
            f"model.onnx: converting {path} to PyTorch failed in {_failing_node(model)}: {type(exc).__name__}: "
            f"{first_line}."
        ) from None


def _failing_node(model: Any) -> str:
    """'OpType (node 'name')' of the first node whose converter raises, for error messages."""
    from onnx2torch.node_converters import get_converter
    from onnx2torch.onnx_graph import OnnxGraph
    from onnx2torch.utils.safe_shape_inference import safe_shape_inference

    try:
        inferred = safe_shape_inference(model)
        graph = OnnxGraph(inferred.graph)
        opsets = _opsets(inferred)
    except Exception:
        return "a node"
    for onnx_node in graph.nodes.values():
        proto = onnx_node.proto
        try:
            converter = get_converter(
                domain=onnx_node.domain, operation_type=onnx_node.operation_type, version=opsets[onnx_node.domain]
            )
            converter(onnx_node, graph)
        except Exception:
            return f"{proto.op_type} (node {proto.name or '(unnamed)'!r})"
    return "a node"


class PerImage(nn.Module):
    """Runs `inner` once per image of the batch (the arguments at `split`) and concatenates the results:
    for nodes of a fixed-batch export that only work at batch 1 (a Reshape to a hard-coded [1, ...])."""

    def __init__(self, inner: nn.Module, split: tuple[int, ...]) -> None:
        super().__init__()
        self.inner = inner
        self.split = split

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        count = args[self.split[0]].shape[0]
        parts = [
            self.inner(*(arg[i : i + 1] if j in self.split else arg for j, arg in enumerate(args)), **kwargs)
            for i in range(count)
        ]
        if isinstance(parts[0], (tuple, list)):
            return type(parts[0])(torch.cat(chunk) for chunk in zip(*parts, strict=True))
        return torch.cat(parts)


def _tensors(value: Any) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _close(actual: Any, expected: torch.Tensor) -> bool:
    if not torch.is_tensor(actual) or actual.shape != expected.shape or actual.dtype != expected.dtype:
        return False
    if not expected.is_floating_point():
        return bool(torch.equal(actual, expected))
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(torch.allclose(actual, expected, rtol=1e-3, atol=1e-4 * max(scale, 1e-3)))


def _batches_like_singles(module: nn.Module, images: list[torch.Tensor]) -> bool | None:
    """Whether a batch gives each image's result as run alone; None if even one image alone fails."""
    with torch.no_grad():
        try:
            singles = [_tensors(module(image)) for image in images]
        except Exception:
            return None
        try:
            batched = _tensors(module(torch.cat(images)))
        except Exception:
            return False
    if len(batched) != len(singles[0]):
        return False
    for index, value in enumerate(batched):
        parts = [single[index] for single in singles]
        if all(part.dim() > 0 and part.shape[0] == 1 for part in parts):
            if not _close(value, torch.cat(parts)):
                return False
        elif not _close(value, parts[0]):
            return False
    return True


def _unbatched_nodes(module: fx.GraphModule, images: list[torch.Tensor]) -> list[tuple[fx.Node, tuple[int, ...]]]:
    """Nodes that go wrong on a batch but not image by image, with the positions of their per-image arguments.

    The graph runs node by node on each image alone and on their batch. A node whose per-image results have a
    leading 1 and that takes per-image values is per-image itself: its batched result must be their
    concatenation. Where it is not, the node is recorded and the batched run continues with the right value.
    Raises ModelError for a node that cannot be fixed that way.
    """
    runs = [fx.Interpreter(module, garbage_collect_values=False) for _ in range(len(images) + 1)]
    inputs = [*images, torch.cat(images)]
    per_image: set[fx.Node] = set()
    found: list[tuple[fx.Node, tuple[int, ...]]] = []
    with torch.no_grad():
        for node in module.graph.nodes:
            if node.op == "output":
                return found
            values = []
            for run, image in zip(runs, inputs, strict=True):
                try:
                    value = image if node.op == "placeholder" else run.run_node(node)
                except Exception as exc:
                    value = exc
                run.env[node] = value
                values.append(value)
            *singles, batched = values
            if any(isinstance(value, Exception) for value in singles):
                raise ModelError(f"the converted graph fails on one image at node {node.name!r}: {singles[0]}.")
            fed = node.op == "placeholder" or any(arg in per_image for arg in node.all_input_nodes)
            if fed and all(torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == 1 for v in singles):
                per_image.add(node)
                expected = torch.cat(singles)
                if _close(batched, expected):
                    continue
                split = tuple(i for i, arg in enumerate(node.args) if isinstance(arg, fx.Node) and arg in per_image)
                if node.op != "call_module" or not split:
                    break
                found.append((node, split))
                runs[-1].env[node] = expected
            elif isinstance(batched, Exception):
                break
    raise _NoBatch(
        f"the converted graph only runs one image at a time (node {node.name!r} fails on a batch). " + BATCH_ONE_HINT
    )


class _NoBatch(ModelError):
    """No node-by-node repair makes the graph take a batch."""


def _ensure_batches(module: fx.GraphModule, found: GraphInput) -> tuple[list[str], int | None]:
    """Make a batch give each image's own result. Returns the nodes now run per image (usually none) and
    the largest batch the graph takes (None: any; 1 when no repair works: the run then goes image by image)."""
    height, width = found.size or (224, 224)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, height, width, generator=generator) for _ in range(2)]
    if _batches_like_singles(module, images) in (True, None):  # None: trace_layers reports the failure
        return [], None
    try:
        nodes = _unbatched_nodes(module, images)
    except _NoBatch:
        nodes = []
    for node, split in nodes:
        parent, _, leaf = str(node.target).rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        setattr(owner, leaf, PerImage(module.get_submodule(str(node.target)), split))
    if not nodes or not _batches_like_singles(module, images):
        warnings.warn(
            "the ONNX graph only works on one image at a time (a fixed batch of 1 that could not "
            "be repaired node by node); running with batch size 1, which is slower. Re-export it with a dynamic "
            "batch dimension for full speed: torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}).",
            GradcamWarning,
            stacklevel=2,
        )
        return [str(node.target) for node, _ in nodes], 1
    names = [str(node.target) for node, _ in nodes]
    message = (
        f"the ONNX graph has a fixed batch size of 1; {len(names)} node(s) run once per image "
        f"({', '.join(names[:3])}{' ...' if len(names) > 3 else ''}). Re-export with a dynamic batch dimension "
        "for full speed."
    )
    warnings.warn(message, GradcamWarning, stacklevel=2)
    return names, None


def load_onnx(path: Path, input_layout: str = "auto") -> tuple[nn.Module, dict[str, Any]]:
    """Convert the ONNX model in `path` to a module taking NCHW images and returning logits, plus what was
    done to it (for the manifest)."""
    model = read_graph(path)
    opset = _opsets(model).get("", 0)
    found = graph_input(model, input_layout, path)
    _fold_constant_identities(model)
    removed = _strip_softmax(model)
    if found.layout == "nhwc":
        _insert_transpose(model, found)
    model, converted_to = _supported_graph(model, path)
    module = _convert(model, path).eval()  # BatchNorm and Dropout in inference mode before the batch check
    module.requires_grad_(False)
    per_image, max_batch = _ensure_batches(module, found)
    description = {
        "input_layout": found.layout,
        "input_layout_detected": found.detected,
        "input_shape": _shape_text(found.shape),
        "softmax_removed": removed is not None,
        "opset": opset,
        "opset_converted_to": converted_to,
        "per_image_nodes": per_image,
        "max_batch": max_batch,
    }
    return module, description


def build(config: ModelConfig) -> Built:
    """The converted graph, and what was done to it (for the manifest)."""
    assert config.onnx is not None
    module, adapted = load_onnx(config.onnx, config.input_layout)
    return Built(module, checkpoint_sha256=file_sha256(config.onnx), description=adapted)


def preprocessing(config: ModelConfig) -> dict[str, Any]:
    """A graph with a fixed input size sets preprocess.size."""
    size = graph_input_size(config.onnx, config.input_layout) if config.onnx is not None else None
    return {"size": size} if size is not None and min(size) >= 8 else {}
