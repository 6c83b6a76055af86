"""Building the model to explain: source, weights, labels, target layers and how to read its scores.

Checkpoints are loaded without unpickling code (`weights_only=True`, or safetensors) unless the config
opts in with `model.allow_pickle`. Parameters are frozen: the engine differentiates only with respect to
the target layer's activation.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradcam_cli.config import ModelConfig, did_you_mean, looks_like_path
from gradcam_cli.engine.base import describe_output
from gradcam_cli.engine.layouts import describe_layout
from gradcam_cli.errors import ConfigError, ModelError


@dataclass
class LoadedModel:
    module: nn.Module
    labels: list[str] | None  # None: class indices are the only names
    description: dict[str, Any]  # for the manifest: source, weights, checkpoint sha256


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ConfigError(f"model.factory file not found: {path}.")
            module_name = f"_gradcam_factory_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
            spec_obj = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec_obj)  # type: ignore[arg-type]
            sys.modules[module_name] = module
            spec_obj.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except ImportError as exc:
        raise ConfigError(f"model.factory: cannot import {target!r}: {exc}.") from None
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(f"model.factory: importing {target!r} failed: {type(exc).__name__}: {exc}.") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"model.factory: {target!r} has no callable named {name!r}.")
    return factory


def _torchvision_weights(name: str, weights: str) -> Any:
    from torchvision import models

    try:
        enum = models.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    try:
        return enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError:
        choices = ["DEFAULT", *enum.__members__]
        raise ConfigError(
            f"model.weights: {weights!r} is not a weights name for {name}; valid: {', '.join(choices)}, "
            "or a path to a checkpoint file."
        ) from None


def _download_state_dict(weights: Any) -> dict[str, torch.Tensor]:
    """torchvision weights through torch's own download cache; offline, say what to do instead."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # urllib/network errors come in many types
        raise ModelError(
            f"cannot load torchvision weights {weights}: the file {cache} is not cached and downloading "
            f"{weights.url} failed ({type(exc).__name__}: {exc}). Download it once on a machine with "
            f"internet access and copy it to {cache}, or save a state_dict and set model.weights to its path."
        ) from None


def _build(config: ModelConfig) -> tuple[nn.Module, Any]:
    """The bare module plus the torchvision weights enum (if any), before loading checkpoint files."""
    if config.pickled is not None:
        return _load_pickled(config.pickled), None
    if config.torchvision is not None:
        from torchvision import models

        available = models.list_models()
        if config.torchvision not in available:
            raise ConfigError(
                f"model.torchvision: unknown model {config.torchvision!r}"
                f"{did_you_mean(config.torchvision, available, n=3, cutoff=0.5)}."
            )
        enum_weights = None
        if config.weights is not None and not looks_like_path(config.weights):
            enum_weights = _torchvision_weights(config.torchvision, config.weights)
        try:
            module = models.get_model(config.torchvision, weights=None, **config.kwargs)
        except TypeError as exc:
            raise ConfigError(f"model.kwargs for {config.torchvision}: {exc}.") from None
        return module, enum_weights
    if config.timm is not None:
        return _build_timm(config), None
    factory = _import_factory(config.factory or "")
    try:
        module = factory(**config.kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.factory {config.factory}: {exc} (check model.kwargs).") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model.factory {config.factory} returned {type(module).__name__}, not a torch module.")
    return module, None


def _build_timm(config: ModelConfig) -> nn.Module:
    """A timm model (architecture only; weights come from model.weights or timm's pretrained download)."""
    import timm  # the config loader has checked it is installed

    pretrained = config.weights in ("pretrained", "DEFAULT")
    try:
        return timm.create_model(config.timm, pretrained=pretrained, **config.kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.kwargs for timm model {config.timm}: {exc}.") from None
    except Exception as exc:  # network and hub errors come in many types
        if not pretrained:
            raise
        raise ModelError(
            f"cannot load timm's pretrained weights for {config.timm} ({type(exc).__name__}: {exc}). Offline, "
            "save a state_dict on a machine that has them and set model.weights to its path."
        ) from None


def _load_pickled(path: Path) -> nn.Module:
    if not path.is_file():
        raise ConfigError(f"model.pickled: file not found: {path}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"model.pickled: cannot load {path}: {type(exc).__name__}: {exc}.") from None
    if not isinstance(obj, nn.Module):
        raise ConfigError(f"model.pickled: {path} holds a {type(obj).__name__}, not a torch module.")
    return obj


def read_checkpoint(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors or a torch file, unwrapping {"state_dict"}/{"model"} and "module."."""
    if not path.is_file():
        raise ConfigError(f"model.weights: checkpoint file not found: {path}.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:
        hint = ""
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            hint = (
                " The file needs unpickling of arbitrary objects; if you trust it, set model.allow_pickle: "
                "true, or re-save it with torch.save(model.state_dict(), path)."
            )
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"cannot read checkpoint {path}: {type(exc).__name__}: {first_line}.{hint}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"checkpoint {path} does not hold a state_dict (a mapping of names to tensors).")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def load_state(module: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Strict load with a message that lists the first offending keys."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched[:5])}" + (" ..." if len(mismatched) > 5 else ""))
    if problems:
        raise ModelError(f"weights from {origin} do not fit the model: " + "; ".join(problems) + ".")
    module.load_state_dict(state, strict=True)


def _read_labels(config: ModelConfig, enum_weights: Any) -> list[str] | None:
    labels = config.labels
    if isinstance(labels, list):
        return [str(label) for label in labels]
    if labels == "none":
        return None
    if labels == "from-weights":
        categories = enum_weights.meta.get("categories") if enum_weights is not None else None
        return list(categories) if categories else None
    path = Path(labels)
    if not path.is_file():
        raise ConfigError(f"model.labels: file not found: {path}.")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model.labels: {path} is not valid JSON: {exc}.") from None
        if not isinstance(data, list):
            raise ConfigError(f"model.labels: {path} must hold a JSON list of class names.")
        return [str(item) for item in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_model(config: ModelConfig) -> LoadedModel:
    """Build the module, load weights safely, freeze parameters, switch to eval mode."""
    if config.onnx is not None:
        from gradcam_cli.onnx_model import load_onnx

        module, adapted = load_onnx(config.onnx, config.input_layout)
        module.eval()
        module.requires_grad_(False)
        description = {"source": f"onnx:{config.onnx}", "weights": None, "checkpoint_sha256": file_sha256(config.onnx)}
        return LoadedModel(module=module, labels=_read_labels(config, None), description=description | adapted)
    module, enum_weights = _build(config)
    description: dict[str, Any] = {
        "source": (
            f"torchvision:{config.torchvision}"
            if config.torchvision
            else f"timm:{config.timm}"
            if config.timm
            else f"factory:{config.factory}"
            if config.factory
            else f"pickled:{config.pickled}"
        ),
        "weights": config.weights,
        "checkpoint_sha256": None,
    }
    if config.pickled is not None:
        description["checkpoint_sha256"] = file_sha256(config.pickled)
    if enum_weights is not None:
        load_state(module, _download_state_dict(enum_weights), str(enum_weights))
    elif config.weights is not None and looks_like_path(config.weights):
        path = Path(config.weights)
        load_state(module, read_checkpoint(path, config.allow_pickle), str(path))
        description["checkpoint_sha256"] = file_sha256(path)
    elif config.weights is not None and config.timm is not None:
        pass  # "pretrained"/"DEFAULT": loaded by timm itself in _build_timm
    elif config.weights is not None and config.torchvision is None:
        raise ConfigError(
            f"model.weights: {config.weights!r} is not a file path; weights names only exist for torchvision "
            "models. Give the path of a .pt/.pth/.safetensors checkpoint."
        )
    module.eval()
    module.requires_grad_(False)
    return LoadedModel(module=module, labels=_read_labels(config, enum_weights), description=description)


def score_reader(selector: int | str | None) -> Callable[[Any], torch.Tensor]:
    """How to get the (B, classes) scores out of what the model returns (model.output)."""
    if selector is None:
        return lambda output: output

    def read(output: Any) -> torch.Tensor:
        try:
            if isinstance(selector, int):
                return output[selector]
            if isinstance(output, dict):
                return output[selector]
            return getattr(output, selector)
        except (KeyError, IndexError, AttributeError, TypeError):
            raise ModelError(
                f"model.output {selector!r} does not select anything from what the model returned "
                f"({describe_output(output)})."
            ) from None

    return read


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str
    shape: tuple[int, ...] | None
    layout: str | None  # how it becomes a (B, C, h, w) map (nchw, nhwc, tokens ...); None: not usable

    @property
    def spatial(self) -> bool:
        """Usable as a target layer: a feature map, NHWC map or token grid with more than one position."""
        return self.layout is not None


def trace_layers(module: nn.Module, example: torch.Tensor) -> tuple[list[LayerInfo], Any]:
    """One dry forward pass recording every named module's output shape, in call order (last call wins)."""
    order: dict[str, LayerInfo] = {}
    handles = []
    input_size = (int(example.shape[-2]), int(example.shape[-1]))

    def record(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            shape = tuple(output.shape) if torch.is_tensor(output) else None
            found = describe_layout(shape, input_size)
            order.pop(name, None)
            order[name] = LayerInfo(name, type(mod).__name__, shape, found[0] if found else None)

        return hook

    try:
        for name, sub in module.named_modules():
            if name:
                handles.append(sub.register_forward_hook(record(name)))
        with torch.no_grad():
            output = module(example)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"a test forward pass with an input of shape {tuple(example.shape)} failed: {type(exc).__name__}: "
            f"{exc}. Check preprocess.size and the model."
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    return list(order.values()), output


def auto_layer(layers: list[LayerInfo]) -> str | None:
    """The last usable layer in forward order. For token models, the last block's pre-attention norm
    (`ln_1`/`norm1`): after the final norm only the class token carries gradient, so maps would be empty."""
    usable = [info for info in layers if info.spatial]
    if not usable:
        return None
    last = usable[-1]
    if last.layout and last.layout.startswith("tokens"):
        pre_attention = [info for info in usable if info.name.rsplit(".", 1)[-1] in ("ln_1", "norm1")]
        if pre_attention:
            return pre_attention[-1].name
    return last.name


def resolve_target_layers(module: nn.Module, names: list[str], layers: list[LayerInfo]) -> list[tuple[str, nn.Module]]:
    """Target layers by dotted name, or `auto`: the last module whose output is a spatial feature map."""
    candidates = [info.name for info in layers if info.spatial]
    resolved = []
    for name in names:
        if name == "auto":
            name = auto_layer(layers) or ""
            if not name:
                raise ConfigError(
                    "model.target_layer: auto found no module with a spatial (batch, channels, h, w) output; "
                    "set model.target_layer to a dotted module name (see `gradcam layers`)."
                )
        try:
            resolved.append((name, module.get_submodule(name)))
        except AttributeError:
            shown = candidates[-12:]
            hint = did_you_mean(name, candidates, n=3, cutoff=0.5)
            raise ConfigError(
                f"model.target_layer: no module named {name!r}{hint}. Usable layers "
                f"(last {len(shown)} of {len(candidates)}): {', '.join(shown)}."
            ) from None
    return resolved


def fuse_conv_batchnorm(
    module: nn.Module,
    example: torch.Tensor,
    keep: list[nn.Module],
    read_scores: Callable[[Any], torch.Tensor] = lambda output: output,
) -> int:
    """Fold each eval-mode BatchNorm2d into the Conv2d that directly feeds it; returns how many.

    Pairs are found by one traced forward (the BN's input is the conv's output tensor). A conv that is
    itself a target layer keeps its pre-BN output and is not fused. The fused model must reproduce the
    original scores on `example`, otherwise every change is undone: fusion is only a speed-up.
    """
    conv_outputs: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    protected = {id(m) for m in keep}

    def after_conv(conv: nn.Module, inputs: Any, output: Any) -> None:
        if torch.is_tensor(output) and id(conv) not in protected:
            conv_outputs[id(output)] = (conv, output)

    def after_bn(bn: nn.Module, inputs: Any, output: Any) -> None:
        found = conv_outputs.get(id(inputs[0])) if inputs else None
        if found is not None and found[1] is inputs[0] and bn.track_running_stats:
            pairs.append((found[0], bn))

    handles = [
        m.register_forward_hook(after_conv if isinstance(m, nn.Conv2d) else after_bn)
        for m in module.modules()
        if type(m) in (nn.Conv2d, nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            expected = read_scores(module(example))
    finally:
        for handle in handles:
            handle.remove()
    conv_outputs.clear()
    if not pairs or not torch.is_tensor(expected):
        return 0
    uses = {id(conv) for conv, _ in pairs}
    if len(uses) != len(pairs):  # a conv feeding two BNs cannot be folded
        return 0
    parents = {id(child): (parent, name) for parent in module.modules() for name, child in parent.named_children()}
    saved = [
        (conv, conv.weight.detach().clone(), None if conv.bias is None else conv.bias.detach().clone(), bn)
        for conv, bn in pairs
    ]
    with torch.no_grad():
        for conv, bn in pairs:
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            parent, name = parents[id(bn)]
            setattr(parent, name, nn.Identity())
        actual = read_scores(module(example))
    tolerance = 1e-3 * float(expected.abs().max()) + 1e-5
    if torch.is_tensor(actual) and float((actual - expected).abs().max()) <= tolerance:
        return len(pairs)
    with torch.no_grad():  # undo: restore weights, biases and the BatchNorm modules
        for conv, weight, bias, bn in saved:
            conv.weight.copy_(weight)
            conv.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
            parent, name = parents[id(bn)]
            setattr(parent, name, bn)
    return 0
