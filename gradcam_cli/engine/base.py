"""The batched CAM engine: hooks scoped to a `with` block, one forward, gradients only to the activation.

The (first) target layer's output is detached and made a leaf that requires grad, so nothing before it
builds a graph and `torch.autograd.grad(score, activation)` touches only the layers after it;
parameters are frozen by the model loader. The network continues on a clone of that leaf, so an in-place
op right after the target layer (ReLU(inplace=True)) cannot change the activation we keep.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradcam_cli.engine import metrics as faithfulness
from gradcam_cli.engine.layouts import identity
from gradcam_cli.engine.methods import CamInputs, CamMethod, first_component
from gradcam_cli.errors import ModelError

NORM_EPS = 1e-7  # as the reference: (cam - min) / (max + 1e-7)
# fp16 has no loss scaler here: the score is scaled before the backward and the gradients after it, so small
# gradients survive fp16's range; a CAM whose gradients still underflow is flagged `underflow`, never blank.
FP16_GRADIENT_SCALE = 2.0**12
Combination = tuple[str, tuple[int, ...]]  # explain_each's keys: (method name, target layer indices averaged)


@dataclass(frozen=True)
class TargetSpec:
    """Which classes to explain for each image: its top prediction, its top k, or fixed class indices."""

    mode: Literal["top1", "topk", "fixed"] = "top1"
    k: int = 1
    classes: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        return len(self.classes) if self.mode == "fixed" else (1 if self.mode == "top1" else self.k)


@dataclass
class HostCams:
    """A CamBatch's figures on the host, from one device-to-host copy (`CamBatch.host`)."""

    probabilities: np.ndarray  # (B, N) float32
    class_indices: np.ndarray  # (B, K) int64
    raw_max: np.ndarray  # (B, K) float32
    quality: list[list[str]]  # (B, K)
    cams: np.ndarray | None  # (B, K, H, W) float32, unless left on the device
    raw: np.ndarray | None  # (B, K, h, w) float32, when asked for
    metrics: dict[str, np.ndarray] | None = None  # cam.metrics: name -> (B, K) float32


@dataclass
class CamBatch:
    """Engine output for one batch of B images and K targets each (all tensors on the model's device)."""

    probabilities: torch.Tensor  # (B, N) softmax of the scores, float32
    class_indices: torch.Tensor  # (B, K) explained classes in rank order
    cams: torch.Tensor  # (B, K, H, W) normalised to [0, 1] at the model input size, float32
    raw_max: torch.Tensor  # (B, K) maximum of the raw (ReLU'd, not normalised) map, mean over layers
    raw: torch.Tensor  # (B, K, h, w) raw map of the first target layer at feature resolution
    raw_min: torch.Tensor  # (B, K) minimum of the raw map, mean over layers
    nonfinite: torch.Tensor  # (B, K) bool: the raw map had NaN or Inf
    underflow: torch.Tensor | None = None  # (B, K) bool: fp16 gradients all zero
    metrics: dict[str, torch.Tensor] | None = None  # cam.metrics: name -> (B, K) float32 (engine/metrics.py)
    metric_passes: int = 0  # extra forward passes (one image each) the metrics ran

    def host(self, cams: bool = True, raw: bool = False) -> HostCams:
        """Everything the records and render jobs need, in one device-to-host copy: the tensors are packed
        into one float32 buffer on the device (class indices are exact in float32 below 2**24), so a GPU
        run syncs once per batch, not once per figure or per image."""
        b, k = self.class_indices.shape
        if self.probabilities.shape[1] >= 2**24:
            raise ValueError("more classes than float32 counts exactly")
        flags = self.underflow if self.underflow is not None else torch.zeros_like(self.nonfinite)
        parts = [self.probabilities, self.class_indices, self.raw_max, self.raw_min, self.nonfinite, flags]
        parts += ([self.cams] if cams else []) + ([self.raw] if raw else [])
        metric_names = list(self.metrics or {})
        parts += [self.metrics[name] for name in metric_names]  # type: ignore[index]
        packed = _to_host(torch.cat([part.detach().reshape(-1).float() for part in parts]))
        arrays, start = [], 0
        for part in parts:
            arrays.append(packed[start : start + part.numel()].reshape(part.shape))
            start += part.numel()
        probabilities, classes, top, bottom, bad, lost = arrays[:6]
        rest = iter(arrays[6 : len(arrays) - len(metric_names)])
        metric_values = arrays[len(arrays) - len(metric_names) :]
        return HostCams(
            probabilities=probabilities,
            class_indices=classes.astype(np.int64),
            raw_max=top,
            quality=_quality(top, bottom, bad > 0, lost > 0),
            cams=next(rest) if cams else None,
            raw=next(rest) if raw else None,
            metrics=dict(zip(metric_names, metric_values, strict=True)) if self.metrics is not None else None,
        )

    @property
    def quality(self) -> list[list[str]]:
        """(B, K) ok | empty | flat | nonfinite | underflow (fp16 gradients all zero)."""
        return self.host(cams=False).quality


def _to_host(tensor: torch.Tensor) -> np.ndarray:
    """One copy to the host; from a GPU into pinned memory (PyTorch caches those buffers), which copies at
    about twice the bandwidth of pageable memory: a batch of 256 CAMs at 224x224 is 50 MB per class."""
    if tensor.device.type != "cuda":
        return tensor.cpu().numpy()
    pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    pinned.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()  # the copy is done before anyone reads it
    return pinned.numpy()


def default_to_spatial(activation: torch.Tensor) -> torch.Tensor:
    """Activations must be (B, C, h, w) feature maps."""
    if activation.dim() != 4:
        raise ModelError(
            f"the target layer's output has shape {tuple(activation.shape)}, not a (batch, channels, height, "
            "width) feature map; choose a convolutional layer (see `gradcam layers`)"
        )
    return activation


def _channel_sum(weighted: torch.Tensor) -> torch.Tensor:
    return weighted.sum(dim=1)


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Per-map (last two dims) min-max to [0, 1]; an all-zero map stays zero."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    shifted = maps - low
    return shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + NORM_EPS)


def _quality(raw_max: np.ndarray, raw_min: np.ndarray, nonfinite: np.ndarray, underflow: np.ndarray) -> list[list[str]]:
    flags: list[list[str]] = []
    rows = zip(raw_max.tolist(), raw_min.tolist(), nonfinite.tolist(), underflow.tolist(), strict=True)
    for bmax, bmin, bbad, blost in rows:
        row = []
        for top, bottom, bad, gone in zip(bmax, bmin, bbad, blost, strict=True):
            if bad:
                row.append("nonfinite")
            elif gone:
                row.append("underflow")
            elif top <= 0:
                row.append("empty")
            elif top - bottom <= 1e-6 * top:
                row.append("flat")
            else:
                row.append("ok")
        flags.append(row)
    return flags


class CamEngine:
    """Computes CAMs for batches of preprocessed images; use inside `with` so hooks never outlive it."""

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        method: CamMethod,
        score_fn: Callable[[Any], torch.Tensor] | None = None,
        precision: str = "fp32",
        to_spatial: Callable[[torch.Tensor], torch.Tensor] | Sequence[Callable[[torch.Tensor], torch.Tensor]] = (
            default_to_spatial
        ),
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
        chunk: int = 64,
        calls: Sequence[int] | None = None,
        metrics: faithfulness.MetricSettings | None = None,
    ) -> None:
        self.model = model
        self.target_layers = list(target_layers)
        self.method = method
        self.score_fn = score_fn or (lambda output: output)
        self.precision = precision
        # One adapter per target layer: activation layout -> (B, C, h, w) (engine/layouts.py).
        self.adapters = list(to_spatial) if isinstance(to_spatial, Sequence) else [to_spatial] * len(target_layers)
        self.eigen_smooth = eigen_smooth
        self.aug_smooth = aug_smooth
        self.chunk = chunk
        # Times each target module runs per forward: a module called at the stem and at the head (a shared
        # activation) is explained at its last call, by every method, hooks and replacements alike.
        self.calls = list(calls) if calls is not None else [1] * len(self.target_layers)
        self._seen: list[int] = [0] * len(self.target_layers)
        self._underflow: torch.Tensor | None = None  # (B, K): fp16 gradients that were all zero
        self.metrics = metrics if metrics is not None and metrics.names else None
        self.show_progress = False  # a progress bar for methods with many extra passes
        self._muted = False  # the metrics' forward passes keep no activations
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._activations: dict[int, torch.Tensor] = {}

    def __enter__(self) -> CamEngine:
        for index, layer in enumerate(self.target_layers):
            self._handles.append(layer.register_forward_hook(self._capture(index)))
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for handle in self._handles:
                handle.remove()
        finally:
            self._handles.clear()
            self._activations.clear()

    def _is_last_call(self, index: int) -> bool:
        """Counts a call of target layer `index`; whether it is the call of the forward that is explained."""
        self._seen[index] += 1
        return self._seen[index] >= self.calls[index]

    def _new_forward(self) -> None:
        self._seen = [0] * len(self.target_layers)

    def _capture(self, index: int) -> Callable[..., torch.Tensor | None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> torch.Tensor | None:
            if self._muted or not self._is_last_call(index):
                return None  # an earlier call of a shared module: it runs as usual
            if not torch.is_tensor(output):
                raise ModelError(
                    f"target layer {type(module).__name__} returns {type(output).__name__}, not a tensor; "
                    "choose a layer that outputs a feature map (see `gradcam layers`)"
                )
            if not torch.is_grad_enabled():
                # kept as the gradient path keeps it: the network goes on with a clone, so an in-place op after
                # the target layer (ReLU(inplace=True)) cannot change the map, with gradients or without
                self._activations[index] = output.detach()
                return output.detach().clone()
            # The first target layer in forward order starts the graph; a later one already descends from
            # it and must stay connected, so it is kept as it is.
            activation = output if output.requires_grad else output.detach().requires_grad_(True)
            self._activations[index] = activation
            return activation.clone()

        return hook

    def _autocast(self, device_type: str) -> contextlib.AbstractContextManager[Any]:
        if self.precision in ("fp32", "tf32"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=device_type, dtype=dtype)

    def scores(self, output: Any) -> torch.Tensor:
        logits = self.score_fn(output)
        if not torch.is_tensor(logits) or logits.dim() != 2:
            raise ModelError(
                "the model's scores must be a (batch, classes) tensor; set model.output to pick them "
                f"from what the model returns (got {describe_output(output)})"
            )
        return logits

    def explain(self, images: torch.Tensor, targets: TargetSpec) -> CamBatch:
        """CAMs for a batch of normalised images (B, 3, H, W) already on the model's device."""
        if not self._handles:
            raise RuntimeError("CamEngine.explain must run inside `with engine:`")
        try:
            logits, activations = self._forward(images)
            probabilities = torch.softmax(logits.detach().float(), dim=1)
            classes = self._select(probabilities, targets)
            maps = self._layer_maps(images, logits, activations, classes)
        finally:
            self._activations.clear()
        batch = self._normalise(maps, probabilities, classes, tuple(images.shape[-2:]), self._underflow)
        if self.aug_smooth:
            batch.cams = self._augmented(images, classes, batch.cams)
        if self.metrics is not None:
            batch.metrics, batch.metric_passes = self._faithfulness(images, batch, self.metrics)
        return batch

    def probabilities(self, inputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Softmax probability of `classes` (N,) on `inputs`, no graph, fp32 also under bf16/fp16 (as the
        score methods' extra passes), with the target layer hooks muted: a metric's forward pass."""
        self._muted = True
        try:
            with torch.no_grad():
                logits = self.scores(self.model(inputs))
        finally:
            self._muted = False
        return torch.softmax(logits.float(), dim=1).gather(1, classes[:, None])[:, 0]

    def _faithfulness(
        self, images: torch.Tensor, batch: CamBatch, settings: faithfulness.MetricSettings
    ) -> tuple[dict[str, torch.Tensor], int]:
        """cam.metrics on this batch's CAMs: name -> (B, K), and the forward passes they took."""
        score = faithfulness.CountedScore(self.probabilities)
        b, k = batch.class_indices.shape
        if self.precision in ("fp32", "tf32"):
            base = batch.probabilities.gather(1, batch.class_indices)
        else:  # the metrics' passes run in fp32: so does the probability they start from
            base = torch.stack([score(images, batch.class_indices[:, j]) for j in range(k)], dim=1)
        explained = faithfulness.Explained.of(images, batch.cams, batch.class_indices, base)
        values = faithfulness.compute(score, explained, settings)
        return {name: value.reshape(b, k) for name, value in values.items()}, score.passes

    def _forward(self, images: torch.Tensor, gradients: bool | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._new_forward()
        wanted = self.method.needs_gradients if gradients is None else gradients
        with torch.set_grad_enabled(wanted), self._autocast(images.device.type):
            logits = self.scores(self.model(images))
        missing = [i for i in range(len(self.target_layers)) if i not in self._activations]
        if missing:
            raise ModelError("a target layer was not called during the forward pass; choose another layer")
        return logits, [self._activations[i] for i in range(len(self.target_layers))]

    def _augmented(self, images: torch.Tensor, classes: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
        """aug_smooth: mean of the CAMs over horizontal flip x brightness {0.9, 1.0, 1.1}, each flipped back.

        Every augmentation explains the classes chosen on the plain input (the reference re-picks
        them per augmentation, so a flip could explain another class). No renormalisation after the mean.
        """
        key = (self.method.name, tuple(range(len(self.target_layers))))
        return self._augmented_each(images, classes, {key: plain}, [self.method], [key[1]])[key]

    def _augmented_each(
        self,
        images: torch.Tensor,
        classes: torch.Tensor,
        plain: dict[Combination, torch.Tensor],
        methods: Sequence[CamMethod],
        groups: Sequence[tuple[int, ...]],
    ) -> dict[Combination, torch.Tensor]:
        """`_augmented` for every (method, layer group) at once: one forward per augmentation feeds them all."""
        total = {key: cams.clone() for key, cams in plain.items()}
        for flip in (False, True):
            for factor in (0.9, 1.0, 1.1):
                if not flip and factor == 1.0:
                    continue  # the plain pass, already done
                augmented = (images.flip(-1) if flip else images) * factor
                gradients = any(method.needs_gradients for method in methods)
                try:
                    logits, activations = self._forward(augmented, gradients)
                    batches = self._combinations(
                        augmented, logits, logits.detach().float(), activations, classes, methods, groups
                    )
                finally:
                    self._activations.clear()
                for key, batch in batches.items():
                    total[key] += batch.cams.flip(-1) if flip else batch.cams
        return {key: cams / 6 for key, cams in total.items()}

    def explain_each(
        self,
        images: torch.Tensor,
        targets: TargetSpec,
        methods: Sequence[CamMethod],
        groups: Sequence[Sequence[int]] | None = None,
        metrics: faithfulness.MetricSettings | None = None,
    ) -> dict[Combination, CamBatch]:
        """`explain` for several methods and layer groups from one forward pass (`gradcam sweep`).

        One forward and one backward per explained class feed every gradient method on every hooked target
        layer; score methods (scorecam, ablationcam) still run their own extra passes. `groups` are tuples of
        target layer indices whose normalised maps are averaged, as `explain` averages all of them (default:
        each layer alone). Returns {(method name, group): CamBatch}, each as `explain` with that method and
        those layers would give it; `metrics` (default: the engine's) are computed on each one's CAMs.
        """
        if not self._handles:
            raise RuntimeError("CamEngine.explain_each must run inside `with engine:`")
        chosen = [tuple(group) for group in groups] if groups is not None else [(i,) for i in range(len(self.adapters))]
        try:
            logits, activations = self._forward(images, any(method.needs_gradients for method in methods))
            probabilities = torch.softmax(logits.detach().float(), dim=1)
            classes = self._select(probabilities, targets)
            batches = self._combinations(images, logits, probabilities, activations, classes, methods, chosen)
        finally:
            self._activations.clear()
        if self.aug_smooth:
            smoothed = self._augmented_each(images, classes, {k: b.cams for k, b in batches.items()}, methods, chosen)
            for key, batch in batches.items():
                batch.cams = smoothed[key]
        settings = metrics if metrics is not None else self.metrics
        if settings is not None and settings.names:
            for batch in batches.values():
                batch.metrics, batch.metric_passes = self._faithfulness(images, batch, settings)
        return batches

    def _combinations(
        self,
        images: torch.Tensor,
        logits: torch.Tensor,
        probabilities: torch.Tensor,
        activations: list[torch.Tensor],
        classes: torch.Tensor,
        methods: Sequence[CamMethod],
        groups: Sequence[tuple[int, ...]],
    ) -> dict[Combination, CamBatch]:
        maps = self._method_maps(images, logits, activations, classes, methods)
        size = tuple(images.shape[-2:])
        return {
            (method.name, group): self._normalise(
                [maps[method.name][i] for i in group],
                probabilities,
                classes,
                size,  # type: ignore[arg-type]
                self._underflow if method.needs_gradients else None,
            )
            for method in methods
            for group in groups
        }

    def restricted(self, layers: Sequence[int], method: CamMethod | None = None) -> CamEngine:
        """A new engine on the same model and settings with only target layers `layers` (indices) and
        `method`: what `explain` would compute with those alone (the sweep times each combination so)."""
        return CamEngine(
            self.model,
            [self.target_layers[i] for i in layers],
            method or self.method,
            self.score_fn,
            precision=self.precision,
            to_spatial=[self.adapters[i] for i in layers],
            eigen_smooth=self.eigen_smooth,
            aug_smooth=self.aug_smooth,
            chunk=self.chunk,
            calls=[self.calls[i] for i in layers],
            metrics=self.metrics,
        )

    def _track(self, steps: Iterable[int], label: str) -> Iterable[int]:
        if not self.show_progress:
            return steps
        from tqdm import tqdm

        return tqdm(steps, desc=label, leave=False, file=sys.stderr, unit="pass")

    def _score_inputs(self, inputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Scores of `classes` for extra forward passes (score-CAM masks, ablations), no graph, in fp32 also under
        bf16/fp16: these methods weigh channels by small differences between large scores, which half
        precision rounds away."""
        self._new_forward()
        with torch.no_grad():
            logits = self.scores(self.model(inputs))
        return logits.float().gather(1, classes[:, None])[:, 0]

    def _score_replaced(
        self, layer: int, activations: torch.Tensor, inputs: torch.Tensor, classes: torch.Tensor
    ) -> torch.Tensor:
        """Scores with the target layer's output replaced by `activations` (one row per input)."""
        if self.adapters[layer] not in (default_to_spatial, identity):
            raise ModelError("ablationcam needs a target layer with a (B, C, h, w) output, not tokens or NHWC")
        calls = {"seen": 0}

        def replace_last_call(module: nn.Module, args: Any, output: Any) -> Any:
            calls["seen"] += 1
            return activations.to(output.dtype) if calls["seen"] == self.calls[layer] else None

        handle = self.target_layers[layer].register_forward_hook(replace_last_call)
        try:
            return self._score_inputs(inputs, classes)
        finally:
            handle.remove()

    @staticmethod
    def _select(probabilities: torch.Tensor, targets: TargetSpec) -> torch.Tensor:
        batch, num_classes = probabilities.shape
        if targets.mode == "fixed":
            return torch.tensor(targets.classes, device=probabilities.device).expand(batch, -1)
        k = min(targets.count, num_classes)
        return probabilities.topk(k, dim=1).indices

    def _layer_maps(
        self, images: torch.Tensor, logits: torch.Tensor, activations: list[torch.Tensor], classes: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per target layer: the maps before ReLU, (B, K, h, w), one per explained class."""
        return self._method_maps(images, logits, activations, classes, [self.method])[self.method.name]

    def _method_maps(
        self,
        images: torch.Tensor,
        logits: torch.Tensor,
        activations: list[torch.Tensor],
        classes: torch.Tensor,
        methods: Sequence[CamMethod],
    ) -> dict[str, list[torch.Tensor]]:
        """Per method, per target layer: the maps before ReLU, (B, K, h, w). One backward per explained class
        gives every layer its gradient, and every method weighs the same activations and gradients."""
        spatial = [adapt(a).float() for adapt, a in zip(self.adapters, activations, strict=True)]
        base_scores = logits.detach().float().gather(1, classes)
        count = classes.shape[1]
        half = self.precision in ("bf16", "fp16")
        needs_gradients = any(method.needs_gradients for method in methods)
        if half and not all(method.needs_gradients for method in methods):
            # the score methods compare with fp32 extra passes: fp32 here too (gradient methods ignore it)
            base_scores = torch.stack([self._score_inputs(images, classes[:, k]) for k in range(count)], dim=1)
        scale = FP16_GRADIENT_SCALE if self.precision == "fp16" else 1.0
        self._underflow = torch.zeros(classes.shape, dtype=torch.bool, device=classes.device)
        per_method: dict[str, list[list[torch.Tensor]]] = {m.name: [[] for _ in activations] for m in methods}
        for k in range(count):
            shared: list[torch.Tensor] = []
            if needs_gradients:
                # Images are independent, so one backward of the summed scores gives every image its gradient.
                score = logits.gather(1, classes[:, k : k + 1]).sum() * scale
                found = torch.autograd.grad(score, activations, retain_graph=k < count - 1, allow_unused=True)
                if any(g is None for g in found):
                    raise ModelError("the class scores do not depend on the target layer; choose an earlier layer")
                shared = [adapt(g).float() / scale for adapt, g in zip(self.adapters, found, strict=True)]
                if self.precision == "fp16":
                    self._underflow[:, k] = torch.stack([(g == 0).flatten(1).all(dim=1) for g in shared]).all(0)
            for method in methods:
                gradients = shared if method.needs_gradients else [None] * len(activations)
                for layer, (activation, gradient) in enumerate(zip(spatial, gradients, strict=True)):
                    inputs = CamInputs(
                        activations=activation,
                        gradients=gradient,
                        images=images,
                        classes=classes[:, k],
                        base_scores=base_scores[:, k],
                        score_inputs=self._score_inputs,
                        score_replaced=functools.partial(self._score_replaced, layer),
                        chunk=self.chunk,
                        track=self._track,
                    )
                    weighted = method.rule(inputs)
                    reduce = first_component if (method.projection or self.eigen_smooth) else _channel_sum
                    per_method[method.name][layer].append(reduce(weighted))
        return {name: [torch.stack(maps, dim=1) for maps in layers] for name, layers in per_method.items()}

    @staticmethod
    def _normalise(
        maps: list[torch.Tensor],
        probabilities: torch.Tensor,
        classes: torch.Tensor,
        size: tuple[int, int],
        underflow: torch.Tensor | None = None,
    ) -> CamBatch:
        with torch.no_grad():
            nonfinite = torch.zeros(classes.shape, dtype=torch.bool, device=classes.device)
            resized, raw_max, raw_min = [], [], []
            for layer_map in maps:
                layer_map = layer_map.detach()
                nonfinite |= ~torch.isfinite(layer_map).all(dim=-1).all(dim=-1)
                cam = torch.nan_to_num(layer_map, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
                raw_max.append(cam.amax(dim=(-2, -1)))
                raw_min.append(cam.amin(dim=(-2, -1)))
                b, k, h, w = cam.shape
                scaled = F.interpolate(
                    min_max(cam).reshape(b * k, 1, h, w), size=size, mode="bilinear", align_corners=False
                )
                resized.append(scaled.reshape(b, k, *size))
            cams = min_max(torch.stack(resized).mean(dim=0))
            top = torch.stack(raw_max).mean(dim=0)
            bottom = torch.stack(raw_min).mean(dim=0)
            first = torch.nan_to_num(maps[0].detach(), nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
        return CamBatch(
            probabilities=probabilities,
            class_indices=classes,
            cams=cams,
            raw_max=top,
            raw=first,
            raw_min=bottom,
            nonfinite=nonfinite,
            underflow=underflow,
        )


def describe_output(output: Any) -> str:
    """A short description of what a model returned, for error messages."""
    if torch.is_tensor(output):
        return f"tensor of shape {tuple(output.shape)}"
    if isinstance(output, dict):
        return "dict with keys " + ", ".join(repr(k) for k in list(output)[:10])
    if isinstance(output, (tuple, list)):
        return f"{type(output).__name__} of {len(output)}: " + ", ".join(describe_output(o) for o in output[:5])
    fields = [name for name in dir(output) if not name.startswith("_")][:10]
    return f"{type(output).__name__} with attributes " + ", ".join(fields)
