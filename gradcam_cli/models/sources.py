"""The model sources, in one registry: how each builds its module and what preprocessing it knows.

`model:` names exactly one source (config.MODEL_SOURCES); adding a source is one `from_*` module and one
entry below. Optional libraries (timm, onnx) are imported by their builders, when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradcam_cli.config import MODEL_SOURCES, Config, ModelConfig
from gradcam_cli.models.built import Built


@dataclass(frozen=True)
class ModelSource:
    """A source's module (imported when the source is used, so that reading the registry, and resuming a
    finished run, import no torch), its builder and its metadata preprocessing."""

    module: str  # gradcam_cli.models.from_...
    builder: str = "build"  # (ModelConfig) -> Built: the module with its weights in
    has_preprocessing: bool = False  # module.preprocessing(ModelConfig) -> {size, mean, std} from metadata
    # Whether that preprocessing fills the config's unset preprocess keys when a config is loaded (timm and
    # ONNX); torchvision's is offered by `gradcam init`, which writes it into the config it makes.
    fills_defaults: bool = False

    def build(self, config: ModelConfig) -> Built:
        return getattr(importlib.import_module(self.module), self.builder)(config)

    def preprocessing(self, config: ModelConfig) -> dict[str, Any]:
        if not self.has_preprocessing:
            return {}
        found: Callable[[ModelConfig], dict[str, Any]] = importlib.import_module(self.module).preprocessing
        return found(config)


SOURCES: dict[str, ModelSource] = {
    "torchvision": ModelSource("gradcam_cli.models.from_torchvision", has_preprocessing=True),
    "timm": ModelSource("gradcam_cli.models.from_timm", has_preprocessing=True, fills_defaults=True),
    "factory": ModelSource("gradcam_cli.models.from_factory"),
    "pickled": ModelSource("gradcam_cli.models.from_factory", builder="build_pickled"),
    "onnx": ModelSource("gradcam_cli.models.from_onnx", has_preprocessing=True, fills_defaults=True),
}
assert tuple(SOURCES) == MODEL_SOURCES, "config.MODEL_SOURCES and the registry must name the same sources"


def describe(config: ModelConfig) -> str:
    """`torchvision:resnet50`, `factory:/abs/net.py:build` ...: the source as the manifest names it."""
    return f"{config.source}:{getattr(config, config.source)}"


def with_source_defaults(config: Config) -> Config:
    """Preprocessing the model source knows (timm's pretrained config, an ONNX graph's fixed input size)
    for the preprocess keys the config leaves unset; keys set in the config win."""
    source = SOURCES[config.model.source]
    if not source.fills_defaults:
        return config
    chosen = config.preprocess.model_fields_set
    update = {key: value for key, value in source.preprocessing(config.model).items() if key not in chosen}
    if not update:
        return config
    return config.model_copy(update={"preprocess": config.preprocess.model_copy(update=update)})
