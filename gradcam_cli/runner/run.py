"""`gradcam run` as a library call: set-up (validated, nothing written), then a backend streams the images.

check inputs -> lock the folder -> refuse another config -> prepare (model, layers, targets)
  -> the chosen backend: what is still to do -> decode -> CAMs -> render -> records.jsonl
  -> manifest.json (a shard: its marker; the last shard merges) -> the gallery, if asked for
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradcam_cli import __version__
from gradcam_cli.config import Config
from gradcam_cli.errors import ConfigError, GradcamError, GradcamWarning, OutputError
from gradcam_cli.events import EventLog
from gradcam_cli.io.discovery import STDIN, check_inputs
from gradcam_cli.io.files import remove_stale_temp_files
from gradcam_cli.io.manifest import (
    NORMALIZATION,
    RECORDS_NAME,
    load_done,
    read_manifest,
    read_run_info,
    repair_records,
    write_manifest,
)
from gradcam_cli.io.outputs import HEATMAPS, OVERLAYS, linked_result_folder
from gradcam_cli.models.sources import with_source_defaults
from gradcam_cli.reports.gallery import write_report
from gradcam_cli.runner.backends import backend_named, check_backend_name
from gradcam_cli.runner.job import RunJob
from gradcam_cli.runner.lock import OutputLock
from gradcam_cli.runner.options import RunOptions, RunSummary, Warned
from gradcam_cli.runner.resume import check_previous_config, claim_run_info, clear_results
from gradcam_cli.runner.shards import Shard, ShardMergeError, clear_marker, complete_markers, merge, write_marker
from gradcam_cli.runner.todo import still_to_do

if TYPE_CHECKING:
    from gradcam_cli.io.identity import RunIdentity
    from gradcam_cli.runner.prepare import PreparedRun


def run(config: Config, options: RunOptions) -> RunSummary:
    """Explain every image of `options.inputs`; returns the summary (the manifest is on disk).

    Order matters for "nothing written on a config error": inputs, config and model are validated, and
    an existing output folder is locked and checked, before anything is created or changed.
    """
    inputs = check_inputs(options.inputs)
    config = with_source_defaults(config)
    out_dir = config.output.dir.resolve()
    check_output_folder(out_dir, inputs)
    events = options.events or EventLog(None)
    shard = options.shard
    if shard is not None and options.overwrite:
        raise ConfigError(
            "--overwrite cannot be combined with --shard: shards share the output folder, and one shard must "
            "not delete the others' results. Remove the old results first (their heatmaps/, overlays/, records "
            "and run.json), or choose a new --output."
        )
    check_backend_name(options.backend)
    records_path = out_dir / (shard.records_name if shard else RECORDS_NAME)
    with contextlib.ExitStack() as stack:
        warned = stack.enter_context(Warned())
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
                unchanged = _nothing_to_do(config, inputs, out_dir, records_path, options, events, warned)
                if unchanged is not None:
                    return unchanged
        backend = backend_named(options.backend)
        backend.require()  # a missing extra is a usage error, before anything is written
        from gradcam_cli.runner.prepare import prepare  # torch: only once there is something to explain

        prepared = prepare(config, build=backend.driver_config(config))
        shutdown = backend.connect(config, options)
        if shutdown is not None:
            stack.callback(shutdown)
        if not locked:  # a new folder (or one another run, e.g. a sibling shard, created meanwhile)
            _prepare_output(out_dir)
            for lock in locks:
                stack.enter_context(lock)
        if options.overwrite:
            clear_results(out_dir)
        _prepare_output(out_dir, remove_stale=shard is None)  # shards share the folder: only a plain run
        repair_records(records_path)
        identity = claim_run_info(out_dir, config, records_path)  # shards starting together agree on one identity
        if shard is not None:
            clear_marker(out_dir, shard)  # complete again only when this run goes through all its images
        done = load_done(records_path) if options.resume else {}
        if locks[-1].took_over:  # a crashed run's lock: the kernel released it, we say so for the logs
            events.emit("stale_lock_taken_over", previous_holder=locks[-1].took_over)
        events.emit(
            "run_started",
            config_hash=identity.hash,
            inputs=inputs,
            out_dir=str(out_dir),
            device=str(prepared.device),
            already_done=len(done),
            **({"shard": shard.label} if shard else {}),
            **({"engine": options.backend} if options.backend != "local" else {}),
        )
        summary = backend.stream(RunJob(prepared, inputs, out_dir, done, options, events, records_path))
        if summary.nondeterministic_ops:
            warnings.warn(
                f"no deterministic kernel on {prepared.device.type} for {', '.join(summary.nondeterministic_ops)}: "
                "reruns may differ in the last bits of some heatmap pixels (manifest: nondeterministic_ops).",
                GradcamWarning,
                stacklevel=2,
            )
        if not summary.complete and STDIN not in inputs:
            summary.left = _left_to_do(config, inputs, out_dir, records_path, shard)
        if summary.total == 0 and summary.complete:
            warnings.warn(
                "the inputs hold no images to explain (check --input, input.extensions, input.include/exclude)",
                GradcamWarning,
                stacklevel=2,
            )
        summary.warnings = warned.messages
        header = _manifest_header(prepared, summary, identity)
        if shard is None:
            summary.manifest, summary.folder = write_manifest(out_dir, header, summary.run_block())
        else:
            summary.manifest = _finish_shard(out_dir, shard, identity.hash, header, summary, events)
        publish(out_dir, summary.manifest, prepared.config.output.report)
        events.emit("run_finished", summary=summary.as_dict())
    return summary


def _nothing_to_do(
    config: Config,
    inputs: list[str],
    out_dir: Path,
    records_path: Path,
    options: RunOptions,
    events: EventLog,
    warned: Warned,
) -> RunSummary | None:
    """A rerun of a finished folder with nothing new (the nightly cron over an unchanged archive): the
    manifest is rewritten with this run's counts, in well under a second, without building the model (nor
    importing torch, except for timm and ONNX configs, whose preprocessing defaults come from those
    libraries). None when there is anything to do (or no earlier manifest to take the model's description
    from): the run goes the usual way."""
    if not options.resume or options.shard is not None or STDIN in inputs or not records_path.exists():
        return None
    try:
        previous = read_manifest(out_dir)
    except GradcamError:
        return None
    summary, clock = RunSummary.start(out_dir)
    done = load_done(records_path)
    todo, walked_all = still_to_do(
        config, inputs, out_dir, done, None, options.limit, None, lambda _: summary.count_skipped(1), read_members=False
    )
    if next(todo, None) is not None:
        return None
    summary.complete = walked_all()
    try:
        identity = claim_run_info(out_dir, config, records_path)  # run.json of an older release gets its identity
        remove_stale_temp_files(out_dir)  # a plain run holding the folder lock, as _prepare_output would
        summary.seconds = time.perf_counter() - clock
        events.emit(
            "run_started",
            config_hash=identity.hash,
            inputs=inputs,
            out_dir=str(out_dir),
            device=previous.get("device"),
            already_done=len(done),
        )
        header = {
            key: value for key, value in previous.items() if key not in ("images", "summary", "run", "schema_version")
        }
        header.update(
            config=config.model_dump(mode="json"),
            started_at=summary.started_at.isoformat(timespec="seconds"),
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            warnings=warned.messages,
            tool={"name": "gradcam-cli", "version": __version__},
        )
        summary.warnings = warned.messages
        summary.manifest, summary.folder = write_manifest(out_dir, header, summary.run_block())
        publish(out_dir, summary.manifest, config.output.report)
        events.emit("run_finished", summary=summary.as_dict())
    except OSError as exc:  # as _prepare_output would say it: exit 4, records stay valid
        raise OutputError(f"cannot write to the output folder {out_dir}: {exc.strerror or exc}.") from None
    return summary


def _left_to_do(config: Config, inputs: list[str], out_dir: Path, records_path: Path, shard: Shard | None) -> int:
    """How many images a rerun would still do (a fresh walk; nothing is decoded)."""
    todo, _ = still_to_do(
        config, inputs, out_dir, load_done(records_path), shard, None, None, lambda _: None, read_members=False
    )
    return sum(1 for _ in todo)


def publish(out_dir: Path, manifest: Path | None, report: bool) -> None:
    """What follows a written manifest: the gallery (index.html), when the config asks for it."""
    if report and manifest is not None:
        write_report(out_dir)


def merge_shards(out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """`gradcam merge`: the shards' manifest, then what the folder's config asks to follow it."""
    path, counts = merge(out_dir)
    config = (read_run_info(path.parent) or {}).get("config") or {}
    publish(path.parent, path, bool(config.get("output", {}).get("report")))
    return path, counts


def check_output_folder(out_dir: Path, inputs: list[str] | None = None) -> None:
    """Refuse (exit 2) an output folder that is one of the input folders, or whose result folders are or
    hold symbolic links (results would be written wherever they point)."""
    for item in inputs or []:
        if item != STDIN and os.path.isdir(item) and Path(item).resolve() == out_dir:
            raise ConfigError(
                f"the output folder {out_dir} is also an --input folder: results would be mixed with the images "
                "(and never read back as inputs, so nothing would be done). Choose another --output."
            )
    linked = linked_result_folder(out_dir)
    if linked is not None:
        raise ConfigError(
            f"{linked} is a symbolic link: results written below it would land in {os.path.realpath(linked)}, "
            "outside the output folder. Remove the link (or replace it with a real folder), or choose another "
            "--output."
        )


def _prepare_output(out_dir: Path, remove_stale: bool = False) -> None:
    """Make the output folder and check it can be written; with `remove_stale` (the folder lock held
    alone), delete temporary files a killed run left (e.g. `.manifest.json.*.tmp`)."""
    check_output_folder(out_dir)
    if remove_stale:
        remove_stale_temp_files(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for sub in (HEATMAPS, OVERLAYS):
            (out_dir / sub).mkdir(exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {out_dir}: {exc.strerror or exc}.") from None


def _finish_shard(
    out_dir: Path, shard: Shard, config_hash: str, header: dict[str, Any], summary: RunSummary, events: EventLog
) -> Path | None:
    """Mark the shard complete when it went through all of its images; the last one to finish merges."""
    if not summary.complete:
        summary.note = f"shard {shard.label} stopped before its end: not complete; rerun it to resume"
        return None
    counts = {"total": summary.total, "ok": summary.ok, "failed": summary.failed, "skipped": summary.skipped}
    if summary.metric_passes is not None:
        counts["metric_passes"] = summary.metric_passes  # the merged manifest's run.metric_passes
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


def _manifest_header(prepared: PreparedRun, summary: RunSummary, identity: RunIdentity) -> dict[str, Any]:
    config = prepared.config
    header = _plain_header(prepared, summary, identity)
    settings = prepared.engine.metrics
    if settings is not None:  # only with cam.metrics: a manifest without them stays as it was
        from gradcam_cli.engine.metrics import HIGHER_IS_BETTER, passes_per_cam

        height, width = config.preprocess.size
        header["metrics"] = {
            "names": list(settings.names),
            "metric_steps": settings.steps,
            "road_percentiles": list(settings.percentiles),
            "higher_is_better": {name: HIGHER_IS_BETTER[name] for name in settings.names},
            "passes_per_cam": passes_per_cam(settings, height * width),
        }
    return header


def _plain_header(prepared: PreparedRun, summary: RunSummary, identity: RunIdentity) -> dict[str, Any]:
    config = prepared.config
    return {
        "tool": {"name": "gradcam-cli", "version": __version__},
        "config": config.model_dump(mode="json"),
        "config_hash": identity.hash,
        "identity": identity.parts,
        "model": dict(prepared.model.description, num_classes=prepared.num_classes),
        "method": config.cam.method,
        "target_layer": prepared.layer_names[0] if len(prepared.layer_names) == 1 else prepared.layer_names,
        "targets": config.cam.targets,
        "device": summary.device or str(prepared.device),
        "precision": config.runtime.precision,
        "normalization": NORMALIZATION,
        "nondeterministic_ops": summary.nondeterministic_ops,
        "warnings": summary.warnings,
        "started_at": summary.started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
