"""What an output folder already holds, and what a run still has to do (no torch here).

Rerunning with the same output folder and the same effective config processes only new or changed
images: an ok record whose file size and mtime still match is skipped at once; one whose size or mtime
changed is re-hashed by the decode workers and skipped if its bytes are the same (sha256 is the truth).
A different config refuses (exit 2) unless --overwrite, so one manifest never mixes two configs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from gradcam_cli.config import Config
from gradcam_cli.errors import ConfigError
from gradcam_cli.io.discovery import Filters, ImageSource, discover
from gradcam_cli.io.manifest import MANIFEST_NAME, RECORDS_NAME, RUN_NAME, DoneImage, load_done, read_run_info
from gradcam_cli.io.outputs import HEATMAPS, OVERLAYS, RAW


def filters_of(config: Config) -> Filters:
    return Filters(
        extensions=config.input.extensions,
        include=config.input.include,
        exclude=config.input.exclude,
        follow_symlinks=config.input.follow_symlinks,
    )


def check_previous_config(out_dir: Path, config: Config) -> None:
    """Refuse to mix results of two configs in one output folder."""
    info = read_run_info(out_dir)
    has_results = (out_dir / RECORDS_NAME).exists() or (out_dir / MANIFEST_NAME).exists()
    if not has_results:
        return
    previous = info.get("config_hash") if info else None
    if previous != config.config_hash():
        differs = _differences(info.get("config", {}) if info else {}, config)
        raise ConfigError(
            f"the output folder {out_dir} holds results of a different config"
            + (f" ({differs})" if differs else "")
            + ". Pass --overwrite to replace them, or choose a new --output; results of two configs are "
            "never mixed in one manifest."
        )


def _differences(previous: dict, config: Config) -> str:
    current = {
        "model": config.model.model_dump(mode="json"),
        "preprocess": config.preprocess.model_dump(mode="json"),
        "cam": config.cam.model_dump(mode="json"),
    }
    changed = []
    for section, values in current.items():
        for key, value in values.items():
            if previous.get(section, {}).get(key) != value:
                changed.append(f"{section}.{key}")
    return "changed: " + ", ".join(changed[:6]) if changed else ""


def clear_results(out_dir: Path) -> None:
    """--overwrite: remove only what gradcam wrote (never anything else in the folder)."""
    for name in (RECORDS_NAME, MANIFEST_NAME, RUN_NAME):
        (out_dir / name).unlink(missing_ok=True)
    for name in (HEATMAPS, OVERLAYS, RAW):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def pending(
    sources: Iterable[ImageSource], done: dict[str, DoneImage], on_skip: Callable[[ImageSource], None]
) -> Iterator[ImageSource]:
    """Sources still to do: unchanged ones are skipped; changed size/mtime carry the old hash to check."""
    for source in sources:
        previous = done.get(source.path)
        if previous is None:
            yield source
        elif previous.file_size is not None and (previous.file_size, previous.mtime_ns) == (
            source.file_size,
            source.mtime_ns,
        ):
            on_skip(source)
        else:
            yield replace(source, known_sha256=previous.sha256)


def limited(sources: Iterable[ImageSource], limit: int | None) -> Iterator[ImageSource]:
    for count, source in enumerate(sources):
        if limit is not None and count >= limit:
            return
        yield source


def dry_run(
    config: Config,
    inputs: list[str],
    stdin: TextIO | None,
    resume: bool,
    limit: int | None,
    echo: Callable[[str], None],
) -> dict[str, int]:
    """Print what a run would process, skip (already done) and ignore, without loading the model."""
    out_dir = config.output.dir.resolve()
    done = load_done(out_dir / RECORDS_NAME) if resume else {}
    counts = {"process": 0, "skip": 0, "ignore": 0}

    def ignore(path: str, reason: str) -> None:
        counts["ignore"] += 1
        echo(f"ignore   {path}  ({reason})")

    def skip(source: ImageSource) -> None:
        counts["skip"] += 1
        echo(f"skip     {source.path}  (done)")

    sources = discover(inputs, filters_of(config), stdin, exclude=out_dir, ignored=ignore)
    for source in limited(pending(sources, done, skip), limit):
        counts["process"] += 1
        note = "  (changed size or mtime: re-hashed, skipped if identical)" if source.known_sha256 else ""
        echo(f"process  {source.path}{note}")
    return counts
