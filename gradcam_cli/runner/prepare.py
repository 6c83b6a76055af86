"""Everything a run needs built and validated before anything is written: device, model, layers, targets.

`prepare` returns a frozen `PreparedRun`; a problem is a GradcamError (exit 2) with nothing on disk.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from gradcam_cli.config import Config, did_you_mean
from gradcam_cli.engine import METHODS, CamEngine, TargetSpec
from gradcam_cli.engine.layouts import describe_layout
from gradcam_cli.engine.metrics import MetricSettings
from gradcam_cli.errors import ConfigError, GradcamWarning
from gradcam_cli.models.batchnorm import fuse_conv_batchnorm
from gradcam_cli.models.layers import resolve_target_layers, score_reader, trace_layers
from gradcam_cli.models.loading import LoadedModel, load_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device is {name!r} but CUDA is not available here; use cpu or auto.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("runtime.device is 'mps' but MPS is not available here; use cpu or auto.")
    return torch.device(name)


@dataclass(frozen=True)
class CoreSplit:
    """How the run shares the machine's cores: decode worker processes, render worker processes, and the
    torch threads of the process that runs the model (runtime.workers, render_workers, threads)."""

    decode: int
    render: int
    threads: int


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a container's or `taskset`'s share), not the
    host's count, which on a 192-core node would start hundreds of workers for a 16-core allotment."""
    try:
        return len(os.sched_getaffinity(0)) or 2
    except AttributeError:  # not on Linux
        return os.cpu_count() or 2


def split_cores(
    workers: str | int, render_workers: str | int, threads: str | int, device: torch.device, cores: int | None = None
) -> CoreSplit:
    """Each `auto` from the core count. On a CPU the model gets every core as torch threads, beside at least
    two render workers (a quarter of the cores from 8 up) and one decode worker per 4 cores; on a GPU host
    the model needs few CPU threads, decoding and rendering need many (benchmarks/RESULTS.md: the splits
    measured)."""
    cores = cores or usable_cores()
    if device.type == "cpu":  # 2 cores: 2 render workers beside 2 torch threads measured best at 0.3 and 12 MP
        auto = CoreSplit(decode=max(1, min(8, cores // 4)), render=max(min(2, cores), cores // 4), threads=cores)
    else:
        auto = CoreSplit(decode=max(1, min(16, cores // 3)), render=max(1, cores // 2), threads=max(1, cores // 6))
    return CoreSplit(
        decode=auto.decode if workers == "auto" else int(workers),
        render=auto.render if render_workers == "auto" else int(render_workers),
        threads=auto.threads if threads == "auto" else int(threads),
    )


def use_deterministic_algorithms(device: torch.device) -> None:
    """Same inputs, same config, same machine: byte-identical heatmaps (what `gradcam compare` relies on).

    warn_only: an op without a deterministic kernel warns instead of failing the run; the run records those
    ops (`NondeterministicOps`) in the manifest and says so once. CUBLAS_WORKSPACE_CONFIG is set when
    gradcam_cli is imported (gradcam_cli/__init__.py), before any GEMM.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


NONDETERMINISTIC = "does not have a deterministic implementation"


class NondeterministicOps:
    """Inside `with`: the ops torch reports as having no deterministic kernel (warn_only mode), collected in
    `ops` instead of printed at each call; every other warning goes on as before."""

    def __init__(self) -> None:
        self.ops: set[str] = set()
        self._context = warnings.catch_warnings()

    def __enter__(self) -> NondeterministicOps:
        self._context.__enter__()
        warnings.filterwarnings("always", message=f".*{NONDETERMINISTIC}.*")
        previous = warnings.showwarning

        def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            text = str(message)
            if NONDETERMINISTIC in text:
                self.ops.add(text.split(NONDETERMINISTIC)[0].strip().split()[-1])
            else:
                previous(message, category, *args, **kwargs)

        warnings.showwarning = show
        return self

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)


def use_precision(precision: str) -> None:
    """fp32 means fp32: TensorFloat-32 (on by default for cuDNN convolutions on Ampere and newer) would make
    GPU heatmaps differ from the CPU's. `tf32` opts in; bf16/fp16 autocast leave it off for their fp32 ops."""
    allow = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    torch.set_float32_matmul_precision("high" if allow else "highest")


def resolve_targets(config: Config, labels: list[str] | None, num_classes: int) -> TargetSpec:
    """top1 / topk / fixed classes by label or index; unknown labels suggest close ones."""
    targets = config.cam.targets
    if targets == "top1":
        return TargetSpec("top1")
    if targets == "topk":
        if config.cam.top_k > num_classes:
            warnings.warn(
                f"cam.top_k is {config.cam.top_k} but the model has {num_classes} classes: explaining all of them",
                GradcamWarning,
                stacklevel=2,
            )
        return TargetSpec("topk", k=min(config.cam.top_k, num_classes))
    indices: list[int] = []
    for target in targets:
        if isinstance(target, int) or (isinstance(target, str) and target.isdigit() and target not in (labels or [])):
            index = int(target)
            if not 0 <= index < num_classes:
                raise ConfigError(f"cam.targets: class index {index} is out of range (0..{num_classes - 1}).")
        elif labels is not None and target in labels:
            index = labels.index(target)
        else:
            hint = did_you_mean(target, labels or [], n=3, cutoff=0.5, sentence=True)
            known = "" if labels else " The model has no labels: use class indices."
            raise ConfigError(f"cam.targets: unknown class label {target!r}.{hint}{known}")
        indices.append(index)
    return TargetSpec("fixed", classes=tuple(indices))


def metric_settings(config: Config) -> MetricSettings | None:
    """What the engine computes for `cam.metrics` (None: no metrics)."""
    cam = config.cam
    if not cam.metrics:
        return None
    return MetricSettings(cam.metrics, cam.metric_steps, tuple(cam.road_percentiles), cam.chunk_size)


def with_batch_cap(config: Config, max_batch: int | None) -> Config:
    """`runtime.batch_size` at most `max_batch` (an ONNX graph that only takes one image at a time)."""
    if max_batch is None or config.runtime.batch_size <= max_batch:
        return config
    return config.model_copy(update={"runtime": config.runtime.model_copy(update={"batch_size": max_batch})})


@dataclass(frozen=True)
class PreparedRun:
    """Everything validated and built before anything is written."""

    config: Config  # the run's config (as given, with the model's batch-size cap)
    model: LoadedModel
    layer_names: list[str]
    engine: CamEngine  # the model and its target layers, ready for `with engine:`
    targets: TargetSpec
    device: torch.device
    num_classes: int


def prepare(config: Config, build: Config | None = None) -> PreparedRun:
    """Build the model, trace it once, resolve layers, labels and targets; raises GradcamError.

    `build` is the config the model is built with when it differs from the run's: the Ray driver builds
    on its CPU to validate, while its actors compute with the run's own device and precision.
    """
    build = build or config
    device = resolve_device(build.runtime.device)
    if build.runtime.deterministic:
        use_deterministic_algorithms(device)
    use_precision(build.runtime.precision)
    if build.runtime.precision == "fp16" and device.type == "cpu":
        raise ConfigError("runtime.precision fp16 needs a GPU; on the CPU use bf16 or fp32.")
    loaded = load_model(build.model)
    height, width = build.preprocess.size
    layers, output = trace_layers(loaded.module, torch.zeros(1, 3, height, width))
    read_scores = score_reader(build.model.output)
    engine_probe = CamEngine(loaded.module, [], METHODS[build.cam.method], read_scores)
    num_classes = int(engine_probe.scores(output).shape[1])
    if build.model.num_classes is not None and build.model.num_classes != num_classes:
        raise ConfigError(
            f"model.num_classes is {build.model.num_classes} but the model returns {num_classes} class scores."
        )
    if loaded.labels is not None and len(loaded.labels) != num_classes:
        raise ConfigError(
            f"model.labels has {len(loaded.labels)} names but the model returns {num_classes} class scores."
        )
    named_layers = resolve_target_layers(loaded.module, build.model.target_layers, layers)
    shapes = {info.name: info.shape for info in layers}
    calls = {info.name: info.calls for info in layers}
    adapters = []
    for name, _ in named_layers:
        found = describe_layout(
            shapes.get(name),
            (height, width),
            build.model.activation_layout,
            build.model.token_grid,
            build.model.skip_tokens,
        )
        if found is None:
            usable = [info.name for info in layers if info.spatial][-8:]
            shape = shapes.get(name)
            raise ConfigError(
                f"model.target_layer: {name!r} outputs {'shape ' + str(shape) if shape else 'no tensor'}, not a "
                f"feature map (batch, channels, height, width), an NHWC map or a token grid; choose a layer such "
                f"as {', '.join(usable)} (see `gradcam layers`), or set model.activation_layout/token_grid."
            )
        adapters.append(found[1])
    max_batch = loaded.description.get("max_batch")
    if build.runtime.fuse_batchnorm:
        examples = torch.randn(min(2, max_batch or 2), 3, height, width)
        fuse_conv_batchnorm(loaded.module, examples, [layer for _, layer in named_layers], read_scores)
    module = loaded.module.to(device)
    if device.type in ("cpu", "cuda"):
        module = module.to(memory_format=torch.channels_last)
    engine = CamEngine(
        module,
        [layer for _, layer in named_layers],
        METHODS[build.cam.method],
        read_scores,
        precision=build.runtime.precision,
        to_spatial=adapters,
        eigen_smooth=build.cam.eigen_smooth,
        aug_smooth=build.cam.aug_smooth,
        chunk=build.cam.chunk_size,
        calls=[calls.get(name, 1) for name, _ in named_layers],
        metrics=metric_settings(build),
    )
    return PreparedRun(
        config=with_batch_cap(config, max_batch),
        model=loaded,
        layer_names=[name for name, _ in named_layers],
        engine=engine,
        targets=resolve_targets(build, loaded.labels, num_classes),
        device=device,
        num_classes=num_classes,
    )
