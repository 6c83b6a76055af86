"""The output stage: CAMs mapped onto each original image, heatmap/overlay files written, records made.

`render_batch` is shared by both backends (the local writer pool below and the Ray actors), so they give
the same records and files.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from gradcam_cli.engine import CamBatch
from gradcam_cli.errors import OutputError
from gradcam_cli.io.geometry import to_original_frame
from gradcam_cli.io.manifest import RecordsWriter
from gradcam_cli.io.outputs import HEATMAPS, OVERLAYS, RAW, OutputJob, output_name, thumbnail_name, write_outputs
from gradcam_cli.runner.loader import DecodedBatch
from gradcam_cli.runner.prepare import PreparedRun
from gradcam_cli.runner.records import TOP_PREDICTIONS, error_record, label_of, ok_record


def render_batch(
    prepared: PreparedRun,
    out_dir: Path,
    batch: DecodedBatch,
    result: CamBatch | None,
    write: Callable[[OutputJob], object],
) -> list[dict[str, Any]]:
    """A batch's records, in input order; each image's output job goes to `write` as soon as it is ready."""
    config = prepared.config
    labels = prepared.model.labels
    several = prepared.targets.count > 1
    records: list[dict[str, Any]] = []
    position = {item_index: row for row, item_index in enumerate(batch.ok)}
    for index, item in enumerate(batch.items):
        if item.skipped:
            continue
        if item.error is not None:
            records.append(error_record(item.source, item.sha256, *item.error))
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
            at_input = torch.nn.functional.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)[
                :, 0
            ]
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
        predictions = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        records.append(ok_record(item.source, item.sha256, item.size, predictions, labels, cams))
    return records


class BatchWriter:
    """Turns engine results into output jobs and records, writing in a thread pool one batch behind."""

    def __init__(self, prepared: PreparedRun, out_dir: Path, records: RecordsWriter, threads: int) -> None:
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
