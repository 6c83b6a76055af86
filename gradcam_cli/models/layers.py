"""Target layers: trace a model's modules once, choose `auto`'s layer, resolve names, read its scores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradcam_cli.config import did_you_mean
from gradcam_cli.engine.base import describe_output
from gradcam_cli.engine.layouts import describe_layout
from gradcam_cli.errors import ConfigError, ModelError


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
    calls: int = 1  # times the module runs in one forward (a shared activation module runs several times)

    @property
    def spatial(self) -> bool:
        """Usable as a target layer: a feature map, NHWC map or token grid with more than one position."""
        return self.layout is not None


def trace_layers(module: nn.Module, example: torch.Tensor) -> tuple[list[LayerInfo], Any]:
    """One dry forward pass recording every named module's output shape and how often it runs, in call order
    (its last call's place and shape: the call a CAM of that module explains)."""
    order: dict[str, LayerInfo] = {}
    handles = []
    input_size = (int(example.shape[-2]), int(example.shape[-1]))

    def record(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            shape = tuple(output.shape) if torch.is_tensor(output) else None
            found = describe_layout(shape, input_size)
            calls = order.pop(name).calls + 1 if name in order else 1
            order[name] = LayerInfo(name, type(mod).__name__, shape, found[0] if found else None, calls)

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
    """The last usable layer in forward order, preferring modules that run once per forward (a shared
    activation module called at the stem and the head is a poor target: its calls share one name). For
    token models, the last block's pre-attention norm (`ln_1`/`norm1`): after the final norm only the class
    token carries gradient, so maps would be empty."""
    usable = [info for info in layers if info.spatial and info.calls == 1] or [info for info in layers if info.spatial]
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
