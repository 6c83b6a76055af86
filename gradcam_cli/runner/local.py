"""The single-machine backend: decode workers feed the model in this process; a writer pool writes files.

still to do -> decode workers (loader) -> normalise -> CamEngine -> render_batch -> writer pool
            -> records.jsonl, durable per batch, one batch behind the model
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import torch

from gradcam_cli.config import Config
from gradcam_cli.io.manifest import RecordsWriter
from gradcam_cli.runner.job import RunJob
from gradcam_cli.runner.loader import DecodeDataset, decoded_batches, normalise
from gradcam_cli.runner.options import RunOptions, RunSummary, progress_bar
from gradcam_cli.runner.prepare import resolve_workers
from gradcam_cli.runner.render import BatchWriter
from gradcam_cli.runner.signals import StopSignals


def require() -> None:
    """Nothing optional to install."""


def driver_config(config: Config) -> Config:
    return config


def connect(config: Config, options: RunOptions) -> Callable[[], None] | None:
    return None


def stream(job: RunJob) -> RunSummary:
    """The streaming stages; records are durable per batch whatever stops the loop."""
    prepared, options = job.prepared, job.options
    config = prepared.config
    summary, clock = RunSummary.start(job.out_dir)
    progress = progress_bar(options.quiet)
    todo, walked_all = job.todo(summary)
    dataset = DecodeDataset(config.preprocess, config.input, keep_original=config.output.overlays)
    workers = resolve_workers(config.runtime.workers)
    batches = decoded_batches(
        todo, dataset, config.runtime.batch_size, workers, pin_memory=prepared.device.type == "cuda"
    )
    records = RecordsWriter(job.records_path)
    writer = BatchWriter(prepared, job.out_dir, records, threads=max(2, min(8, os.cpu_count() or 2)))

    def account(written: list[dict[str, Any]]) -> None:
        summary.account(written, job.events, progress)

    prepared.engine.show_progress = not options.quiet
    try:
        with StopSignals() as stop, prepared.engine:
            mark = time.perf_counter()
            for batch in batches:
                mark = summary.lap("decode", mark)  # time the main loop waited for decoded batches
                summary.count_skipped(sum(1 for item in batch.items if item.skipped))
                result = None
                if batch.pixels is not None:
                    images = normalise(batch.pixels, config.preprocess, prepared.device)
                    result = prepared.engine.explain(images, prepared.targets)
                    if prepared.device.type == "cuda":
                        torch.cuda.synchronize(prepared.device)  # attribute GPU time to compute
                mark = summary.lap("compute", mark)
                submitted = writer.submit(batch, result)
                mark = summary.lap("render", mark)
                account(writer.drain(keep=1))
                mark = summary.lap("encode", mark)  # time waiting for the writer pool
                if summary.stop_after_batch(stop.signum, options.fail_fast, submitted):
                    break
            else:
                summary.complete = walked_all()
            account(writer.drain())
            summary.lap("encode", mark)
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
