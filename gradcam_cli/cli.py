"""The `gradcam` command line: parse, call one library function, map errors to exit codes.

Nothing heavy is imported at module level so `gradcam --help` stays fast (no torch).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gradcam_cli import __version__
from gradcam_cli.errors import EXIT_INTERNAL, GradcamError, GradcamWarning

if TYPE_CHECKING:
    from gradcam_cli.events import EventLog

app = typer.Typer(
    name="gradcam",
    help="Explain image classifiers with Grad-CAM: heatmaps, overlays and a JSON manifest for every image.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _fail(error: GradcamError) -> typer.Exit:
    typer.echo(f"gradcam: error: {error}", err=True)
    return typer.Exit(code=error.exit_code)


@contextlib.contextmanager
def _warnings_to_user(quiet: bool, events: EventLog | None = None) -> Iterator[None]:
    """Library code warns through `warnings` (GradcamWarning); here, at the edge, each becomes one line on
    stderr (not with --quiet) and a `warning` event in --log-file. Other warnings keep Python's handling."""
    with warnings.catch_warnings():
        warnings.simplefilter("default", GradcamWarning)
        show_other = warnings.showwarning

        def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if not issubclass(category, GradcamWarning):
                show_other(message, category, *args, **kwargs)
                return
            if not quiet:
                typer.echo(f"gradcam: warning: {message}", err=True)
            if events is not None:
                events.emit("warning", message=str(message))

        warnings.showwarning = show
        yield


def _internal_error(error: BaseException, debug: bool = False, events: EventLog | None = None) -> typer.Exit:
    """An unexpected exception: one paragraph (what failed, where, where the traceback went) and exit 5.

    The workers are already stopped by the run's own shutdown; this only reports."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    where = f" in {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else ""
    full = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if events is not None:
        events.emit("run_failed", error=f"{type(error).__name__}: {error}", traceback=full)
    if debug:
        typer.echo(full.rstrip(), err=True)
    told = "the full traceback is above" if debug else "rerun with --debug to see the full traceback"
    if events is not None and events.path is not None:
        told = f"the full traceback is in {events.path}" + ("" if debug else " (or rerun with --debug)")
    typer.echo(
        f"gradcam: error: unexpected {type(error).__name__}{where}: {str(error).strip() or 'no message'}. The run "
        f"stopped and its worker processes were shut down; records written so far stay valid and a rerun resumes. "
        f"{told[0].upper() + told[1:]}.",
        err=True,
    )
    return typer.Exit(code=EXIT_INTERNAL)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradcam-cli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Explain image classifiers with Grad-CAM."""


ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file (see README).")]


def _overrides(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


@app.command()
def run(
    config: ConfigOption,
    inputs: Annotated[
        list[str],
        typer.Option(
            "--input", "-i", help="Image folder (recursive), image file, or - for paths on stdin. Repeatable."
        ),
    ],
    output: Annotated[  # a str, not a Path: Path("") would be "." and `-o ""` must be refused, not the cwd
        str | None, typer.Option("--output", "-o", help="Output folder (overrides output.dir).")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="CAM method (overrides cam.method): gradcam, gradcam++, xgradcam, hirescam, gradcam-elementwise, "
            "layercam, eigencam, eigengradcam, scorecam, ablationcam."
        ),
    ] = None,
    target_layer: Annotated[
        str | None, typer.Option(help="Dotted module name(s), comma-separated, or auto (overrides model.target_layer).")
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Explain the top K predicted classes (cam.targets: topk).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (overrides runtime.batch_size).")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda | cuda:N | mps (overrides runtime.device).")
    ] = None,
    workers: Annotated[
        str | None, typer.Option(help="Decode worker processes, or auto (overrides runtime.workers).")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="fp32 | tf32 | bf16 | fp16 (overrides runtime.precision).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Process at most N images.")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first image that fails.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary line.")] = False,
    no_resume: Annotated[
        bool, typer.Option("--no-resume", help="Reprocess every image, even those an earlier run finished.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace results of a different config in the output folder.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be processed, skipped and ignored; load no model.")
    ] = False,
    log_file: Annotated[Path | None, typer.Option(help="Append run events to this file (for log shippers).")] = None,
    log_format: Annotated[str, typer.Option(help="Event format in --log-file: json or text.")] = "json",
    json_summary: Annotated[bool, typer.Option("--json", help="Print the final summary as JSON on stdout.")] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="On an unexpected error, print the full traceback (exit code 5).")
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="K/N: process shard K of N, counted from 1 (1/8 .. 8/8; from a Slurm array "
            "$((SLURM_ARRAY_TASK_ID + 1))/8); the last shard merges the manifest."
        ),
    ] = None,
    engine: Annotated[str, typer.Option(help="local, or ray (a Ray cluster; extra: gradcam-cli[ray]).")] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address for --engine ray (default: start a local Ray).")
    ] = None,
    ray_actors: Annotated[
        int | None, typer.Option(min=1, help="Model-holding Ray actors (default: one per GPU of the cluster, or 1).")
    ] = None,
    relative_to: Annotated[
        Path | None,
        typer.Option(help="With -i -: name the stdin paths below DIR relative to it, as -i DIR would (default: cwd)."),
    ] = None,
) -> None:
    """Explain every image of the inputs; write heatmaps, overlays, records.jsonl and manifest.json.

    Exit codes: 0 all images ok, 1 some images failed, 2 usage or config error (nothing written),
    3 another run holds the output folder, 4 the output folder cannot be written, 5 an unexpected
    failure (a worker died, a model that raises; --debug shows the traceback), 130/143 interrupted by
    SIGINT/SIGTERM (finished batches are kept; rerun to resume).
    """
    from gradcam_cli.config import load_config
    from gradcam_cli.runner.backends import check_backend_name
    from gradcam_cli.runner.shards import parse_shard

    if log_format not in ("json", "text"):
        raise _fail(GradcamError(f"--log-format must be json or text, not {log_format!r}."))
    try:
        check_backend_name(engine)
        picked = parse_shard(shard) if shard is not None else None
    except GradcamError as error:
        raise _fail(error) from None
    if engine != "ray" and (ray_address is not None or ray_actors is not None):
        raise _fail(GradcamError("--ray-address and --ray-actors need --engine ray."))
    layer: Any = target_layer
    if target_layer is not None and "," in target_layer:
        layer = [name.strip() for name in target_layer.split(",") if name.strip()]
    parsed_workers: Any = workers
    if workers is not None and workers != "auto":
        parsed_workers = int(workers) if workers.isdigit() else workers
    overrides = _overrides(
        **{
            "output.dir": output,
            "cam.method": method,
            "model.target_layer": layer,
            "cam.top_k": top_k,
            "runtime.batch_size": batch_size,
            "runtime.device": device,
            "runtime.workers": parsed_workers,
            "runtime.precision": precision,
        }
    )
    if top_k is not None and top_k > 1:
        overrides.setdefault("cam.targets", "topk")
    try:
        cfg = load_config(config, overrides)
        from gradcam_cli.io.discovery import check_relative_to

        check_relative_to(relative_to, inputs)
        if dry_run:
            from gradcam_cli.io.discovery import check_inputs
            from gradcam_cli.runner.todo import dry_run as plan_run

            counts = plan_run(
                cfg, check_inputs(inputs), sys.stdin, not no_resume, limit, typer.echo, picked, relative_to
            )
            others = f", {counts['other_shards']} in other shards" if picked else ""
            typer.echo(
                f"{counts['process']} to process, {counts['skip']} already done, {counts['ignore']} ignored{others}",
                err=True,
            )
            raise typer.Exit(0)
        from gradcam_cli.events import EventLog
        from gradcam_cli.runner.options import RunOptions
        from gradcam_cli.runner.run import run as run_images

        events = EventLog(log_file, log_format)
        try:
            with _warnings_to_user(quiet, events):
                summary = run_images(
                    cfg,
                    RunOptions(
                        inputs=inputs,
                        limit=limit,
                        fail_fast=fail_fast,
                        quiet=quiet,
                        stdin=sys.stdin,
                        resume=not no_resume,
                        overwrite=overwrite,
                        events=events,
                        shard=picked,
                        backend=engine,
                        ray_address=ray_address,
                        ray_actors=ray_actors,
                        relative_to=relative_to,
                    ),
                )
        except GradcamError:
            raise
        except Exception as error:  # noqa: BLE001 - anything else is a bug or a broken model: exit 5, no hang
            raise _internal_error(error, debug, events) from None
        finally:
            events.close()
    except GradcamError as error:
        raise _fail(error) from None
    if not quiet:
        typer.echo(summary.line(), err=True)
        if summary.note:
            typer.echo(f"gradcam: {summary.note}", err=True)
    if summary.merge_error:
        typer.echo(f"gradcam: warning: {summary.merge_error} (this shard's results are complete)", err=True)
    if json_summary:
        import json

        typer.echo(json.dumps(summary.as_dict(), sort_keys=True))
    raise typer.Exit(code=summary.exit_code)


@app.command()
def merge(
    out_dir: Annotated[Path, typer.Argument(help="The output folder the shards (--shard K/N) wrote to.")],
    json_summary: Annotated[bool, typer.Option("--json", help="Print the manifest summary as JSON on stdout.")] = False,
) -> None:
    """Merge the shards of an output folder into one manifest.json (the last shard does it by itself).

    Exit codes: 0 merged, 2 a shard is missing or incomplete, shards ran different configs, or an image
    has records in two shards' files (the message says which and what to do), 3 a plain run is writing
    to the folder.
    """
    from gradcam_cli.runner.run import merge_shards

    try:
        path, counts = merge_shards(out_dir)
    except GradcamError as error:
        raise _fail(error) from None
    typer.echo(
        f"{counts['total']} images: {counts['ok']} ok, {counts['failed']} failed. Results: {path}",
        err=True,
    )
    if json_summary:
        import json

        typer.echo(json.dumps(counts, sort_keys=True))


@app.command()
def layers(config: ConfigOption) -> None:
    """List the model's modules with their output shapes; mark usable target layers and auto's pick."""
    from gradcam_cli.config import load_config

    try:
        import torch

        from gradcam_cli.models.layers import auto_layer, trace_layers
        from gradcam_cli.models.loading import load_model
        from gradcam_cli.models.sources import with_source_defaults

        cfg = with_source_defaults(load_config(config))
        with _warnings_to_user(quiet=False):
            loaded = load_model(cfg.model)
        height, width = cfg.preprocess.size
        infos, _ = trace_layers(loaded.module, torch.zeros(1, 3, height, width))
    except GradcamError as error:
        raise _fail(error) from None

    auto = auto_layer(infos)
    width_name = max((len(info.name) for info in infos), default=5)
    width_kind = max([len("type"), *(len(info.kind) for info in infos)])  # ONNX converter classes run long
    typer.echo(
        f"{'layer':<{width_name}}  {'type':<{width_kind}} {'output shape':<20} {'target':<6} {'calls':<5} layout"
    )
    for info in infos:
        mark = "auto" if info.name == auto else ("yes" if info.spatial else "")
        shape = "x".join(str(d) for d in info.shape) if info.shape else "-"
        calls = str(info.calls) if info.calls > 1 else ""
        row = (
            f"{info.name:<{width_name}}  {info.kind:<{width_kind}} {shape:<20} {mark:<6} {calls:<5} {info.layout or ''}"
        )
        typer.echo(row.rstrip())
    if any(info.calls > 1 and info.spatial for info in infos):
        typer.echo(
            "calls: modules that run more than once per forward (a shared activation module); as a target layer "
            "such a module is explained at its last call (its shape above); auto prefers modules that run once.",
            err=True,
        )


@app.command()
def compare(
    baseline: Annotated[Path, typer.Argument(metavar="BASELINE", help="Output folder of the reference run.")],
    current: Annotated[Path, typer.Argument(metavar="CURRENT", help="Output folder of the run to check.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML file whose compare: section sets thresholds.")
    ] = None,
    min_correlation: Annotated[float | None, typer.Option(help="Least heatmap correlation (default 0.95).")] = None,
    max_mean_abs_diff: Annotated[
        float | None, typer.Option(help="Largest mean absolute heatmap difference, 0..1 (default 0.05).")
    ] = None,
    min_iou: Annotated[float | None, typer.Option(help="Least IoU of the top-20% regions (default 0.5).")] = None,
    max_peak_shift: Annotated[
        float | None, typer.Option(help="Largest peak move in pixels (default: not checked).")
    ] = None,
    max_score_change: Annotated[
        float | None, typer.Option(help="Largest top-1 probability change (default: not checked).")
    ] = None,
    max_metric_drop: Annotated[
        float | None,
        typer.Option(help="Largest worsening of a cam.metrics mean over the shared images (default: not checked)."),
    ] = None,
    allow_label_change: Annotated[
        bool, typer.Option("--allow-label-change", help="A changed top-1 class alone is not drift.")
    ] = False,
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="Report images present on one side only instead of exit 2.")
    ] = False,
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML (one testcase per image).")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write a Markdown summary for a pull-request comment.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report with pictures.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the verdict line.")] = False,
) -> None:
    """Compare two runs' predictions and heatmaps (attention regression).

    Exit codes: 0 no drift beyond the thresholds, 1 drift (images listed worst first), 2 unusable inputs
    (missing manifest, schema mismatch, different image sets without --allow-missing).
    """
    from gradcam_cli.config import load_compare_config

    overrides = _overrides(
        **{
            "compare.min_correlation": min_correlation,
            "compare.max_mean_abs_diff": max_mean_abs_diff,
            "compare.min_iou": min_iou,
            "compare.max_peak_shift": max_peak_shift,
            "compare.max_score_change": max_score_change,
            "compare.max_metric_drop": max_metric_drop,
            "compare.allow_label_change": allow_label_change or None,
            "compare.allow_missing": allow_missing or None,
        }
    )
    try:
        limits = load_compare_config(config, overrides)
        from gradcam_cli.reports.compare import compare_runs
        from gradcam_cli.reports.compare_formats import text_table, write_html, write_junit, write_markdown

        comparison = compare_runs(baseline, current, limits)
        for path, write in ((junit, write_junit), (markdown, write_markdown), (html, write_html)):
            if path is not None:
                write(comparison, path)
    except GradcamError as error:
        raise _fail(error) from None
    except OSError as exc:
        raise _fail(GradcamError(f"cannot write the report: {exc}")) from None
    typer.echo(comparison.summary_line() if quiet else text_table(comparison))
    raise typer.Exit(code=comparison.exit_code)


@app.command()
def sanity(
    config: ConfigOption,
    inputs: Annotated[
        list[str],
        typer.Option("--input", "-i", help="Image folder (recursive), image file, archive, or - for paths on stdin."),
    ],
    limit: Annotated[
        int | None, typer.Option(min=1, help="Check the first N images (overrides sanity.limit, default 16).")
    ] = None,
    method: Annotated[str | None, typer.Option(help="CAM method to check (overrides cam.method).")] = None,
    target_layer: Annotated[
        str | None, typer.Option(help="Dotted module name(s), comma-separated, or auto (overrides model.target_layer).")
    ] = None,
    max_spearman: Annotated[
        float | None,
        typer.Option(help="Flag the method above this mean Spearman at the deepest step (default 0.7)."),
    ] = None,
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML (one testcase per cascade step).")] = None,
    json_report: Annotated[
        Path | None, typer.Option("--json", help="Write the measures of every step and map as JSON.")
    ] = None,
) -> None:
    """Check that the method explains the model: re-initialise its layers from the logits down, one block per
    step, and measure how much the maps change (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

    Exit codes: 0 the maps change (passes), 1 flagged (the maps barely change: they do not depend on the
    model's weights), 2 unusable config, model or inputs (nothing written).
    """
    from gradcam_cli.config import load_config

    layer: Any = target_layer
    if target_layer is not None and "," in target_layer:
        layer = [name.strip() for name in target_layer.split(",") if name.strip()]
    overrides = _overrides(
        **{
            "cam.method": method,
            "model.target_layer": layer,
            "sanity.limit": limit,
            "sanity.max_spearman": max_spearman,
        }
    )
    try:
        cfg = load_config(config, overrides)
        from gradcam_cli.reports.sanity import check_report_path, text_table, write_json, write_junit
        from gradcam_cli.runner.sanity import check_sanity

        for path in (junit, json_report):
            if path is not None:
                check_report_path(path)  # before the model work, not after it
        with _warnings_to_user(quiet=False):
            result = check_sanity(cfg, inputs, sys.stdin, lambda line: typer.echo(f"gradcam: {line}", err=True))
        for path, write in ((junit, write_junit), (json_report, write_json)):
            if path is not None:
                write(result, path)
    except GradcamError as error:
        raise _fail(error) from None
    except OSError as exc:
        raise _fail(GradcamError(f"cannot write the report: {exc}")) from None
    typer.echo(text_table(result))
    raise typer.Exit(code=result.exit_code)


SWEEP_METHODS = "gradcam,gradcam++,xgradcam,hirescam,gradcam-elementwise,layercam,eigengradcam,eigencam"


@app.command()
def sweep(
    config: ConfigOption,
    inputs: Annotated[
        list[str],
        typer.Option("--input", "-i", help="Image folder (recursive), image file, archive, or - for paths on stdin."),
    ],
    methods: Annotated[
        str,
        typer.Option(
            help="Comma-separated CAM methods (default: every method that shares the one pass; scorecam and "
            "ablationcam run their own extra passes)."
        ),
    ] = SWEEP_METHODS,
    layers: Annotated[
        str | None,
        typer.Option(help="Comma-separated target layers, auto, or a+b to average two (default: model.target_layer)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Use the first N images.")] = 64,
    metrics: Annotated[
        str, typer.Option(help="Comma-separated faithfulness metrics to rank by (insertion - deletion by default).")
    ] = "deletion,insertion",
    metric_steps: Annotated[int, typer.Option(min=2, help="deletion/insertion: steps of the curve.")] = 20,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write sweep.json, sweep.md, sweep.html and best.yaml here.")
    ] = None,
    json_report: Annotated[Path | None, typer.Option("--json", help="Write the ranking as JSON.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write the ranking as Markdown.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML page of the ranking.")] = None,
    snippet: Annotated[
        Path | None, typer.Option(help="Write the winner's cam.method and model.target_layer as YAML.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr.")] = False,
) -> None:
    """Rank every method x target layer on a sample by faithfulness (deletion, insertion, ...) and cost, and
    print the config snippet of the best. One forward per batch feeds every gradient method and layer.

    Exit codes: 0 ranked, 2 unusable config, option (an unknown method, layer or metric), model or inputs
    (nothing written).
    """
    from gradcam_cli.config import load_config

    try:
        cfg = load_config(config)
        from gradcam_cli.reports.sweep import check_out_dir, check_report_path, text_table, write_reports
        from gradcam_cli.runner.sweep import SweepRequest, run_sweep, split_names

        files = {"json": json_report, "markdown": markdown, "html": html, "snippet": snippet}
        for path in files.values():
            if path is not None:
                check_report_path(path)  # before the model work, not after it
        if out is not None:
            check_out_dir(out)
        request = SweepRequest(
            methods=split_names(methods),
            layers=split_names(layers),
            metrics=split_names(metrics),
            limit=limit,
            metric_steps=metric_steps,
        )
        tell = (lambda line: None) if quiet else (lambda line: typer.echo(f"gradcam: {line}", err=True))
        with _warnings_to_user(quiet=quiet):
            result = run_sweep(cfg, inputs, request, sys.stdin, tell)
        write_reports(result, files, out)
    except GradcamError as error:
        raise _fail(error) from None
    except OSError as exc:
        raise _fail(GradcamError(f"cannot write the report: {exc}")) from None
    typer.echo(text_table(result))


@app.command()
def report(out_dir: Annotated[Path, typer.Argument(help="Output folder of `gradcam run`.")]) -> None:
    """Write OUT_DIR/index.html: a gallery of the overlays with filters, sorting and the failures."""
    try:
        from gradcam_cli.reports.gallery import write_report

        page = write_report(out_dir)
    except GradcamError as error:
        raise _fail(error) from None
    typer.echo(f"Report: {page}")


@app.command()
def init(
    model: Annotated[str, typer.Option(help="torchvision model name, e.g. resnet50 or convnext_tiny.")] = "resnet50",
    weights: Annotated[
        str, typer.Option(help="torchvision weights name (DEFAULT: downloaded once) or a checkpoint file.")
    ] = "DEFAULT",
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the config.")] = Path("gradcam.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write a commented starter config (every key, its default and what it does) for a torchvision model."""
    try:
        from gradcam_cli.starter import write_starter_config

        write_starter_config(output, model, weights, force)
    except GradcamError as error:
        raise _fail(error) from None
    typer.echo(f"Wrote {output}. Next: gradcam run --config {output} --input IMAGES/")


def main() -> None:
    """Console-script entry point."""
    try:
        app(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - any other command's unexpected error: one paragraph, exit 5
        _internal_error(error, debug="--debug" in sys.argv)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
