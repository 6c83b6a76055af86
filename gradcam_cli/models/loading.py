"""Building the model to explain: its source, weights and labels, frozen and in eval mode.

Checkpoints are loaded without unpickling code (`weights_only=True`, or safetensors) unless the config
opts in with `model.allow_pickle`. Parameters are frozen: the engine differentiates only with respect to
the target layer's activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from gradcam_cli.config import ModelConfig
from gradcam_cli.io.labels import label_names
from gradcam_cli.models.sources import SOURCES, describe


@dataclass
class LoadedModel:
    module: nn.Module
    labels: list[str] | None  # None: class indices are the only names
    description: dict[str, Any]  # for the manifest: source, weights, checkpoint sha256


def read_labels(config: ModelConfig, categories: list[str] | None) -> list[str] | None:
    """Class names: inline, from a text or JSON file, from the weights' metadata, or none."""
    labels = config.labels
    if isinstance(labels, list):
        return [str(label) for label in labels]
    if labels == "none":
        return None
    if labels == "from-weights":
        return categories
    return label_names(Path(labels))


def load_model(config: ModelConfig) -> LoadedModel:
    """Build the module through its source, freeze parameters, switch to eval mode, read the labels."""
    built = SOURCES[config.source].build(config)
    built.module.eval()
    built.module.requires_grad_(False)
    description = {"source": describe(config), "weights": config.weights, "checkpoint_sha256": built.checkpoint_sha256}
    return LoadedModel(built.module, read_labels(config, built.categories), description | built.description)
