"""What a model source hands the loader: the bare module and what only the source knows about it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradcam_cli.errors import GradcamWarning

if TYPE_CHECKING:
    from torch import nn


@dataclass
class Built:
    """A module with its weights in (not yet frozen), before labels are read."""

    module: nn.Module
    checkpoint_sha256: str | None = None  # the file its weights came from (checkpoint, pickle or ONNX graph)
    categories: list[str] | None = None  # class names the weights carry (torchvision's metadata)
    description: dict[str, Any] = field(default_factory=dict)  # extra manifest fields (ONNX adaptations)


def random_init(module: nn.Module, model: str, how_to_load: str) -> Built:
    """A model the config gave no weights: said once (it explains nothing about a trained model) and named
    `random-init` in the manifest, rather than run silently."""
    warnings.warn(
        f"model.weights is not set: {model} runs with random weights, so its explanations say nothing about a "
        f"trained model. Set model.weights to {how_to_load}.",
        GradcamWarning,
        stacklevel=3,
    )
    return Built(module, description={"weights": "random-init"})
