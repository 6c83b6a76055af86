"""The output stage: CAMs mapped onto each original image, heatmap/overlay files written, records made.

Everything that scales with the original's pixels (decoding the original again for the overlay, mapping
the CAM onto it, quantising, colouring, blending, encoding, the atomic writes) runs in `render_image`, in
a pool of render worker processes, off the process that feeds the model. What crosses to a worker per
image is small: the CAMs at the model input size, the geometry, and where the source is (its path or
archive member; a tar member's compressed bytes). A decoded full-size original never crosses a process
boundary, and each worker holds one image's full-resolution work at a time, so memory is bounded by the
number of render workers, not by the batch size.

`render_batch` (records and jobs of one batch) is shared by both backends: the local one hands the jobs
to a `RenderPool`, the Ray actors run them in threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from gradcam_cli.config import Config
from gradcam_cli.engine import CamBatch
from gradcam_cli.engine.metrics import finite_or_none
from gradcam_cli.errors import EXIT_INTERNAL, GradcamError, OutputError
from gradcam_cli.io.decode import ImageReadError, decode_bgr
from gradcam_cli.io.discovery import ImageSource
from gradcam_cli.io.encode import OVERLAY_SUFFIXES
from gradcam_cli.io.geometry import Geometry, grey_levels, to_original_frame
from gradcam_cli.io.manifest import RecordsWriter
from gradcam_cli.io.outputs import (
    HEATMAPS,
    OVERLAYS,
    RAW,
    OutputJob,
    output_files,
    output_name,
    thumbnail_name,
    write_outputs,
)
from gradcam_cli.runner.device_decode import device_overlays
from gradcam_cli.runner.loader import DecodedBatch, SourceReader
from gradcam_cli.runner.prepare import PreparedRun
from gradcam_cli.runner.records import TOP_PREDICTIONS, error_record, label_of, ok_record
from gradcam_cli.runner.signals import worker_ignores_interrupts


class RenderWorkerDied(GradcamError):
    """A render worker process died (killed, out of memory): the run stops; records written so far stay valid."""

    exit_code = EXIT_INTERNAL


@dataclass(frozen=True)
class RenderSettings:
    """What the output config asks of every image's files (the same for a whole run)."""

    heatmaps: bool
    overlays: bool
    colormap: str
    alpha: float
    png_compression: int
    overlay_format: str
    overlay_quality: int
    overlay_max_side: int | None
    raw: bool
    report: bool
    max_pixels: int  # the original is decoded again for the overlay, under the same limits
    max_bytes: int | None = None

    @classmethod
    def of(cls, config: Config) -> RenderSettings:
        output = config.output
        return cls(
            heatmaps=output.heatmaps,
            overlays=output.overlays,
            colormap=output.colormap,
            alpha=output.alpha,
            png_compression=output.png_compression,
            overlay_format=output.overlay_format,
            overlay_quality=output.overlay_quality,
            overlay_max_side=output.overlay_max_side,
            raw=output.raw,
            report=output.report,
            max_pixels=config.input.max_pixels,
            max_bytes=config.input.max_file_bytes,
        )


@dataclass
class RenderJob:
    """One image's full-resolution work, small enough to send to a worker process."""

    out_dir: Path
    source: ImageSource
    sha256: str | None  # what the decode stage read; the original read again for the overlay must match
    geometry: Geometry
    names: list[str]  # per explained class, below heatmaps/ (and raw/)
    overlay_names: list[str]  # per explained class, below overlays/
    cams: np.ndarray  # (K, H, W) float32 in [0, 1] at the model input size
    raw: np.ndarray | None  # (K, h, w) float32 raw CAMs at feature resolution (output.raw)
    settings: RenderSettings
    overlay_data: list[bytes] | None = None  # per class: overlays already encoded on the model's device


_READERS: dict[int | None, SourceReader] = {}  # per process and size cap: zip archives stay open between images


def render_image(job: RenderJob) -> tuple[str, str] | None:
    """Write one image's files; None when written, else (kind, message) for its error record.

    Reading and decoding the original can fail per image (it changed, it no longer fits in memory):
    that becomes an error record. A failing write (disk full, permissions) raises OSError: it stops
    the run (exit 4)."""
    settings = job.settings
    output: OutputJob | None = None
    try:
        original = _original(job) if settings.overlays and job.overlay_data is None else None
        cams = torch.from_numpy(job.cams)
        heatmaps = grey_levels(to_original_frame(cams, job.geometry))
        output = OutputJob(
            out_dir=job.out_dir,
            names=job.names,
            heatmaps=heatmaps,
            original=original,
            write_heatmaps=settings.heatmaps,
            colormap=settings.colormap,
            alpha=settings.alpha,
            compression=settings.png_compression,
            thumbnail=thumbnail_name(job.source.path) if settings.report else None,
            overlay_names=job.overlay_names,
            overlay_format=settings.overlay_format,
            overlay_quality=settings.overlay_quality,
            overlay_max_side=settings.overlay_max_side,
            overlay_data=job.overlay_data,
        )
        if job.raw is not None:
            raw = torch.from_numpy(job.raw)
            at_input = F.interpolate(raw[:, None], size=job.geometry.model, mode="bilinear", align_corners=False)
            output.raw_feature = job.raw
            output.raw_original = to_original_frame(at_input[:, 0], job.geometry).numpy()
        write_outputs(output)
    except ImageReadError as exc:
        return (exc.kind, f"the original could not be read again for its overlay: {exc}")
    except MemoryError:
        if output is not None:  # part of its files may be written: an error record names none of them
            for path in output_files(output):
                path.unlink(missing_ok=True)
        return ("MemoryError", "not enough memory to render the image at its original size")
    return None


def _original(job: RenderJob) -> np.ndarray:
    """The original as displayed (BGR uint8), decoded from the bytes the decode stage hashed."""
    cap = job.settings.max_bytes
    reader = _READERS.get(cap)
    if reader is None:
        reader = _READERS[cap] = SourceReader(cap)
    data = reader.read(job.source)
    if job.sha256 is not None and hashlib.sha256(data).hexdigest() != job.sha256:
        raise ImageReadError("SourceChanged", "the file changed while it was processed; rerun to explain it")
    return decode_bgr(data, job.settings.max_pixels, job.geometry.original)


def render_batch(
    prepared: PreparedRun,
    out_dir: Path,
    batch: DecodedBatch,
    result: CamBatch | None,
    submit: Callable[[RenderJob], object],
    originals: dict[int, torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """A batch's records, in input order; each ok image's render job goes to `submit` as soon as it is
    ready. One device-to-host copy per batch (`CamBatch.host`): the jobs carry numpy arrays (no
    shared-memory tensors). `originals` (item index -> original on the model's device, from
    preprocess.device_decode): their JPEG overlays are made there and the jobs carry the encoded bytes."""
    config = prepared.config
    labels = prepared.model.labels
    settings = RenderSettings.of(config)
    several = prepared.targets.count > 1
    overlay_suffix = OVERLAY_SUFFIXES[config.output.overlay_format]
    records: list[dict[str, Any]] = []
    if result is not None:
        host = result.host(cams=True, raw=config.output.raw)  # one device-to-host copy per batch
        cams, raws = host.cams, host.raw
        probabilities_all = torch.from_numpy(host.probabilities)
        classes_all = host.class_indices.tolist()
        raw_max_all = host.raw_max.tolist()
        quality_all = host.quality
        metrics_all = (
            {name: values.tolist() for name, values in host.metrics.items()} if host.metrics is not None else None
        )
    position = {item_index: row for row, item_index in enumerate(batch.ok)}
    overlays_on_device = _overlays_on_device(settings, batch, result, originals, position)
    for index, item in enumerate(batch.items):
        if item.skipped:
            continue
        if item.error is not None:
            records.append(error_record(item.source, item.sha256, *item.error))
            continue
        assert result is not None and item.geometry is not None and item.size is not None
        row = position[index]
        classes = classes_all[row]
        probabilities = probabilities_all[row]
        if not bool(torch.isfinite(probabilities).all()):  # NaN/Inf weights, or NaN logits for this image
            message = "the model returned non-finite class scores (NaN or Inf) for this image; nothing to explain"
            records.append(error_record(item.source, item.sha256, "NonFiniteScores", message))
            continue
        top = probabilities.topk(min(TOP_PREDICTIONS, probabilities.numel()))
        names = [output_name(item.source.path, c, several) for c in classes]
        overlay_names = [output_name(item.source.path, c, several, overlay_suffix) for c in classes]
        submit(
            RenderJob(
                out_dir=out_dir,
                source=item.source,
                sha256=item.sha256,
                geometry=item.geometry,
                names=names,
                overlay_names=overlay_names,
                cams=cams[row],
                raw=raws[row] if raws is not None else None,
                settings=settings,
                overlay_data=overlays_on_device.get(index),
            )
        )
        cam_entries = []
        for rank, (class_index, name) in enumerate(zip(classes, names, strict=True)):
            entry: dict[str, Any] = {
                "rank": rank,
                "class_index": class_index,
                "label": label_of(labels, class_index),
                "score": round(float(probabilities[class_index]), 6),
                "heatmap": f"{HEATMAPS}/{name}" if config.output.heatmaps else None,
                "overlay": f"{OVERLAYS}/{overlay_names[rank]}" if config.output.overlays else None,
                "raw_max": float(raw_max_all[row][rank]),
                "quality": quality_all[row][rank],
            }
            if metrics_all is not None:  # cam.metrics: only then, so records without metrics stay as they were
                entry["metrics"] = {name: finite_or_none(values[row][rank]) for name, values in metrics_all.items()}
            if config.output.raw:
                entry["raw"] = f"{RAW}/{name.removesuffix('.png')}.npy"
                entry["raw_feature"] = f"{RAW}/{name.removesuffix('.png')}.feature.npy"
            cam_entries.append(entry)
        predictions = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        records.append(ok_record(item.source, item.sha256, item.size, predictions, labels, cam_entries))
    return records


def _overlays_on_device(
    settings: RenderSettings,
    batch: DecodedBatch,
    result: CamBatch | None,
    originals: dict[int, torch.Tensor] | None,
    rows: dict[int, int],
) -> dict[int, list[bytes]]:
    """JPEG overlays of the images whose originals are on the model's device (device_decode.overlays_on_device:
    only those are kept); PNG/WebP overlays and previews are left to the render workers."""
    if not originals or result is None:
        return {}
    geometries = {i: batch.items[i].geometry for i in originals}
    return device_overlays(
        originals,
        result.cams,
        rows,
        geometries,
        settings.colormap,
        settings.alpha,
        settings.overlay_quality,  # type: ignore[arg-type]
    )


def with_render_outcome(record: dict[str, Any], outcome: tuple[str, str] | None, job: RenderJob) -> dict[str, Any]:
    """The record as it stands once its files are written: an ok record whose render failed is an error."""
    if outcome is None or record["status"] != "ok":
        return record
    return error_record(job.source, job.sha256, *outcome)


def _start_render_worker(parent: int) -> None:
    worker_ignores_interrupts(parent)
    torch.set_num_threads(1)  # one image at a time per worker; the cores are shared out by the run
    # OpenCV is single-threaded here too, set by the parent around the fork (`_one_opencv_thread`)


def _nothing() -> None:
    return None


@contextlib.contextmanager
def _one_opencv_thread() -> Iterator[None]:
    """Fork workers that inherit a one-thread OpenCV. Setting it in a forked child instead would wait forever
    for the parent's OpenCV pool threads, which the child does not have (once this process has used them)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


class RenderPool:
    """Render workers (processes, or threads of this process with `processes=0`) and the records that
    wait for their files: a batch's records are appended once all its files are written, one batch behind
    the model. Every way out (`close`, `abort`) leaves no worker behind."""

    def __init__(self, records: RecordsWriter, processes: int, threads: int = 2) -> None:
        self.records = records
        self.processes = processes
        self.pool: Executor
        if processes > 0:
            # fork: a worker starts in milliseconds; created before the decode workers and threads start
            context = multiprocessing.get_context("fork")
            self.pool = ProcessPoolExecutor(
                processes, mp_context=context, initializer=_start_render_worker, initargs=(os.getpid(),)
            )
            # start every worker now, while this process has few threads (one task per worker, all at once:
            # also where an executor would start its workers one by one, on demand)
            with _one_opencv_thread():
                for started in [self.pool.submit(_nothing) for _ in range(processes)]:
                    started.result()
        else:
            self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gradcam-render")
        # per batch: its records, and per ok record's row its render job and the job's future
        self.pending: deque[tuple[list[dict[str, Any]], dict[int, tuple[RenderJob, Future]]]] = deque()

    def submit(
        self,
        prepared: PreparedRun,
        out_dir: Path,
        batch: DecodedBatch,
        result: CamBatch | None,
        originals: dict[int, torch.Tensor] | None = None,
    ) -> list:
        """Start rendering a batch; returns its records as they will be (before render failures)."""
        jobs: list[RenderJob] = []
        records = render_batch(prepared, out_dir, batch, result, jobs.append, originals)
        ok_rows = [i for i, record in enumerate(records) if record["status"] == "ok"]
        try:
            futures = {row: (job, self.pool.submit(render_image, job)) for row, job in zip(ok_rows, jobs, strict=True)}
        except BrokenProcessPool:
            raise self._died() from None
        self.pending.append((records, futures))
        return records

    def _died(self) -> RenderWorkerDied:
        return RenderWorkerDied(
            "a render worker process died (killed, or out of memory: see runtime.render_workers and "
            "output.overlay_max_side); the run stopped. Records written so far in "
            f"{self.records.path} stay valid; rerun to resume."
        )

    def drain(self, keep: int = 0) -> list[dict[str, Any]]:
        """Wait for all but `keep` batches of files; append their records. Returns the records written."""
        written: list[dict[str, Any]] = []
        while len(self.pending) > keep:
            records, futures = self.pending.popleft()
            try:
                final = list(records)
                for row, (job, future) in futures.items():
                    final[row] = with_render_outcome(records[row], future.result(), job)
                self.records.write_batch(final)
            except BrokenProcessPool:
                raise self._died() from None
            except OSError as exc:
                raise OutputError(
                    f"cannot write to the output folder {self.records.path.parent}: {exc.strerror or exc}. "
                    f"Records written so far in {self.records.path} stay valid."
                ) from None
            written.extend(final)
        return written

    def close(self) -> None:
        """Normal end: the workers finish what they have and exit."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Any other way out: drop queued work and kill the workers (they ignore SIGTERM by design)."""
        self.pending.clear()
        processes = list(getattr(self.pool, "_processes", {}).values()) if self.processes else []
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
        for process in processes:
            process.join(timeout=5)
