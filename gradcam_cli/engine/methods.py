"""CAM methods: each is its weighting rule over activations A and gradients G, shaped (B, C, h, w).

A rule returns the map before the final ReLU, shaped (B, h, w); the engine does ReLU, resizing and
normalisation for all of them. Formulas follow pytorch-grad-cam (see README "Methods").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Rule = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class CamMethod:
    name: str
    rule: Rule
    needs_gradients: bool = True


METHODS: dict[str, CamMethod] = {}


def register(name: str, needs_gradients: bool = True) -> Callable[[Rule], Rule]:
    def add(rule: Rule) -> Rule:
        METHODS[name] = CamMethod(name, rule, needs_gradients)
        return rule

    return add


def _spatial_sum(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=(2, 3), keepdim=True)


def first_component(x: torch.Tensor) -> torch.Tensor:
    """Projection of each (C, h, w) map on its first principal component over positions: (B, h, w).

    The sign of a singular vector is arbitrary; we choose the one that makes the projection's
    largest-magnitude value positive, so the salient region survives the final ReLU.
    """
    b, c, h, w = x.shape
    points = torch.nan_to_num(x).reshape(b, c, h * w).transpose(1, 2)  # (B, hw, C)
    centred = points - points.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :, None])[..., 0]  # (B, hw)
    peak = projection.gather(1, projection.abs().argmax(dim=1, keepdim=True))
    return (projection * torch.where(peak < 0, -1.0, 1.0)).reshape(b, h, w)


@register("gradcam")
def gradcam(a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    weights = g.mean(dim=(2, 3), keepdim=True)
    return (weights * a).sum(dim=1)


@register("gradcam++")
def gradcam_plus_plus(a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    g2 = g.pow(2)
    alpha = g2 / (2 * g2 + _spatial_sum(a) * g2 * g + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    weights = _spatial_sum(g.clamp(min=0) * alpha)
    return (weights * a).sum(dim=1)


@register("xgradcam")
def xgradcam(a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    weights = _spatial_sum(g * a) / (_spatial_sum(a) + 1e-7)
    return (weights * a).sum(dim=1)


@register("hirescam")
def hirescam(a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    return (g * a).sum(dim=1)


@register("gradcam-elementwise")
def gradcam_elementwise(a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    return (g * a).clamp(min=0).sum(dim=1)


@register("layercam")
def layercam(a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    return (g.clamp(min=0) * a).sum(dim=1)


@register("eigencam", needs_gradients=False)
def eigencam(a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    return first_component(a)


@register("eigengradcam")
def eigengradcam(a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    return first_component(g * a)
