"""Small models for tests: a plain CNN (with an in-place ReLU right after the target conv), and wrappers
whose forward returns a tuple, a dict or an object, for `model.output`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),  # in-place right after the conv a test targets (features.3)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def build(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN(num_classes)


class TupleOutput(TinyCNN):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1), super().forward(x)


class DictOutput(TinyCNN):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": super().forward(x)}


@dataclass
class ModelOutput:
    logits: torch.Tensor


class ObjectOutput(TinyCNN):
    def forward(self, x: torch.Tensor) -> ModelOutput:  # like Hugging Face outputs
        return ModelOutput(super().forward(x))


def build_tuple(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return TupleOutput(num_classes)


def build_dict(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return DictOutput(num_classes)


def build_object(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return ObjectOutput(num_classes)


def not_a_module() -> str:
    return "nope"


class SlowCNN(TinyCNN):
    """Sleeps in every forward pass, so a test can interrupt a run mid-way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.3)
        return super().forward(x)


def build_slow(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return SlowCNN(num_classes)


def build_tiny_vit(num_classes: int = 3) -> nn.Module:
    """A two-layer ViT (64x64 input, 16x16 patches: a 4x4 token grid plus the class token)."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=num_classes
    )


class RaisingCNN(TinyCNN):
    """Traces and loads fine (batches of 1 and 2), then raises on a real batch: a broken model in production."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            raise RuntimeError("boom: this model fails on batches of more than 2")
        return super().forward(x)


def build_raising(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return RaisingCNN(num_classes)


class SharedActivation(nn.Module):
    """One ReLU module called three times per forward (stem, middle, head), as EfficientNet's `_swish`;
    with `distinct_last`, the head's call is its own module (same maths): the reference for tests."""

    def __init__(self, num_classes: int = 3, distinct_last: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.head_act = nn.ReLU() if distinct_last else self.act
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.head_act(self.conv3(x))
        return self.head(x.mean(dim=(2, 3)))


def build_shared_activation(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return SharedActivation(num_classes)


class NaNForBrightImages(TinyCNN):
    """Returns NaN scores for bright images (one bad image in a batch), finite ones otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        bright = x.mean(dim=(1, 2, 3), keepdim=False)[:, None] > 1.0
        return torch.where(bright, torch.full_like(logits, float("nan")), logits)


def build_nan_for_bright(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return NaNForBrightImages(num_classes)
