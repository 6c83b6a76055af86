"""The Ray Data backend: `gradcam run --engine ray [--ray-address ADDR] [--ray-actors N]`.

The same config and the same output folder as the local backend, on a Ray cluster:

    driver: discovery + resume (as a local run) -> ray.data.from_items(the pending sources)
      -> map_batches(decode_batch)       CPU tasks: read, hash, decode, orient, resize (loader.DecodeDataset)
      -> map_batches(CamActor)           a pool of model-holding actors (one GPU each when the cluster has
                                         GPUs): CAMs, then heatmaps and overlays written by the actor with
                                         the local backend's code (render.render_batch, io.outputs)
      -> driver: records streamed back and appended to the same records.jsonl (or the shard's file)

so the manifest, resume and the config guard are the same as a local run's. Every worker must see the
output folder and the inputs at the same paths (shared storage), and import gradcam-cli and the model's
factory. Without `--ray-address` a small local Ray instance is started (and shut down at the end).
Ray is imported only here, and only when the backend is chosen; a missing extra is exit 2 with the hint.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gradcam_cli.config import Config
from gradcam_cli.errors import ConfigError, GradcamError, ModelError, OutputError
from gradcam_cli.io.manifest import RecordsWriter
from gradcam_cli.runner.heap import keep_large_blocks
from gradcam_cli.runner.job import RunJob
from gradcam_cli.runner.options import RunOptions, RunSummary, progress_bar
from gradcam_cli.runner.resume import TouchedFiles
from gradcam_cli.runner.signals import StopSignals

INSTALL_HINT = (
    "--engine ray needs Ray Data, an optional extra: pip install 'gradcam-cli[ray]' (or pip install "
    "'ray[data]>=2.9'), on the driver and on every node of the cluster."
)


def require() -> None:
    """Exit 2 with the install hint when Ray Data is missing."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} ({exc})") from None


def driver_config(config: Config) -> Config:
    """The driver validates the model on its CPU (it needs no GPU; the actors compute)."""
    if config.preprocess.device_decode:  # Ray's decode tasks hand the actors pixels, not bytes
        raise ConfigError(
            "preprocess.device_decode works with --engine local only: with --engine ray the images are "
            "decoded by CPU tasks. Remove preprocess.device_decode or use --engine local."
        )
    precision = "fp32" if config.runtime.precision == "fp16" else config.runtime.precision
    runtime = config.runtime.model_copy(update={"device": "cpu", "precision": precision})
    return config.model_copy(update={"runtime": runtime})


def _wants_gpu(config: Config) -> bool:
    return config.runtime.device == "auto" or config.runtime.device.startswith("cuda")


# ---------------------------------------------------------------- remote side (tasks and actors)
def decode_batch(batch: dict[str, np.ndarray], config: bytes) -> dict[str, np.ndarray]:
    """CPU task: pickled ImageSources -> pickled DecodedItems (errors and resume skips included)."""
    from gradcam_cli.runner.loader import DecodeDataset

    loaded: Config = pickle.loads(config)
    dataset = DecodeDataset(loaded.preprocess, loaded.input)
    items = [pickle.dumps(dataset[pickle.loads(source)]) for source in batch["source"]]
    return {"item": np.array(items, dtype=object)}


class CamActor:
    """Holds the prepared model; turns decoded items into written files and records (one per item,
    empty for an image resume skipped)."""

    def __init__(self, config: bytes, out_dir: str, use_gpu: bool, threads: int) -> None:
        import torch

        from gradcam_cli.runner.prepare import prepare

        loaded: Config = pickle.loads(config)
        if use_gpu:  # Ray exposes only this actor's GPU(s), so cuda:N of the config would not exist here
            loaded = loaded.model_copy(update={"runtime": loaded.runtime.model_copy(update={"device": "cuda"})})
        elif loaded.runtime.device == "auto":  # no GPU was allotted to this actor
            loaded = loaded.model_copy(update={"runtime": loaded.runtime.model_copy(update={"device": "cpu"})})
        torch.set_num_threads(max(1, threads))
        keep_large_blocks()  # the actor's render threads reuse full-size buffers between images
        self.prepared = prepare(loaded)
        self.out_dir = Path(out_dir)
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gradcam-ray-writer")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from gradcam_cli.io.manifest import dumps_record
        from gradcam_cli.runner.loader import collate, normalise
        from gradcam_cli.runner.render import render_batch, render_image, with_render_outcome

        prepared = self.prepared
        items = [pickle.loads(item) for item in batch["item"]]
        decoded = collate(items)
        result = None
        if decoded.pixels is not None:
            with prepared.engine:
                images = normalise(decoded.pixels, prepared.config.preprocess, prepared.device)
                result = prepared.engine.explain(images, prepared.targets)
            if prepared.device.type == "cuda":
                torch.cuda.synchronize(prepared.device)
        jobs: list[Any] = []
        records = render_batch(prepared, self.out_dir, decoded, result, jobs.append)
        futures = iter([(job, self.pool.submit(render_image, job)) for job in jobs])
        for row, record in enumerate(records):
            if record["status"] == "ok":  # a record is returned once its files are written
                job, future = next(futures)
                records[row] = with_render_outcome(record, future.result(), job)
        lines = iter(dumps_record(record) for record in records)
        out = ["" if item.skipped else next(lines) for item in items]
        # resume: a touched but unchanged file's path, size and mtime, for the driver to refresh its record
        touched = [
            json.dumps([item.source.path, item.source.file_size, item.source.mtime_ns]) if item.skipped else ""
            for item in items
        ]
        # cam.metrics' forward passes of the batch, on its first row (rows may be regrouped on the way back)
        passes = [result.metric_passes if result is not None else 0] + [0] * (len(out) - 1)
        return {
            "record": np.array(out, dtype=object),
            "device": np.array([str(prepared.device)] * len(out)),
            "passes": np.array(passes[: len(out)], dtype=np.int64),
            "touched": np.array(touched, dtype=object),
        }


# ---------------------------------------------------------------- driver
def connect(config: Config, options: RunOptions) -> Callable[[], None] | None:
    """Reach (or start) Ray and check that the cluster can run the config, before the output folder is
    touched, so a set-up error leaves nothing behind; returns the shutdown to call when the run ends."""
    import ray

    started_here = _connect(options)
    try:
        _resources(config, options.ray_actors)
    except BaseException:
        if started_here:
            ray.shutdown()
        raise
    return ray.shutdown if started_here else None


def _connect(options: RunOptions) -> bool:
    """Connect to the cluster, or start a small local instance; returns whether we must shut it down."""
    import ray

    from gradcam_cli.runner.prepare import usable_cores

    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if options.ray_address:
            ray.init(address=options.ray_address, **quiet)
        else:
            actors = options.ray_actors or 1
            ray.init(num_cpus=max(2, min(usable_cores(), 8), actors + 1), **quiet)
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds here; all mean "no cluster"
        where = options.ray_address or "a local Ray instance"
        raise ConfigError(f"cannot start or reach {where}: {type(exc).__name__}: {exc}") from None
    return True


def _resources(config: Config, actors_option: int | None) -> tuple[int, dict[str, Any], int]:
    """Actor count, per-actor Ray resources and torch threads, from the cluster and the config."""
    import ray

    cluster = ray.cluster_resources()
    gpus = int(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    use_gpu = gpus > 0 and _wants_gpu(config)
    if config.runtime.device.startswith("cuda") and gpus == 0:
        raise ConfigError(
            f"runtime.device is {config.runtime.device!r} but the Ray cluster has no GPUs; use cpu or auto."
        )
    per_gpu = config.runtime.ray_gpus_per_actor
    actors = actors_option or (max(1, int(gpus / per_gpu)) if use_gpu else 1)
    if use_gpu:
        if actors * per_gpu > gpus:  # Ray would wait forever for actors it cannot place
            raise ConfigError(
                f"--ray-actors {actors} with runtime.ray_gpus_per_actor {per_gpu} needs {actors * per_gpu:g} GPUs; "
                f"the Ray cluster has {gpus}. Use fewer actors, or a fraction of a GPU per actor (e.g. 0.5)."
            )
        return actors, {"num_gpus": per_gpu, "num_cpus": 1}, 1
    # CPU actors share the cluster's CPUs with the decode tasks: leave at least one CPU for decoding.
    spare = max(cpus - 1, 0.5)
    per_actor = math.floor(spare / actors) if spare >= actors else spare / actors
    return actors, {"num_cpus": per_actor}, max(1, int(per_actor))


def _decoders(actors: int, blocks: int) -> int:
    """Decode tasks in flight: two per actor (fewer for a small input), never exactly the actor count,
    which would let Ray fuse decoding into the actors."""
    size = max(1, min(2 * actors, blocks))
    return actors + 1 if size == actors else size


def _task_pool(size: int) -> dict[str, Any]:
    import ray.data

    if hasattr(ray.data, "TaskPoolStrategy"):  # Ray >= 2.44; `concurrency` is deprecated there
        return {"compute": ray.data.TaskPoolStrategy(size=size)}
    return {"concurrency": size}


def _failure(exc: BaseException) -> GradcamError:
    """A Ray task or actor failed: its GradcamError if it raised one (a bad config, a missing model file),
    else the last line of Ray's report (the remote exception), as a ModelError."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, GradcamError):
            return seen
        if isinstance(seen, OSError):  # an actor could not write its files: exit 4, as for a plain run
            return OutputError(f"a Ray actor cannot write to the output folder: {seen.strerror or seen}.")
        seen = getattr(seen, "cause", None) or seen.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return ModelError(f"the Ray engine failed: {lines[-1] if lines else type(exc).__name__}")


def _quiet_ray_data() -> None:
    """Our progress bar and messages only; Ray keeps its full logs in its session folder."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    logging.getLogger("ray").setLevel(logging.ERROR)


def stream(job: RunJob) -> RunSummary:
    """The local backend's contract on Ray: records durable per returned batch, summary counts, complete."""
    import ray

    config, options, out_dir, events = job.prepared.config, job.options, job.out_dir, job.events
    summary, clock = RunSummary.start(out_dir)
    todo, walked_all = job.todo(summary)
    # The pending list lives on the driver (a few hundred bytes per image, plus the bytes of pending tar
    # members) for Ray to split into blocks.
    rows = [{"source": pickle.dumps(source)} for source in todo]
    if not rows:
        summary.complete = walked_all()
        summary.seconds = time.perf_counter() - clock
        return summary
    if config.cam.metrics:
        summary.metric_passes = 0
    started_here = _connect(options)
    records = RecordsWriter(job.records_path)
    touched = TouchedFiles()
    progress = progress_bar(options.quiet)
    try:
        _quiet_ray_data()
        actors, actor_resources, threads = _resources(config, options.ray_actors)
        config_bytes = pickle.dumps(config)
        batch_size = config.runtime.batch_size
        blocks = max(1, math.ceil(len(rows) / batch_size))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        dataset = dataset.map_batches(
            decode_batch,
            batch_size=batch_size,
            batch_format="numpy",
            fn_kwargs={"config": config_bytes},
            num_cpus=1,
            # A bounded pool of decode tasks (2 per actor keeps them fed); a size other than the actors'
            # also keeps Ray from fusing decoding into the actors, where it would run in series with the model.
            **_task_pool(_decoders(actors, blocks)),
        )
        dataset = dataset.map_batches(
            CamActor,
            batch_size=batch_size,
            batch_format="numpy",
            fn_constructor_kwargs={
                "config": config_bytes,
                "out_dir": str(out_dir),
                "use_gpu": "num_gpus" in actor_resources,
                "threads": threads,
            },
            compute=ray.data.ActorPoolStrategy(size=actors),
            **actor_resources,
        )
        with StopSignals() as stop:
            for batch in _batches(dataset):
                written = [json.loads(line) for line in batch["record"] if line]
                skipped = sum(1 for line in batch["record"] if not line)
                records.write_batch(written)
                for line in batch.get("touched", ()):
                    if line:
                        touched.add(*json.loads(line))
                summary.count_metric_passes(int(batch["passes"].sum()) if "passes" in batch else 0)
                summary.account(written, events, progress, skipped)
                if len(batch["device"]):
                    summary.device = str(batch["device"][0])
                if summary.stop_after_batch(stop.signum, options.fail_fast, written):
                    break
            else:
                summary.complete = walked_all()
            touched.write(records, job.records_path)
    except KeyboardInterrupt:
        summary.interrupted_by = summary.interrupted_by or signal.SIGINT
    except GradcamError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {out_dir}: {exc.strerror or exc}.") from None
    except Exception as exc:  # noqa: BLE001 - a failure inside a Ray task or actor
        raise _failure(exc) from None
    finally:
        records.close()
        if progress is not None:
            progress.close()
        if started_here:
            ray.shutdown()
    summary.seconds = time.perf_counter() - clock
    return summary


def _batches(dataset: Any) -> Iterator[dict[str, np.ndarray]]:
    """The actors' output as it is produced (any order: the manifest sorts by path)."""
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
