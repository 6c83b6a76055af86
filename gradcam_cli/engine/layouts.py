"""Activation layouts: turning a target layer's output into a (B, C, h, w) feature map.

CNNs give NCHW maps. Vision transformers give token sequences (B, N, C): the class token (and any
register or distillation tokens) are dropped and the N' patch tokens reshaped to the grid implied by
the input size (N' = gh * gw, gh / gw = H / W). Swin blocks in torchvision give NHWC maps, permuted to
channels first. `model.activation_layout`, `model.token_grid` and `model.skip_tokens` override the
automatic rule for models it cannot read.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Adapter = Callable[[torch.Tensor], torch.Tensor]
MAX_EXTRA_TOKENS = 8  # class + distillation + register tokens we are willing to infer


def token_grid(tokens: int, input_size: tuple[int, int]) -> tuple[int, int, int] | None:
    """(gh, gw, skipped) for `tokens` tokens: the fewest leading tokens dropped to leave a grid of the
    input's aspect ratio, or None."""
    height, width = input_size
    for skip in range(MAX_EXTRA_TOKENS + 1):
        count = tokens - skip
        if count <= 0:
            return None
        gh = max(1, round(math.sqrt(count * height / width)))
        if count % gh == 0 and abs(gh / (count // gh) - height / width) < 1e-6 * max(1, height / width) + 1e-9:
            return gh, count // gh, skip
    return None


def looks_nhwc(shape: tuple[int, ...], input_size: tuple[int, int]) -> bool:
    """(B, h, w, C) rather than (B, C, h, w): the middle dims divide the input evenly, the last does not."""
    _, d1, d2, d3 = shape
    height, width = input_size

    def stride_of(h: int, w: int) -> int | None:
        return height // h if height % h == 0 and width % w == 0 and height // h == width // w else None

    return stride_of(d1, d2) is not None and stride_of(d2, d3) is None and d3 > d1


def describe_layout(
    shape: tuple[int, ...] | None,
    input_size: tuple[int, int],
    layout: str = "auto",
    grid: tuple[int, int] | None = None,
    skip_tokens: int | None = None,
) -> tuple[str, Adapter] | None:
    """The layout name and adapter for an activation of `shape`, or None if it is not a usable map."""
    if shape is None:
        return None
    if layout == "auto":
        if len(shape) == 3:
            layout = "tokens"
        elif len(shape) == 4:
            layout = "nhwc" if looks_nhwc(shape, input_size) else "nchw"
        else:
            return None
    if layout == "nchw" and len(shape) == 4 and shape[2] * shape[3] > 1:
        return "nchw", identity
    if layout == "nhwc" and len(shape) == 4 and shape[1] * shape[2] > 1:
        return "nhwc", _channels_first
    if layout == "tokens" and len(shape) == 3:
        tokens = shape[1]
        if grid is not None:
            gh, gw = grid
            skip = tokens - gh * gw if skip_tokens is None else skip_tokens
        else:
            found = token_grid(tokens - (skip_tokens or 0), input_size)
            if found is None:
                return None
            gh, gw, extra = found
            skip = (skip_tokens or 0) + extra
        if skip < 0 or tokens - skip != gh * gw or gh * gw <= 1:
            return None
        return f"tokens (drop {skip}, grid {gh}x{gw})", _tokens_to_grid(skip, gh, gw)
    return None


def identity(activation: torch.Tensor) -> torch.Tensor:
    return activation


def _channels_first(activation: torch.Tensor) -> torch.Tensor:
    return activation.permute(0, 3, 1, 2)


def _tokens_to_grid(skip: int, gh: int, gw: int) -> Adapter:
    def adapt(activation: torch.Tensor) -> torch.Tensor:
        patches = activation[:, skip:, :]
        return patches.reshape(activation.shape[0], gh, gw, activation.shape[2]).permute(0, 3, 1, 2)

    return adapt
