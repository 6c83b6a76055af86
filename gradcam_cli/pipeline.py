"""`gradcam run` as a library call: set-up (validated, nothing written), then streaming stages.

sources -> decode + preprocess (workers) -> engine (device) -> map back to the original frame
        -> encode + write (thread pool, overlapping the next batch) -> records.jsonl -> manifest.json
"""

from __future__ import annotations

import contextlib
import difflib
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import torch

from gradcam_cli import __version__
from gradcam_cli.config import Config
from gradcam_cli.engine import METHODS, CamBatch, CamEngine, TargetSpec
from gradcam_cli.engine.layouts import describe_layout
from gradcam_cli.errors import EXIT_IMAGES_FAILED, EXIT_OK, ConfigError, OutputError
from gradcam_cli.events import EventLog
from gradcam_cli.io.discovery import ImageSource, check_inputs, discover
from gradcam_cli.io.geometry import to_original_frame
from gradcam_cli.io.lock import OutputLock
from gradcam_cli.io.manifest import (
    NORMALIZATION,
    RECORDS_NAME,
    RecordsWriter,
    load_done,
    repair_records,
    write_manifest,
)
from gradcam_cli.io.outputs import (
    HEATMAPS,
    OVERLAYS,
    RAW,
    OutputJob,
    output_name,
    thumbnail_name,
    write_outputs,
)
from gradcam_cli.models import (
    LoadedModel,
    fuse_conv_batchnorm,
    load_model,
    resolve_target_layers,
    score_reader,
    trace_layers,
)
from gradcam_cli.resume import (
    check_previous_config,
    claim_run_info,
    clear_results,
    filters_of,
    in_shard,
    limited,
    pending,
)
from gradcam_cli.shards import Shard, ShardMergeError, clear_marker, complete_markers, merge, write_marker
from gradcam_cli.stages import DecodeDataset, DecodedBatch, decoded_batches

TOP_PREDICTIONS = 5
STAGES = ("decode", "compute", "render", "encode")


def _lap(stages: dict[str, float], stage: str, since: float) -> float:
    now = time.perf_counter()
    stages[stage] += now - since
    return now


@dataclass
class RunOptions:
    """Per-invocation choices that are not part of the (hashed) config."""

    inputs: list[str]
    limit: int | None = None
    fail_fast: bool = False
    quiet: bool = False
    stdin: TextIO | None = None
    resume: bool = True  # skip images an earlier run of the same config already explained
    overwrite: bool = False  # replace results of a different config instead of refusing
    events: EventLog | None = None
    shard: Shard | None = None  # process only this shard's images (gradcam_cli/shards.py)
    engine: str = "local"  # local | ray (gradcam_cli/ray_engine.py)
    ray_address: str | None = None  # an existing Ray cluster; None starts a local Ray instance
    ray_actors: int | None = None  # model-holding actors (None: one per GPU of the cluster, else 1)


@dataclass
class RunSummary:
    total: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    out_dir: Path = field(default_factory=Path)
    manifest: Path | None = None
    interrupted_by: int | None = None  # the signal that stopped the run early
    # Wall-clock seconds the main loop spent per stage: waiting for decode workers, computing CAMs,
    # mapping them to the original frame, and waiting for the writer pool. The largest is the bottleneck.
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    complete: bool = False  # went through every input: not interrupted, not cut by --limit or --fail-fast
    device: str | None = None  # where the CAMs ran, when not the driver's device (Ray actors)
    note: str | None = None  # e.g. a shard waiting for the others before the merge
    merge_error: str | None = None  # the last shard could not merge (see `gradcam merge`)

    @property
    def exit_code(self) -> int:
        if self.interrupted_by is not None:
            return 128 + self.interrupted_by  # 130 for SIGINT, 143 for SIGTERM, as shells report them
        return EXIT_IMAGES_FAILED if self.failed else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "out_dir": str(self.out_dir),
            "manifest": str(self.manifest) if self.manifest else None,
            "interrupted_by": self.interrupted_by,
            "exit_code": self.exit_code,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }

    def line(self) -> str:
        rate = self.total / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.total} images: {self.ok} ok, {self.failed} failed, {self.skipped} skipped "
            f"in {self.seconds:.1f} s ({rate:.1f} img/s). Results: {self.manifest or self.out_dir}"
        )


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


def resolve_workers(workers: str | int) -> int:
    if workers == "auto":
        # Leave a core for the main process (compute) and the writer threads.
        return max(1, min(8, (os.cpu_count() or 2) - 1))
    return int(workers)


def use_deterministic_algorithms(device: torch.device) -> None:
    """Same inputs, same config, same machine: byte-identical heatmaps (what `gradcam compare` relies on).

    warn_only: an op without a deterministic kernel warns instead of failing the run.
    """
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def label_of(labels: list[str] | None, index: int) -> str:
    return labels[index] if labels is not None and 0 <= index < len(labels) else str(index)


def resolve_targets(config: Config, labels: list[str] | None, num_classes: int) -> TargetSpec:
    """top1 / topk / fixed classes by label or index; unknown labels suggest close ones."""
    targets = config.cam.targets
    if targets == "top1":
        return TargetSpec("top1")
    if targets == "topk":
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
            close = difflib.get_close_matches(str(target), labels or [], n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            known = "" if labels else " The model has no labels: use class indices."
            raise ConfigError(f"cam.targets: unknown class label {target!r}.{hint}{known}")
        indices.append(index)
    return TargetSpec("fixed", classes=tuple(indices))


@dataclass
class Prepared:
    """Everything validated and built before anything is written."""

    config: Config
    model: LoadedModel
    layer_names: list[str]
    engine: CamEngine
    targets: TargetSpec
    device: torch.device
    num_classes: int


def prepare(config: Config) -> Prepared:
    """Build the model, trace it once, resolve layers, labels and targets; raises GradcamError."""
    device = resolve_device(config.runtime.device)
    if config.runtime.deterministic:
        use_deterministic_algorithms(device)
    if config.runtime.precision == "fp16" and device.type == "cpu":
        raise ConfigError("runtime.precision fp16 needs a GPU; on the CPU use bf16 or fp32.")
    loaded = load_model(config.model)
    height, width = config.preprocess.size
    layers, output = trace_layers(loaded.module, torch.zeros(1, 3, height, width))
    read_scores = score_reader(config.model.output)
    engine_probe = CamEngine(loaded.module, [], METHODS[config.cam.method], read_scores)
    num_classes = int(engine_probe.scores(output).shape[1])
    if config.model.num_classes is not None and config.model.num_classes != num_classes:
        raise ConfigError(
            f"model.num_classes is {config.model.num_classes} but the model returns {num_classes} class scores."
        )
    if loaded.labels is not None and len(loaded.labels) != num_classes:
        raise ConfigError(
            f"model.labels has {len(loaded.labels)} names but the model returns {num_classes} class scores."
        )
    named_layers = resolve_target_layers(loaded.module, config.model.target_layers, layers)
    shapes = {info.name: info.shape for info in layers}
    adapters = []
    for name, _ in named_layers:
        found = describe_layout(
            shapes.get(name),
            (height, width),
            config.model.activation_layout,
            config.model.token_grid,
            config.model.skip_tokens,
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
    max_batch = loaded.description.get("max_batch")  # an ONNX graph that only takes one image at a time
    if max_batch is not None and config.runtime.batch_size > max_batch:
        config = config.model_copy(
            update={"runtime": config.runtime.model_copy(update={"batch_size": max_batch})}
        )
    if config.runtime.fuse_batchnorm:
        examples = torch.randn(min(2, max_batch or 2), 3, height, width)
        fuse_conv_batchnorm(loaded.module, examples, [layer for _, layer in named_layers], read_scores)
    module = loaded.module.to(device)
    if device.type in ("cpu", "cuda"):
        module = module.to(memory_format=torch.channels_last)
    engine = CamEngine(
        module,
        [layer for _, layer in named_layers],
        METHODS[config.cam.method],
        read_scores,
        precision=config.runtime.precision,
        to_spatial=adapters,
        eigen_smooth=config.cam.eigen_smooth,
        aug_smooth=config.cam.aug_smooth,
        chunk=config.cam.chunk_size,
    )
    return Prepared(
        config=config,
        model=loaded,
        layer_names=[name for name, _ in named_layers],
        engine=engine,
        targets=resolve_targets(config, loaded.labels, num_classes),
        device=device,
        num_classes=num_classes,
    )


def _normalised(pixels: torch.Tensor, config: Config, device: torch.device) -> torch.Tensor:
    x = pixels.to(device, non_blocking=True).float().div_(255.0)
    low, high = config.preprocess.pixel_range  # 0..255 onto [low, high], then channel order, then mean/std
    if (low, high) != (0.0, 1.0):
        x = x.mul_(high - low).add_(low)
    if config.preprocess.channel_order == "bgr":
        x = x.flip(1)
    mean = torch.tensor(config.preprocess.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.preprocess.std, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if device.type in ("cpu", "cuda") else x


def _source_fields(source: ImageSource) -> dict[str, Any]:
    """Where a record's image came from, and what resume compares next time."""
    return {
        "path": source.path,
        "source": source.source,
        "archive": source.archive,
        "member": source.member,
        "file_size": source.file_size,
        "mtime_ns": source.mtime_ns,
    }


def _error_record(source: ImageSource, sha256: str | None, kind: str, message: str) -> dict[str, Any]:
    return {
        **_source_fields(source),
        "sha256": sha256,
        "width": None,
        "height": None,
        "status": "error",
        "predictions": [],
        "cams": [],
        "error": {"type": kind, "message": message},
    }


def render_batch(
    prepared: Prepared,
    out_dir: Path,
    batch: DecodedBatch,
    result: CamBatch | None,
    write: Callable[[OutputJob], object],
) -> list[dict[str, Any]]:
    """A batch's records, in input order; each image's output job goes to `write` as soon as it is ready.

    Shared by the local engine (`write` submits to its writer pool) and the Ray actors, so both give the
    same records and files.
    """
    config = prepared.config
    labels = prepared.model.labels
    several = prepared.targets.count > 1
    records: list[dict[str, Any]] = []
    position = {item_index: row for row, item_index in enumerate(batch.ok)}
    for index, item in enumerate(batch.items):
        if item.skipped:
            continue
        if item.error is not None:
            records.append(_error_record(item.source, item.sha256, *item.error))
            continue
        assert result is not None and item.geometry is not None and item.size is not None
        row = position[index]
        classes = result.class_indices[row].tolist()
        probabilities = result.probabilities[row]
        top = probabilities.topk(min(TOP_PREDICTIONS, probabilities.numel()))
        names = [output_name(item.source.path, c, several) for c in classes]
        full = to_original_frame(result.cams[row], item.geometry)
        heatmaps = full.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
        job = OutputJob(
            out_dir=out_dir,
            names=names,
            heatmaps=heatmaps,
            original=item.original.numpy() if (config.output.overlays and item.original is not None) else None,
            write_heatmaps=config.output.heatmaps,
            colormap=config.output.colormap,
            alpha=config.output.alpha,
            compression=config.output.png_compression,
            thumbnail=thumbnail_name(item.source.path) if config.output.report else None,
        )
        if config.output.raw:
            raw = result.raw[row]
            size = tuple(config.preprocess.size)
            at_input = torch.nn.functional.interpolate(
                raw[:, None], size=size, mode="bilinear", align_corners=False
            )[:, 0]
            job.raw_feature = raw.float().cpu().numpy()
            job.raw_original = to_original_frame(at_input, item.geometry).float().cpu().numpy()
        write(job)
        cams = []
        for rank, (class_index, name) in enumerate(zip(classes, names, strict=True)):
            entry: dict[str, Any] = {
                "rank": rank,
                "class_index": class_index,
                "label": label_of(labels, class_index),
                "score": round(float(probabilities[class_index]), 6),
                "heatmap": f"{HEATMAPS}/{name}" if config.output.heatmaps else None,
                "overlay": f"{OVERLAYS}/{name}" if config.output.overlays else None,
                "raw_max": float(result.raw_max[row, rank]),
                "quality": result.quality[row][rank],
            }
            if config.output.raw:
                entry["raw"] = f"{RAW}/{name.removesuffix('.png')}.npy"
                entry["raw_feature"] = f"{RAW}/{name.removesuffix('.png')}.feature.npy"
            cams.append(entry)
        width, height = item.size
        records.append(
            {
                **_source_fields(item.source),
                "sha256": item.sha256,
                "width": width,
                "height": height,
                "status": "ok",
                "predictions": [
                    {"class_index": int(i), "label": label_of(labels, int(i)), "score": round(float(s), 6)}
                    for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                ],
                "cams": cams,
                "error": None,
            }
        )
    return records


class _BatchWriter:
    """Turns engine results into output jobs and records, writing in a thread pool one batch behind."""

    def __init__(self, prepared: Prepared, out_dir: Path, records: RecordsWriter, threads: int) -> None:
        self.prepared = prepared
        self.out_dir = out_dir
        self.records = records
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gradcam-writer")
        self.pending: deque[tuple[list[dict[str, Any]], list[Future[None]]]] = deque()

    def submit(self, batch: DecodedBatch, result: CamBatch | None) -> list[dict[str, Any]]:
        futures: list[Future[None]] = []
        records = render_batch(
            self.prepared, self.out_dir, batch, result, lambda job: futures.append(self.pool.submit(write_outputs, job))
        )
        self.pending.append((records, futures))
        return records

    def drain(self, keep: int = 0) -> list[dict[str, Any]]:
        """Wait for all but `keep` batches of writes; append their records. Returns the records written."""
        written: list[dict[str, Any]] = []
        while len(self.pending) > keep:
            records, futures = self.pending.popleft()
            try:
                for future in futures:
                    future.result()
                self.records.write_batch(records)
            except OSError as exc:
                raise OutputError(
                    f"cannot write to the output folder {self.out_dir}: {exc.strerror or exc}. Records "
                    f"written so far in {self.records.path} stay valid."
                ) from None
            written.extend(records)
        return written

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _prepare_output(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for sub in (HEATMAPS, OVERLAYS):
            (out_dir / sub).mkdir(exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {out_dir}: {exc.strerror or exc}.") from None


class _StopSignals:
    """SIGINT/SIGTERM: the first lets the batch in flight finish; a second stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run(config: Config, options: RunOptions) -> RunSummary:
    """Explain every image of `options.inputs`; returns the summary (the manifest is on disk).

    Order matters for "nothing written on a config error": inputs, config and model are validated, and
    an existing output folder is locked and checked, before anything is created or changed.
    """
    inputs = check_inputs(options.inputs)
    out_dir = config.output.dir.resolve()
    events = options.events or EventLog(None)
    shard = options.shard
    if shard is not None and options.overwrite:
        raise ConfigError(
            "--overwrite cannot be combined with --shard: shards share the output folder, and one shard must "
            "not delete the others' results. Remove the old results first (their heatmaps/, overlays/, records "
            "and run.json), or choose a new --output."
        )
    stream, driver_config = _stream, config
    if options.engine == "ray":
        from gradcam_cli import ray_engine

        ray_engine.require_ray()  # a missing extra is a usage error, before anything is written
        stream, driver_config = ray_engine.stream, ray_engine.driver_config(config)
    elif options.engine != "local":
        raise ConfigError(f"--engine must be local or ray, not {options.engine!r}.")
    records_path = out_dir / (shard.records_name if shard else RECORDS_NAME)
    with contextlib.ExitStack() as stack:
        # A plain run holds the folder lock alone; shards share it and hold their own shard lock each.
        locks = [OutputLock(out_dir)] if shard is None else [OutputLock(out_dir, shared=True)]
        if shard is not None:
            locks.append(OutputLock(out_dir, shard.lock_name))
        locked = out_dir.is_dir()
        if locked:  # a second run on the same folder exits before loading any model
            for lock in locks:
                stack.enter_context(lock)
            if not options.overwrite:
                check_previous_config(out_dir, config)
        prepared = prepare(driver_config)  # the Ray engine validates here and computes in its actors
        if options.engine == "ray":
            shutdown = ray_engine.connect(config, options)
            if shutdown is not None:
                stack.callback(shutdown)
        if not locked:  # a new folder (or one another run, e.g. a sibling shard, created meanwhile)
            _prepare_output(out_dir)
            for lock in locks:
                stack.enter_context(lock)
        if options.overwrite:
            clear_results(out_dir)
        _prepare_output(out_dir)
        repair_records(records_path)
        claim_run_info(out_dir, config, records_path)  # shards starting together agree on one config
        if shard is not None:
            clear_marker(out_dir, shard)  # complete again only when this run goes through all its images
        done = load_done(records_path) if options.resume else {}
        if locks[-1].took_over:  # a crashed run's lock: the kernel released it, we say so for the logs
            events.emit("stale_lock_taken_over", previous_holder=locks[-1].took_over)
        events.emit(
            "run_started",
            config_hash=config.config_hash(),
            inputs=inputs,
            out_dir=str(out_dir),
            device=str(prepared.device),
            already_done=len(done),
            **({"shard": shard.label} if shard else {}),
            **({"engine": options.engine} if options.engine != "local" else {}),
        )
        if prepared.config.runtime.batch_size < config.runtime.batch_size:  # the model caps it (see prepare)
            runtime = config.runtime.model_copy(update={"batch_size": prepared.config.runtime.batch_size})
            config = config.model_copy(update={"runtime": runtime})
        prepared.config = config  # the Ray actors get the config as given (they pick their own device)
        summary = stream(prepared, inputs, out_dir, done, options, events, records_path)
        header = _manifest_header(prepared, summary)
        if shard is None:
            summary.manifest = write_manifest(out_dir, header, skipped=summary.skipped)
        else:
            summary.manifest = _finish_shard(out_dir, shard, config.config_hash(), header, summary, events)
        if config.output.report and summary.manifest is not None:
            from gradcam_cli.report import write_report

            write_report(out_dir)
        events.emit("run_finished", summary=summary.as_dict())
    return summary


def _finish_shard(
    out_dir: Path, shard: Shard, config_hash: str, header: dict[str, Any], summary: RunSummary, events: EventLog
) -> Path | None:
    """Mark the shard complete when it went through all of its images; the last one to finish merges."""
    if not summary.complete:
        summary.note = f"shard {shard.label} stopped before its end: not complete; rerun it to resume"
        return None
    counts = {"total": summary.total, "ok": summary.ok, "failed": summary.failed, "skipped": summary.skipped}
    write_marker(out_dir, shard, config_hash, header, counts)
    markers = complete_markers(out_dir)
    waiting = [k for k in range(shard.count) if (k, shard.count) not in markers]
    if waiting:
        summary.note = (
            f"shard {shard.label} complete; manifest.json is written when all {shard.count} shards are "
            f"(waiting for {len(waiting)}), or by `gradcam merge {out_dir}`"
        )
        return None
    try:
        path, counts = merge(out_dir)
    except ShardMergeError as error:  # the shard's own results are complete and valid all the same
        summary.merge_error = str(error)
        events.emit("merge_failed", message=str(error))
        return None
    summary.note = f"last shard: merged {shard.count} shards into {path} ({counts['total']} images)"
    events.emit("shards_merged", manifest=str(path), summary=counts)
    return path


def todo_sources(
    config: Config, inputs: list[str], out_dir: Path, done: dict[str, Any], options: RunOptions, summary: RunSummary
) -> tuple[Iterator[ImageSource], Callable[[], bool]]:
    """The images still to do (this shard's, not done, within --limit), streamed; and a function that says
    whether discovery went through to the end (a shard is complete only then)."""
    walked = [False]

    def skipped(_: ImageSource) -> None:
        summary.skipped += 1
        summary.total += 1

    def through(sources: Iterable[ImageSource]) -> Iterator[ImageSource]:
        yield from sources
        walked[0] = True

    sources = discover(inputs, filters_of(config), options.stdin, exclude=out_dir)
    todo = limited(through(pending(in_shard(sources, options.shard), done, skipped)), options.limit)
    return todo, lambda: walked[0]


def account_records(
    summary: RunSummary, written: list[dict[str, Any]], events: EventLog, progress: Any, skipped: int = 0
) -> None:
    """Count records made durable (and `skipped` images resume passed over) in the summary, the event log
    and the progress bar; shared by both engines."""
    for record in written:
        if record["status"] == "error":
            summary.failed += 1
            events.emit("image_failed", path=record["path"], source=record["source"], error=record["error"])
        else:
            summary.ok += 1
    summary.skipped += skipped
    summary.total += len(written) + skipped
    if progress is not None:
        progress.update(len(written) + skipped)
        progress.set_postfix(ok=summary.ok, failed=summary.failed, skipped=summary.skipped, refresh=False)


def start_summary(out_dir: Path) -> tuple[RunSummary, float]:
    """A fresh summary stamped now, and the perf_counter its `seconds` are measured from (both engines)."""
    summary = RunSummary(out_dir=out_dir)
    summary.started_at = datetime.now(timezone.utc)
    return summary, time.perf_counter()


def _stream(
    prepared: Prepared,
    inputs: list[str],
    out_dir: Path,
    done: dict[str, Any],
    options: RunOptions,
    events: EventLog,
    records_path: Path | None = None,
) -> RunSummary:
    """The streaming stages; records are durable per batch whatever stops the loop."""
    config = prepared.config
    summary, clock = start_summary(out_dir)
    progress = _progress(options.quiet)
    todo, walked_all = todo_sources(config, inputs, out_dir, done, options, summary)
    dataset = DecodeDataset(config.preprocess, config.input, keep_original=config.output.overlays)
    workers = resolve_workers(config.runtime.workers)
    batches = decoded_batches(
        todo, dataset, config.runtime.batch_size, workers, pin_memory=prepared.device.type == "cuda"
    )
    records = RecordsWriter(records_path or out_dir / RECORDS_NAME)
    writer = _BatchWriter(prepared, out_dir, records, threads=max(2, min(8, os.cpu_count() or 2)))

    def account(written: list[dict[str, Any]]) -> None:
        account_records(summary, written, events, progress)

    prepared.engine.show_progress = not options.quiet
    try:
        with _StopSignals() as stop, prepared.engine:
            stages = summary.stage_seconds
            mark = time.perf_counter()
            for batch in batches:
                mark = _lap(stages, "decode", mark)  # time the main loop waited for decoded batches
                summary.skipped += sum(1 for item in batch.items if item.skipped)
                summary.total += sum(1 for item in batch.items if item.skipped)
                result = None
                if batch.pixels is not None:
                    images = _normalised(batch.pixels, config, prepared.device)
                    result = prepared.engine.explain(images, prepared.targets)
                    if prepared.device.type == "cuda":
                        torch.cuda.synchronize(prepared.device)  # attribute GPU time to compute
                mark = _lap(stages, "compute", mark)
                submitted = writer.submit(batch, result)
                mark = _lap(stages, "render", mark)
                account(writer.drain(keep=1))
                mark = _lap(stages, "encode", mark)  # time waiting for the writer pool
                if stop.signum is not None:
                    summary.interrupted_by = stop.signum
                    break
                if options.fail_fast and any(r["status"] == "error" for r in submitted):
                    break
            else:
                summary.complete = walked_all()
            account(writer.drain())
            _lap(stages, "encode", mark)
    except KeyboardInterrupt:
        # A second Ctrl-C (or one outside the handler's reach): stop now. Files are atomic and records
        # are only appended for complete batches, so what is on disk stays consistent.
        summary.interrupted_by = summary.interrupted_by or signal.SIGINT
    finally:
        writer.close()
        records.close()
        if progress is not None:
            progress.close()
    summary.seconds = time.perf_counter() - clock
    return summary


def _progress(quiet: bool) -> Any:
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(unit="img", file=sys.stderr, dynamic_ncols=True, desc="gradcam")


def _manifest_header(prepared: Prepared, summary: RunSummary) -> dict[str, Any]:
    config = prepared.config
    return {
        "tool": {"name": "gradcam-cli", "version": __version__},
        "config": config.model_dump(mode="json"),
        "config_hash": config.config_hash(),
        "model": dict(prepared.model.description, num_classes=prepared.num_classes),
        "method": config.cam.method,
        "target_layer": prepared.layer_names[0] if len(prepared.layer_names) == 1 else prepared.layer_names,
        "targets": config.cam.targets,
        "device": summary.device or str(prepared.device),
        "precision": config.runtime.precision,
        "normalization": NORMALIZATION,
        "started_at": summary.started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
