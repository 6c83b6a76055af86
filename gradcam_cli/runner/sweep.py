"""`gradcam sweep` as a library call: every method x target layer on a sample, ranked by faithfulness metrics.

  check the request -> prepare (model; every target layer of the sweep hooked at once) -> the first N images
  -> per batch: one `CamEngine.explain_each` (one forward, one backward per explained class, every gradient
     method on every layer; score methods run their own passes) and the metrics of every combination's maps
  -> each combination timed alone on the first batch (img/s, extra forward passes per image)
  -> the ranking (reports/sweep.py)

Nothing is written here; the reports are written by the caller (reports/sweep.py `write_reports`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import torch

from gradcam_cli.config import Config, did_you_mean
from gradcam_cli.engine import METHODS, CamBatch, CamEngine, CamMethod, TargetSpec
from gradcam_cli.engine.metrics import HIGHER_IS_BETTER, METRIC_NAMES, MetricSettings, passes_per_cam
from gradcam_cli.errors import ConfigError
from gradcam_cli.io.discovery import check_inputs
from gradcam_cli.models.sources import with_source_defaults
from gradcam_cli.reports.sweep import Entry, Sweep, ranked, score_of
from gradcam_cli.runner.loader import normalise
from gradcam_cli.runner.prepare import NondeterministicOps, PreparedRun, prepare, split_cores
from gradcam_cli.runner.sample import load_sample

DEFAULT_METRICS: tuple[str, ...] = ("deletion", "insertion")
DEFAULT_LIMIT = 64
# per combination, on the first batch: at least 3 runs and 0.25 s (a 10 ms call timed 3 times is noise),
# at most 2 s
TIMING_REPEATS, TIMING_MIN_S, TIMING_BUDGET_S = 3, 0.25, 2.0
BLANK = ("empty", "flat", "nonfinite", "underflow")
# (paths of the batch, {(method, --layers entry): its CamBatch}): for measures beside the sweep's own
BatchObserver = Callable[[list[str], dict[tuple[str, str], CamBatch]], None]


@dataclass(frozen=True)
class SweepRequest:
    """What to sweep: method names, --layers entries ("auto", "layer3", "layer3+layer4": averaged), metrics."""

    methods: tuple[str, ...]
    layers: tuple[str, ...] = ()  # empty: the config's model.target_layer, as one entry
    metrics: tuple[str, ...] = DEFAULT_METRICS
    limit: int = DEFAULT_LIMIT
    metric_steps: int = 20
    examples: int = 4  # images whose maps the HTML page shows


def split_names(text: str | None) -> tuple[str, ...]:
    """A comma-separated option value as names, blanks dropped ("gradcam, layercam," -> 2 names)."""
    return tuple(name.strip() for name in (text or "").split(",") if name.strip())


def _check_names(kind: str, given: tuple[str, ...], known: list[str]) -> tuple[str, ...]:
    if not given:
        raise ConfigError(f"--{kind} is empty; give at least one name: {', '.join(known)}.")
    names = tuple(name.lower() for name in given)
    for original, name in zip(given, names, strict=True):
        if name not in known:
            raise ConfigError(
                f"--{kind}: unknown {kind[:-1]} {original!r}.{did_you_mean(original, known, sentence=True)} "
                f"Known: {', '.join(known)}."
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"--{kind}: {repeated[0]!r} is listed twice.")
    return names


def check_request(request: SweepRequest) -> SweepRequest:
    """Method and metric names checked (did-you-mean), lower-cased; a ConfigError (exit 2) before any work."""
    methods = _check_names("methods", request.methods, list(METHODS))
    metrics = _check_names("metrics", request.metrics, list(METRIC_NAMES))
    if any(not part.strip() for entry in request.layers for part in entry.split("+")):
        raise ConfigError(f"--layers: an empty name in {', '.join(request.layers)!r}; give names like layer3+layer4.")
    if request.limit < 1 or request.metric_steps < 2:
        raise ConfigError("--limit must be at least 1 and --metric-steps at least 2.")
    return SweepRequest(methods, request.layers, metrics, request.limit, request.metric_steps, request.examples)


def _layer_entries(config: Config, request: SweepRequest) -> list[tuple[str, ...]]:
    given = request.layers or ("+".join(config.model.target_layers),)
    return [tuple(part.strip() for part in entry.split("+")) for entry in given]


@dataclass
class _Tally:
    """What one combination collects over the batches."""

    values: dict[str, list[float]]
    scores: list[float]
    blank: int = 0
    examples: list[np.ndarray] | None = None


def run_sweep(
    config: Config,
    inputs: list[str],
    request: SweepRequest,
    stdin: TextIO | None = None,
    progress: Callable[[str], None] | None = None,
    on_batch: BatchObserver | None = None,
) -> Sweep:
    """Every method x --layers entry on the first `request.limit` images of `inputs`, ranked (reports/sweep.py);
    a GradcamError (exit 2) for a bad request, config, model or inputs. Writes nothing."""
    started = time.perf_counter()
    tell = progress or (lambda line: None)
    request = check_request(request)
    inputs = check_inputs(inputs)
    config = with_source_defaults(config)
    entries = _layer_entries(config, request)
    names = list(dict.fromkeys(name for entry in entries for name in entry))
    model_config = config.model.model_copy(update={"target_layer": names})
    try:  # every layer of the sweep hooked in one engine, so one forward serves them all
        prepared = prepare(config.model_copy(update={"model": model_config}))
    except ConfigError as error:
        raise ConfigError(str(error).replace("model.target_layer:", "--layers:", 1)) from None
    resolved = dict(zip(names, prepared.layer_names, strict=True))  # auto -> its pick
    distinct = list(dict.fromkeys(prepared.layer_names))
    engine = prepared.engine
    if len(distinct) < len(names):  # `auto` is also named: hook that module once
        engine = engine.restricted([prepared.layer_names.index(name) for name in distinct])
    groups: dict[str, tuple[int, ...]] = {}  # --layers label -> layer indices; the first label of a repeat wins
    for entry in entries:
        group = tuple(dict.fromkeys(distinct.index(resolved[name]) for name in entry))
        if group not in groups.values():
            groups["+".join(entry)] = group
    methods = [METHODS[name] for name in request.methods]
    settings = MetricSettings(request.metrics, request.metric_steps, chunk=config.cam.chunk_size)

    cores = split_cores(config.runtime.workers, config.runtime.render_workers, config.runtime.threads, prepared.device)
    torch.set_num_threads(cores.threads)
    sample = load_sample(config, inputs, stdin, cores.decode, request.limit)
    keys = [(method.name, label) for method in methods for label in groups]
    tallies = {key: _Tally({name: [] for name in settings.names}, []) for key in keys}
    batch_size = config.runtime.batch_size
    chunks = sample.pixels.split(batch_size)
    tell(f"{len(keys)} combinations ({len(methods)} methods x {len(groups)} layers) on {len(sample.paths)} images")
    with NondeterministicOps(), engine:
        for index, pixels in enumerate(chunks):
            images = normalise(pixels, config.preprocess, prepared.device)
            found = engine.explain_each(images, prepared.targets, methods, list(groups.values()), settings)
            by_label = {(name, label): found[(name, groups[label])] for name, label in keys}
            for key, batch in by_label.items():
                _collect(tallies[key], batch, settings, first=index == 0, examples=request.examples)
            if on_batch is not None:
                start = index * batch_size
                on_batch(sample.paths[start : start + len(pixels)], by_label)
            tell(f"batch {index + 1}/{len(chunks)}: {min((index + 1) * batch_size, len(sample.paths))} images")
    timed = _timed(engine, prepared, chunks[0], methods, groups)
    maps = len(tallies[keys[0]].scores)
    height, width = config.preprocess.size
    results = [
        Entry(
            method=name,
            layers=tuple(distinct[i] for i in groups[label]),
            given=label,
            metrics={metric: float(np.mean(values)) for metric, values in tallies[(name, label)].values.items()},
            scores=tuple(tallies[(name, label)].scores),
            images_per_second=timed[(name, label)][0],
            extra_passes=timed[(name, label)][1],
            blank=tallies[(name, label)].blank,
            example_maps=tuple(tallies[(name, label)].examples or ()),
        )
        for name, label in keys
    ]
    shown = min(request.examples, len(sample.paths))
    return Sweep(
        entries=ranked(results),
        metrics=settings.names,
        higher_is_better={name: HIGHER_IS_BETTER[name] for name in settings.names},
        metric_steps=settings.steps,
        images=len(sample.paths),
        maps=maps,
        metric_passes=float(sum(passes_per_cam(settings, height * width).values())),
        seconds=time.perf_counter() - started,
        model=dict(prepared.model.description, num_classes=prepared.num_classes),
        setting={
            "targets": _targets_text(prepared.targets),
            "device": str(prepared.device),
            "precision": config.runtime.precision,
            "batch_size": batch_size,
            "aug_smooth": config.cam.aug_smooth,
            "eigen_smooth": config.cam.eigen_smooth,
        },
        skipped=sample.skipped,
        example_paths=sample.paths[:shown],
        example_pixels=[np.ascontiguousarray(sample.pixels[i].permute(1, 2, 0).numpy()) for i in range(shown)],
    )


def _collect(tally: _Tally, batch: CamBatch, settings: MetricSettings, first: bool, examples: int) -> None:
    """One batch's maps of one combination: metric values and scores per map, blank maps, example maps."""
    assert batch.metrics is not None  # explain_each computed `settings`
    values = {name: batch.metrics[name].reshape(-1).tolist() for name in settings.names}
    for row in range(len(values[settings.names[0]])):
        per_map = {name: values[name][row] for name in settings.names}
        if all(np.isfinite(value) for value in per_map.values()):
            for name, value in per_map.items():
                tally.values[name].append(value)
            tally.scores.append(score_of(per_map, HIGHER_IS_BETTER))
    tally.blank += sum(flag in BLANK for row in batch.quality for flag in row)
    if first and examples:
        cams = batch.cams[:examples, 0].float().cpu().numpy()
        tally.examples = [np.round(cam * 255).astype(np.uint8) for cam in cams]


def _timed(
    engine: CamEngine,
    prepared: PreparedRun,
    pixels: torch.Tensor,
    methods: list[CamMethod],
    groups: dict[str, tuple[int, ...]],
) -> dict[tuple[str, str], tuple[float, float]]:
    """Each combination alone on the first batch, as `gradcam run` computes it (hooks on its layers only, its
    method, no metrics): (images per second, forward passes per image beyond the first)."""
    config = prepared.config
    images = normalise(pixels, config.preprocess, prepared.device)
    rows: list[int] = []
    counter = engine.model.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    found: dict[tuple[str, str], tuple[float, float]] = {}
    try:
        for method in methods:
            for label, group in groups.items():
                alone = engine.restricted(list(group), method)
                alone.metrics = None  # the cost of the explanation itself
                times: list[float] = []
                with NondeterministicOps(), alone:
                    # the fastest run: other load on the machine only ever slows a run down
                    while not times or (
                        (len(times) < TIMING_REPEATS or sum(times) < TIMING_MIN_S) and sum(times) < TIMING_BUDGET_S
                    ):
                        rows.clear()
                        _synchronise(prepared.device)
                        start = time.perf_counter()
                        alone.explain(images, prepared.targets)
                        _synchronise(prepared.device)
                        times.append(time.perf_counter() - start)
                found[(method.name, label)] = (len(images) / max(min(times), 1e-9), sum(rows) / len(images) - 1)
    finally:
        counter.remove()
    return found


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _targets_text(targets: TargetSpec) -> str:
    if targets.mode == "fixed":
        return "classes " + ", ".join(str(c) for c in targets.classes)
    return "top1" if targets.mode == "top1" else f"top{targets.k}"
