"""Faithfulness metrics: does the model's confidence depend on the pixels a CAM points at?

Each metric perturbs the model input guided by the CAM (at the model input size, in [0, 1]) and reads
the softmax probability of the explained class on the perturbed inputs:

- `deletion` / `insertion` (RISE, Petsiuk et al. 2018): pixels ranked by the CAM (ties in raster order)
  are replaced by zeros of the normalised input (the mean colour), or revealed over a blurred copy
  (Gaussian kernel 11, sigma 5, RISE's `gkern`), in `steps` equal steps; the area under the probability
  curve over the fraction perturbed (trapezoid rule), in [0, 1]. Deletion: lower is better; insertion:
  higher is better. The steps are torchcam 0.5's (ceil(HW / steps) pixels each, the last one shorter).
- `confidence_change` (pytorch-grad-cam's CamMultImageConfidenceChange): probability on the input
  multiplied by the CAM minus that on the input; the Grad-CAM++ paper's average drop and increase in
  confidence follow from it (the manifest's summary: io/metric_summary.py).
- `road_most` / `road_least` (ROAD, Rong et al. 2022, as pytorch-grad-cam 1.5.7): the pixels at or above
  a percentile of the CAM (most relevant first) or of 1 - CAM (least relevant first) are imputed by noisy
  linear imputation; the change of the probability, averaged over the percentiles. road_most: lower is
  better; road_least: higher is better.

Every perturbed input is one forward pass of one image: they are built and scored `chunk` at a time, so
memory holds one chunk of inputs whatever the batch; `CountedScore` counts them. Pure torch, no files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gradcam_cli.config import METRIC_HIGHER_IS_BETTER
from gradcam_cli.config import METRIC_NAMES as METRIC_NAMES  # kept in config.py, which must not import torch

# (inputs (N, 3, H, W), classes (N,)) -> the softmax probability of each row's class, (N,) float32
Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

HIGHER_IS_BETTER = METRIC_HIGHER_IS_BETTER
ROAD_PERCENTILES: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # pytorch-grad-cam's averages
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's insertion substrate
ROAD_NOISE = 0.01  # pytorch-grad-cam's NoisyLinearImputer default, in normalised input units
ROAD_SEED = 0  # the imputation noise is the same field for every image: metrics do not depend on the batch
JACOBI_DAMPING, COARSEST_SWEEPS, MAX_CG_ITERATIONS = 0.8, 30, 200  # ROAD's solver (see _harmonic_fill)
# ROAD's neighbour weights (pytorch-grad-cam / Rong et al.): 1/6 for the 4 edges, 1/12 for the 4 corners
_NEIGHBOURS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


@dataclass(frozen=True)
class MetricSettings:
    """Which metrics to compute and how (cam.metrics, cam.metric_steps, cam.road_percentiles, cam.chunk_size)."""

    names: tuple[str, ...]
    steps: int = 20
    percentiles: tuple[float, ...] = ROAD_PERCENTILES
    chunk: int = 64


class CountedScore:
    """A Score that counts its forward passes (one per input row)."""

    def __init__(self, score: Score) -> None:
        self.score = score
        self.passes = 0

    def __call__(self, inputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        self.passes += len(inputs)
        return self.score(inputs, classes).float()


@dataclass(frozen=True)
class Explained:
    """One row per explained class of every image: what every metric perturbs and compares with.

    `images` stay (B, 3, H, W); row r belongs to image `owner[r]`, so a top-k run holds each image once.
    """

    images: torch.Tensor  # (B, 3, H, W) normalised model input
    cams: torch.Tensor  # (R, H, W) in [0, 1] at the model input size
    classes: torch.Tensor  # (R,) explained class
    base: torch.Tensor  # (R,) its probability on the unperturbed input
    owner: torch.Tensor  # (R,) the image of each row

    @classmethod
    def of(cls, images: torch.Tensor, cams: torch.Tensor, classes: torch.Tensor, base: torch.Tensor) -> Explained:
        """From a batch's (B, K, H, W) cams, (B, K) classes and (B, K) base probabilities."""
        b, k = classes.shape
        owner = torch.arange(b, device=images.device).repeat_interleave(k)
        return cls(images, cams.reshape(b * k, *cams.shape[-2:]).float(), classes.reshape(-1), base.reshape(-1), owner)


def _scored(
    score: Score, count: int, build: Callable[[slice], tuple[torch.Tensor, torch.Tensor]], chunk: int
) -> torch.Tensor:
    """The probabilities of `count` perturbed inputs, built by `build(rows)` and scored `chunk` at a time."""
    parts = [score(*build(slice(start, min(start + chunk, count)))) for start in range(0, count, chunk)]
    return torch.cat(parts) if parts else torch.empty(0)


# ------------------------------------------------------------------------------------ deletion / insertion
def step_counts(pixels: int, steps: int) -> list[int]:
    """Pixels perturbed at each point of the curve: 0, s, 2s, ..., all, with s = ceil(pixels / steps)."""
    size = -(-pixels // steps)
    return [*range(0, pixels, size), pixels]


def rise_kernel(size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """RISE's `gkern`: scipy's gaussian_filter (truncate 4, mode 'reflect') of a centred delta, (size, size).

    The filter's radius (20 for sigma 5) exceeds the window, so the reflected tails fold back into it:
    not a plain truncated Gaussian, and we keep it so (the published protocol)."""
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    taps /= taps.sum()
    line = torch.zeros(size, dtype=torch.float64)
    for x in range(size):
        for offset, tap in zip(range(-radius, radius + 1), taps.tolist(), strict=True):
            folded = (x + offset) % (2 * size)
            folded = 2 * size - 1 - folded if folded >= size else folded  # scipy 'reflect': d c b a | a b c d
            if folded == size // 2:
                line[x] += tap
    return torch.outer(line, line).float()


def blurred(images: torch.Tensor) -> torch.Tensor:
    """RISE's insertion substrate: each channel convolved with `rise_kernel`, zero padding (as RISE)."""
    channels = images.shape[1]
    kernel = rise_kernel().to(images.device, images.dtype).expand(channels, 1, -1, -1)
    return F.conv2d(images, kernel, padding=BLUR_KERNEL // 2, groups=channels)


def _causal(score: Score, x: Explained, substrate: torch.Tensor, steps: int, chunk: int, reveal: bool) -> torch.Tensor:
    """Area under the probability curve as the top-ranked pixels move from the image to the substrate
    (deletion) or from the substrate to the image (reveal: insertion); (R,) in [0, 1]."""
    rows, (height, width) = len(x.classes), x.cams.shape[-2:]
    pixels = height * width
    counts = step_counts(pixels, steps)
    order = torch.argsort(x.cams.flatten(1), dim=1, descending=True, stable=True)
    ranks = torch.argsort(order, dim=1).to(torch.int32)  # rank of each pixel; 0 is the hottest
    known = len(counts) - 1 if reveal else 0  # the point that is the plain image: its probability is `base`
    points = [j for j in range(len(counts)) if j != known]
    job_rows = torch.arange(rows, device=x.cams.device).repeat_interleave(len(points))
    job_points = torch.tensor(points, device=x.cams.device).repeat(rows)
    count_of = torch.tensor(counts, device=x.cams.device, dtype=torch.int32)

    def build(jobs: slice) -> tuple[torch.Tensor, torch.Tensor]:
        r = job_rows[jobs]
        moved = ranks[r] < count_of[job_points[jobs], None]  # (n, HW): the pixels already perturbed
        image = moved if reveal else ~moved
        owner = x.owner[r]
        inputs = torch.where(image.view(-1, 1, height, width), x.images[owner], substrate[owner])
        return inputs, x.classes[r]

    curve = x.base[:, None].repeat(1, len(counts)).float()
    curve[job_rows, job_points] = _scored(score, len(job_rows), build, chunk).to(curve.device)
    fractions = count_of.float() / pixels
    return torch.trapezoid(curve, fractions, dim=1)


def deletion(score: Score, x: Explained, steps: int = 20, chunk: int = 64) -> torch.Tensor:
    """RISE deletion AUC per row: the most relevant pixels first replaced by the mean colour (lower: better)."""
    return _causal(score, x, torch.zeros_like(x.images), steps, chunk, reveal=False)


def insertion(score: Score, x: Explained, steps: int = 20, chunk: int = 64) -> torch.Tensor:
    """RISE insertion AUC per row: the most relevant pixels first revealed over a blurred copy (higher: better)."""
    return _causal(score, x, blurred(x.images), steps, chunk, reveal=True)


# ------------------------------------------------------------------------------------ confidence change
def confidence_change(score: Score, x: Explained, chunk: int = 64) -> torch.Tensor:
    """Probability on the input multiplied by its CAM minus that on the input, per row (higher: better)."""

    def build(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return x.images[x.owner[rows]] * x.cams[rows, None], x.classes[rows]

    return _scored(score, len(x.classes), build, chunk).to(x.base.device) - x.base.float()


# ------------------------------------------------------------------------------------ ROAD
def _neighbour_mean_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of the 8 neighbours with ROAD's weights (1/6 edges, 1/12 corners), zero outside the image:
    the kernel [[1, 2, 1], [2, 0, 2], [1, 2, 1]] / 12 as two [1, 2, 1] passes minus the centre, which is
    several times faster than a one-channel conv2d on CPUs."""
    padded = F.pad(values, (1, 1, 1, 1))
    rows = padded[..., :-2, :] + 2 * padded[..., 1:-1, :] + padded[..., 2:, :]
    both = rows[..., :-2] + 2 * rows[..., 1:-1] + rows[..., 2:]
    return (both - 4 * values) / 12


class _Grid:
    """One level of the imputation's system: its removed pixels (`missing`, (N, C, H, W), 1 or 0) and each
    pixel's neighbour weight sum (1 inside, less at the border)."""

    def __init__(self, missing: torch.Tensor) -> None:
        self.missing = missing
        self.weights = _neighbour_mean_sum(torch.ones(1, 1, *missing.shape[-2:], device=missing.device))

    def apply(self, values: torch.Tensor) -> torch.Tensor:  # the system's matrix, on the removed pixels only
        return self.missing * (self.weights * values - _neighbour_mean_sum(self.missing * values))

    def smooth(self, rhs: torch.Tensor, values: torch.Tensor, sweeps: int) -> torch.Tensor:
        for _ in range(sweeps):  # damped Jacobi
            values = values + JACOBI_DAMPING * self.missing * (rhs - self.apply(values)) / self.weights
        return values


def _v_cycle(grids: list[_Grid], residual: torch.Tensor, depth: int = 0) -> torch.Tensor:
    """An approximate inverse of the system (a symmetric V-cycle: the same Jacobi sweep before and after
    the coarse correction, 2x2 sums down and the transposed copy up), CG's preconditioner."""
    grid = grids[depth]
    values = JACOBI_DAMPING * grid.missing * residual / grid.weights  # one sweep from zero
    if depth == len(grids) - 1:
        return grid.smooth(residual, values, COARSEST_SWEEPS - 1)
    left = grid.missing * (residual - grid.apply(values))
    coarse = _v_cycle(grids, F.avg_pool2d(left, 2, ceil_mode=True, divisor_override=1), depth + 1)
    height, width = residual.shape[-2:]
    values = values + grid.missing * F.interpolate(coarse, scale_factor=2, mode="nearest")[..., :height, :width]
    return grid.smooth(residual, values, 1)


def _harmonic_fill(images: torch.Tensor, known: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The removed pixels (known == 0) solved as the weighted mean of their neighbours, the kept ones as
    they are: a conjugate gradient per (row, channel), preconditioned by a multigrid V-cycle (a coarse
    pixel is unknown when any of its 4 is), so it converges in 10-20 iterations at 224x224 where a
    Jacobi-preconditioned one needed hundreds. (N, C, H, W) float32."""
    missing = 1.0 - known
    grids = [_Grid(missing)]
    while min(grids[-1].missing.shape[-2:]) > 8:
        grids.append(_Grid(F.max_pool2d(grids[-1].missing, 2, ceil_mode=True)))
    fine = grids[0]

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=(2, 3), keepdim=True)

    rhs = missing * _neighbour_mean_sum(images * known)
    solution = torch.zeros_like(images)
    residual = rhs
    preconditioned = _v_cycle(grids, residual)
    direction = preconditioned
    rz = dot(residual, preconditioned)
    target = tolerance * dot(rhs, rhs).sqrt().clamp(min=1e-12)
    active = torch.ones_like(rz, dtype=torch.bool)
    for _ in range(MAX_CG_ITERATIONS):
        # each (row, channel) stops on its own, so a row's pixels do not depend on the rows beside it
        active &= dot(residual, residual).sqrt() > target
        if not bool(active.any()):
            break
        product = fine.apply(direction)
        curvature = dot(direction, product)
        alpha = torch.where(active & (curvature > 0), rz / curvature.clamp(min=1e-30), torch.zeros_like(rz))
        solution = solution + alpha * direction
        residual = residual - alpha * product
        preconditioned = _v_cycle(grids, residual)
        rz_next = dot(residual, preconditioned)
        beta = torch.where(rz > 0, rz_next / rz.clamp(min=1e-30), torch.zeros_like(rz))
        direction = preconditioned + beta * direction
        rz = rz_next
    return images * known + missing * solution


def noisy_linear_imputation(
    images: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor | None = None, tolerance: float = 1e-4
) -> torch.Tensor:
    """ROAD's imputation: every pixel not in `keep` (N, H, W) becomes the weighted mean of its 8 neighbours
    (1/6 edges, 1/12 corners, renormalised at the border), solved jointly for all removed pixels, plus
    `noise` ((N or 1), 3, H, W) on them. pytorch-grad-cam solves the sparse system with scipy's spsolve
    per image; here a multigrid-preconditioned conjugate gradient solves it batched on the device (the system is
    positive definite whenever any pixel is kept; with none kept, the mean colour plus noise)."""
    known = keep[:, None].float().expand(-1, images.shape[1], -1, -1)
    filled = _harmonic_fill(images.float(), known.contiguous(), tolerance)
    if noise is not None:
        filled = filled + (1.0 - known) * noise.to(images.device, torch.float32)
    return filled


def _road(score: Score, x: Explained, percentiles: tuple[float, ...], chunk: int, most: bool) -> torch.Tensor:
    """Mean over percentiles of the probability change when the pixels at or above the percentile of the
    CAM (most relevant first) or of 1 - CAM (least relevant first) are imputed; (R,)."""
    rows, (height, width) = len(x.classes), x.cams.shape[-2:]
    ranking = x.cams if most else 1 - x.cams
    quantiles = torch.tensor([p / 100 for p in percentiles], device=x.cams.device, dtype=torch.float32)
    thresholds = torch.quantile(ranking.flatten(1), quantiles, dim=1).T  # (R, P), numpy's linear rule
    generator = torch.Generator().manual_seed(ROAD_SEED)
    noise = ROAD_NOISE * torch.randn(len(percentiles), 3, height, width, generator=generator)
    noise = noise.to(x.images.device)
    job_rows = torch.arange(rows, device=x.cams.device).repeat_interleave(len(percentiles))
    job_levels = torch.arange(len(percentiles), device=x.cams.device).repeat(rows)

    def build(jobs: slice) -> tuple[torch.Tensor, torch.Tensor]:
        r, level = job_rows[jobs], job_levels[jobs]
        keep = ranking[r] < thresholds[r, level][:, None, None]  # as the reference: strictly below is kept
        return noisy_linear_imputation(x.images[x.owner[r]], keep, noise[level]), x.classes[r]

    probabilities = _scored(score, len(job_rows), build, chunk).to(x.base.device).view(rows, len(percentiles))
    return (probabilities - x.base.float()[:, None]).mean(dim=1)


def road_most(
    score: Score, x: Explained, percentiles: tuple[float, ...] = ROAD_PERCENTILES, chunk: int = 64
) -> torch.Tensor:
    """ROAD, most relevant first: probability change with the top pixels imputed (lower: better)."""
    return _road(score, x, percentiles, chunk, most=True)


def road_least(
    score: Score, x: Explained, percentiles: tuple[float, ...] = ROAD_PERCENTILES, chunk: int = 64
) -> torch.Tensor:
    """ROAD, least relevant first: probability change with the bottom pixels imputed (higher: better)."""
    return _road(score, x, percentiles, chunk, most=False)


# ------------------------------------------------------------------------------------ all of them
def compute(score: Score, x: Explained, settings: MetricSettings) -> dict[str, torch.Tensor]:
    """The metrics `settings` names, each (R,) float32, in the order given."""
    run: dict[str, Callable[[], torch.Tensor]] = {
        "deletion": lambda: deletion(score, x, settings.steps, settings.chunk),
        "insertion": lambda: insertion(score, x, settings.steps, settings.chunk),
        "confidence_change": lambda: confidence_change(score, x, settings.chunk),
        "road_most": lambda: road_most(score, x, settings.percentiles, settings.chunk),
        "road_least": lambda: road_least(score, x, settings.percentiles, settings.chunk),
    }
    return {name: run[name]().float() for name in settings.names}


def passes_per_cam(settings: MetricSettings, pixels: int) -> dict[str, int]:
    """Extra forward passes (one image each) per explained class, per metric, at `pixels` input pixels."""
    points = len(step_counts(pixels, settings.steps))
    per = {
        "deletion": points - 1,
        "insertion": points - 1,
        "confidence_change": 1,
        "road_most": len(settings.percentiles),
        "road_least": len(settings.percentiles),
    }
    return {name: per[name] for name in settings.names}


def finite_or_none(value: float) -> float | None:
    """A record's metric value: rounded like the scores, None when not finite (JSON has no NaN)."""
    return round(value, 6) if math.isfinite(value) else None
