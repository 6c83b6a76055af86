"""What a model source hands the loader: the bare module and what only the source knows about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class Built:
    """A module with its weights in (not yet frozen), before labels are read."""

    module: nn.Module
    checkpoint_sha256: str | None = None  # the file its weights came from (checkpoint, pickle or ONNX graph)
    categories: list[str] | None = None  # class names the weights carry (torchvision's metadata)
    description: dict[str, Any] = field(default_factory=dict)  # extra manifest fields (ONNX adaptations)
