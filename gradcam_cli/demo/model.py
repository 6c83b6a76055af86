"""The small CNN behind the demo (weights: ``demo_cnn.safetensors``, classes: ``labels.txt``).

Layout, chosen for Grad-CAM: ``features`` (conv blocks, stride 8, so a 128x128 input gives a 16x16
map at the last block -- fine enough to localise objects of ~15% of the image side) followed by
``pool`` (global average pooling), ``flatten`` and a linear ``head``. Global average pooling right
after the last conv block is what makes Grad-CAM on ``features`` faithful to the classifier.

Input: RGB resized to 128x128 (bilinear), scaled to [0, 1] and normalised with the ImageNet
mean/std.
"""

from __future__ import annotations

import torch
from torch import nn

from gradcam_cli.demo.shapes import CLASSES

INPUT_SIZE = 128
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    # Out-of-place ReLU, PyTorch's default. In-place would work as well: the engine continues the forward on a
    # clone of the target layer's activation, so a later in-place op cannot change it.
    return [nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DemoCNN(nn.Module):
    """Three downsampling conv blocks, one full-resolution block at stride 8, GAP and a linear head.

    The early blocks are deliberately thin (a strided stem, one conv per block): they dominate the
    cost at 128x128, and the model has to train in minutes on two CPU cores. The last block stacks
    three convs at 16x16, where they are cheap, to give a receptive field larger than the objects.
    """

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(*_conv(3, 16, stride=2), *_conv(16, 32), nn.MaxPool2d(2)),  # 32x32
            nn.Sequential(*_conv(32, 64), nn.MaxPool2d(2)),  # 16x16
            nn.Sequential(*_conv(64, 96), *_conv(96, 96), *_conv(96, 96)),  # 16x16, the Grad-CAM target
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.pool(self.features(x))))


def build_demo_cnn(num_classes: int = len(CLASSES)) -> nn.Module:
    """Factory referenced by the demo config; returns an untrained :class:`DemoCNN`."""
    return DemoCNN(num_classes)
