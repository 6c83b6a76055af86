"""The model to explain: one module per source (torchvision, timm, factory/pickled, ONNX) in a registry,
checkpoints, target-layer tracing and choice, BatchNorm folding."""

from gradcam_cli.models.batchnorm import fuse_conv_batchnorm
from gradcam_cli.models.layers import LayerInfo, auto_layer, resolve_target_layers, score_reader, trace_layers
from gradcam_cli.models.loading import LoadedModel, load_model

__all__ = [
    "LayerInfo",
    "LoadedModel",
    "auto_layer",
    "fuse_conv_batchnorm",
    "load_model",
    "resolve_target_layers",
    "score_reader",
    "trace_layers",
]
