"""The model sources, in one registry: how each builds its module and what preprocessing it knows.

`model:` names exactly one source (config.MODEL_SOURCES); adding a source is one `from_*` module and one
entry below. Optional libraries (timm, onnx) are imported by their builders, when used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradcam_cli.models.from_factory as from_factory
import gradcam_cli.models.from_onnx as from_onnx
import gradcam_cli.models.from_timm as from_timm
import gradcam_cli.models.from_torchvision as from_torchvision
from gradcam_cli.config import MODEL_SOURCES, Config, ModelConfig
from gradcam_cli.models.built import Built


@dataclass(frozen=True)
class ModelSource:
    build: Callable[[ModelConfig], Built]  # the module with its weights in
    preprocessing: Callable[[ModelConfig], dict[str, Any]] | None = None  # size/mean/std from the source's metadata
    # Whether that preprocessing fills the config's unset preprocess keys when a config is loaded (timm and
    # ONNX); torchvision's is offered by `gradcam init`, which writes it into the config it makes.
    fills_defaults: bool = False


SOURCES: dict[str, ModelSource] = {
    "torchvision": ModelSource(from_torchvision.build, from_torchvision.preprocessing),
    "timm": ModelSource(from_timm.build, from_timm.preprocessing, fills_defaults=True),
    "factory": ModelSource(from_factory.build),
    "pickled": ModelSource(from_factory.build_pickled),
    "onnx": ModelSource(from_onnx.build, from_onnx.preprocessing, fills_defaults=True),
}
assert tuple(SOURCES) == MODEL_SOURCES, "config.MODEL_SOURCES and the registry must name the same sources"


def describe(config: ModelConfig) -> str:
    """`torchvision:resnet50`, `factory:/abs/net.py:build` ...: the source as the manifest names it."""
    return f"{config.source}:{getattr(config, config.source)}"


def with_source_defaults(config: Config) -> Config:
    """Preprocessing the model source knows (timm's pretrained config, an ONNX graph's fixed input size)
    for the preprocess keys the config leaves unset; keys set in the config win."""
    source = SOURCES[config.model.source]
    if not source.fills_defaults or source.preprocessing is None:
        return config
    chosen = config.preprocess.model_fields_set
    update = {key: value for key, value in source.preprocessing(config.model).items() if key not in chosen}
    if not update:
        return config
    return config.model_copy(update={"preprocess": config.preprocess.model_copy(update=update)})
