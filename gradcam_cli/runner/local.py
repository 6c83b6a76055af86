"""The single-machine backend: decode workers feed the model in this process; a writer pool writes files.

still to do -> decode workers (loader) -> normalise -> CamEngine -> render_batch -> writer pool
            -> records.jsonl, durable per batch, one batch behind the model
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import torch

from gradcam_cli.config import Config
from gradcam_cli.io.manifest import RecordsWriter
from gradcam_cli.runner.device_decode import complete_on_device, overlays_on_device
from gradcam_cli.runner.heap import keep_large_blocks
from gradcam_cli.runner.job import RunJob
from gradcam_cli.runner.loader import DecodeDataset, decoded_batches, normalise
from gradcam_cli.runner.options import RunOptions, RunSummary, progress_bar
from gradcam_cli.runner.prepare import NondeterministicOps, split_cores
from gradcam_cli.runner.render import RenderPool
from gradcam_cli.runner.resume import TouchedFiles
from gradcam_cli.runner.signals import StopSignals


def require() -> None:
    """Nothing optional to install."""


def driver_config(config: Config) -> Config:
    return config


def connect(config: Config, options: RunOptions) -> Callable[[], None] | None:
    return None


def stream(job: RunJob) -> RunSummary:
    """The streaming stages; records are durable per batch whatever stops the loop, and no worker
    process outlives it, however it ends."""
    prepared, options = job.prepared, job.options
    config = prepared.config
    cores = split_cores(config.runtime.workers, config.runtime.render_workers, config.runtime.threads, prepared.device)
    torch.set_num_threads(cores.threads)
    keep_large_blocks()  # before any worker forks: they inherit it
    records = RecordsWriter(job.records_path)
    try:
        renderer = RenderPool(records, cores.render)  # forked first, before any other worker or thread starts
    except BaseException:
        records.close()
        raise
    summary, clock = RunSummary.start(job.out_dir)
    progress = None
    batches = None

    def account(written: list[dict[str, Any]]) -> list[dict[str, Any]]:
        summary.account(written, job.events, progress)
        return written

    prepared.engine.show_progress = not options.quiet
    if prepared.engine.metrics is not None:
        summary.metric_passes = 0
    touched = TouchedFiles()
    finished = False
    try:
        progress = progress_bar(options.quiet)
        todo, walked_all = job.todo(summary)
        dataset = DecodeDataset(config.preprocess, config.input)
        batches = decoded_batches(
            todo, dataset, config.runtime.batch_size, cores.decode, pin_memory=prepared.device.type == "cuda"
        )
        with StopSignals() as stop, NondeterministicOps() as nondeterministic, prepared.engine:
            mark = time.perf_counter()
            for batch in batches:
                mark = summary.lap("decode", mark)  # time the main loop waited for decoded batches
                for item in batch.items:
                    if item.skipped:
                        touched.add(item.source.path, item.source.file_size, item.source.mtime_ns)
                        summary.count_skipped(1)
                result = None
                originals = (
                    complete_on_device(batch, dataset, prepared.device, overlays_on_device(config.output))
                    if batch.encoded
                    else None
                )
                if batch.pixels is not None:
                    images = normalise(batch.pixels, config.preprocess, prepared.device)
                    result = prepared.engine.explain(images, prepared.targets)
                    summary.count_metric_passes(result.metric_passes)
                    if prepared.device.type == "cuda":
                        torch.cuda.synchronize(prepared.device)  # attribute GPU time to compute
                mark = summary.lap("compute", mark)
                submitted = renderer.submit(prepared, job.out_dir, batch, result, originals)
                originals = None  # the batch's originals on the device are freed before the next batch
                mark = summary.lap("render", mark)  # handing the batch's jobs to the render workers
                written = account(renderer.drain(keep=1))  # with render failures: what --fail-fast sees too
                mark = summary.lap("encode", mark)  # waiting for the render workers
                if summary.stop_after_batch(stop.signum, options.fail_fast, submitted + written):
                    break
            else:
                summary.complete = walked_all()
            account(renderer.drain())
            summary.lap("encode", mark)
            touched.write(records, job.records_path)
            finished = True
        summary.nondeterministic_ops = sorted(nondeterministic.ops)
    except KeyboardInterrupt:
        # A second Ctrl-C (or one outside the handler's reach): stop now. Files are atomic and records
        # are only appended for complete batches, so what is on disk stays consistent.
        summary.interrupted_by = summary.interrupted_by or signal.SIGINT
    finally:
        if batches is not None:
            batches.close()  # stops the decode workers, whatever happened
        if finished:
            renderer.close()
        else:
            renderer.abort()
        records.close()
        if progress is not None:
            progress.close()
    summary.seconds = time.perf_counter() - clock
    return summary
