"""CAM methods: each is its weighting rule, returning weighted activations (B, C, h, w).

The engine turns them into a map, by a sum over channels or (eigen methods, `cam.eigen_smooth`) by the
first principal component, then does ReLU, resizing and normalisation for all. Formulas follow
pytorch-grad-cam 1.5.7 (README "Methods"). Methods that need extra forward passes (scorecam,
ablationcam) get them, batched and chunked, from the engine through `CamInputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CamInputs:
    """What a rule may use for one target layer and one explained class per image."""

    activations: torch.Tensor  # (B, C, h, w) float32
    gradients: torch.Tensor | None  # (B, C, h, w) float32, for gradient methods
    images: torch.Tensor  # (B, 3, H, W) the model input
    classes: torch.Tensor  # (B,) the explained class of each image
    base_scores: torch.Tensor  # (B,) the explained class's score on the unmodified input
    score_inputs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, classes) -> scores
    score_replaced: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (acts, inputs, classes)
    chunk: int  # rows per extra forward pass
    track: Callable[[Iterable[int], str], Iterable[int]] = lambda steps, label: steps  # progress for slow work


Rule = Callable[[CamInputs], torch.Tensor]


@dataclass(frozen=True)
class CamMethod:
    name: str
    rule: Rule
    needs_gradients: bool = True
    projection: bool = False  # reduce by the first principal component instead of a channel sum
    passes: str = "1 forward + partial backward"


METHODS: dict[str, CamMethod] = {}


def register(name: str, **options: object) -> Callable[[Rule], Rule]:
    def add(rule: Rule) -> Rule:
        METHODS[name] = CamMethod(name, rule, **options)  # type: ignore[arg-type]
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
def gradcam(x: CamInputs) -> torch.Tensor:
    return x.gradients.mean(dim=(2, 3), keepdim=True) * x.activations


@register("gradcam++")
def gradcam_plus_plus(x: CamInputs) -> torch.Tensor:
    a, g = x.activations, x.gradients
    g2 = g.pow(2)
    alpha = g2 / (2 * g2 + _spatial_sum(a) * g2 * g + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return _spatial_sum(g.clamp(min=0) * alpha) * a


@register("xgradcam")
def xgradcam(x: CamInputs) -> torch.Tensor:
    a, g = x.activations, x.gradients
    return _spatial_sum(g * a) / (_spatial_sum(a) + 1e-7) * a


@register("hirescam")
def hirescam(x: CamInputs) -> torch.Tensor:
    return x.gradients * x.activations


@register("gradcam-elementwise")
def gradcam_elementwise(x: CamInputs) -> torch.Tensor:
    return (x.gradients * x.activations).clamp(min=0)


@register("layercam")
def layercam(x: CamInputs) -> torch.Tensor:
    return x.gradients.clamp(min=0) * x.activations


@register("eigencam", needs_gradients=False, projection=True, passes="1 forward")
def eigencam(x: CamInputs) -> torch.Tensor:
    return x.activations


@register("eigengradcam", projection=True)
def eigengradcam(x: CamInputs) -> torch.Tensor:
    return x.gradients * x.activations


def _channel_passes(x: CamInputs, label: str, score_chunk: Callable[[int, slice], torch.Tensor]) -> torch.Tensor:
    """(B, C) scores of one extra forward pass per image and channel, `x.chunk` channels at a time."""
    b, c = x.activations.shape[:2]
    scores = torch.empty(b, c, device=x.activations.device)
    for i in range(b):
        steps = x.track(range(0, c, x.chunk), f"{label} image {i + 1}/{b}")
        scores[i] = torch.cat([score_chunk(i, slice(s, min(s + x.chunk, c))).float() for s in steps])
    return scores


@register("scorecam", needs_gradients=False, passes="1 + C forwards per image (C channels)")
def scorecam(x: CamInputs) -> torch.Tensor:
    """Weights: softmax over channels of the score of the input masked by each (min-maxed) channel."""

    def masked_scores(i: int, channels: slice) -> torch.Tensor:
        masks = F.interpolate(
            x.activations[i, channels, None], size=x.images.shape[-2:], mode="bilinear", align_corners=True
        )
        low = masks.amin(dim=(2, 3), keepdim=True)
        masks = (masks - low) / (masks.amax(dim=(2, 3), keepdim=True) - low + 1e-8)  # (n, 1, H, W)
        return x.score_inputs(x.images[i : i + 1] * masks, x.classes[i].expand(len(masks)))

    weights = torch.softmax(_channel_passes(x, "scorecam", masked_scores), dim=1)
    return weights[:, :, None, None] * x.activations


@register("ablationcam", needs_gradients=False, passes="1 + C forwards per image (C channels)")
def ablationcam(x: CamInputs) -> torch.Tensor:
    """Weights: relative drop of the score when each channel of the activation is zeroed."""
    a = x.activations

    def ablated_scores(i: int, channels: slice) -> torch.Tensor:
        count = channels.stop - channels.start
        ablated = a[i].expand(count, -1, -1, -1).clone()
        ablated[torch.arange(count), torch.arange(channels.start, channels.stop)] = 0
        rows = x.images[i : i + 1].expand(count, -1, -1, -1)
        return x.score_replaced(ablated, rows, x.classes[i].expand(count))

    scores = _channel_passes(x, "ablationcam", ablated_scores)
    base = x.base_scores.float()[:, None]
    safe = torch.where(base.abs() < 1e-6, torch.full_like(base, 1e-6).copysign(base), base)  # s0 ~ 0
    return ((base - scores) / safe)[:, :, None, None] * a
