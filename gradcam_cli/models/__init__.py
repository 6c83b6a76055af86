"""The model to explain: one module per source (torchvision, timm, factory/pickled, ONNX) in a registry,
checkpoints, target-layer tracing and choice, BatchNorm folding.

The names below are imported on first use (PEP 562), so `gradcam_cli.models.sources` can be read without
importing torch (a rerun with nothing to do never loads it)."""

import importlib
from typing import Any

_HOMES = {
    "fuse_conv_batchnorm": "gradcam_cli.models.batchnorm",
    "LayerInfo": "gradcam_cli.models.layers",
    "auto_layer": "gradcam_cli.models.layers",
    "resolve_target_layers": "gradcam_cli.models.layers",
    "score_reader": "gradcam_cli.models.layers",
    "trace_layers": "gradcam_cli.models.layers",
    "LoadedModel": "gradcam_cli.models.loading",
    "load_model": "gradcam_cli.models.loading",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'gradcam_cli.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
