"""BatchNorm folding: a speed-up that must leave the scores (and so the heatmaps) unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def fuse_conv_batchnorm(
    module: nn.Module,
    example: torch.Tensor,
    keep: list[nn.Module],
    read_scores: Callable[[Any], torch.Tensor] = lambda output: output,
) -> int:
    """Fold each eval-mode BatchNorm2d into the Conv2d that directly feeds it; returns how many.

    Pairs are found by one traced forward (the BN's input is the conv's output tensor). A conv that is
    itself a target layer keeps its pre-BN output and is not fused. The fused model must reproduce the
    original scores on `example`, otherwise every change is undone: fusion is only a speed-up.
    """
    conv_outputs: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    protected = {id(m) for m in keep}

    def after_conv(conv: nn.Module, inputs: Any, output: Any) -> None:
        if torch.is_tensor(output) and id(conv) not in protected:
            conv_outputs[id(output)] = (conv, output)

    def after_bn(bn: nn.Module, inputs: Any, output: Any) -> None:
        found = conv_outputs.get(id(inputs[0])) if inputs else None
        if found is not None and found[1] is inputs[0] and bn.track_running_stats:
            pairs.append((found[0], bn))

    handles = [
        m.register_forward_hook(after_conv if isinstance(m, nn.Conv2d) else after_bn)
        for m in module.modules()
        if type(m) in (nn.Conv2d, nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            expected = read_scores(module(example))
    finally:
        for handle in handles:
            handle.remove()
    conv_outputs.clear()
    if not pairs or not torch.is_tensor(expected):
        return 0
    uses = {id(conv) for conv, _ in pairs}
    if len(uses) != len(pairs):  # a conv feeding two BNs cannot be folded
        return 0
    parents = {id(child): (parent, name) for parent in module.modules() for name, child in parent.named_children()}
    saved = [
        (conv, conv.weight.detach().clone(), None if conv.bias is None else conv.bias.detach().clone(), bn)
        for conv, bn in pairs
    ]
    with torch.no_grad():
        for conv, bn in pairs:
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            parent, name = parents[id(bn)]
            setattr(parent, name, nn.Identity())
        actual = read_scores(module(example))
    tolerance = 1e-3 * float(expected.abs().max()) + 1e-5
    if torch.is_tensor(actual) and float((actual - expected).abs().max()) <= tolerance:
        return len(pairs)
    with torch.no_grad():  # undo: restore weights, biases and the BatchNorm modules
        for conv, weight, bias, bn in saved:
            conv.weight.copy_(weight)
            conv.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
            parent, name = parents[id(bn)]
            setattr(parent, name, bn)
    return 0
