"""What an output folder already holds, and which earlier results a run may keep (no torch here).

Rerunning with the same output folder and the same effective config processes only new or changed
images: an ok record whose file size and mtime still match is skipped at once; one whose size or mtime
changed is re-hashed by the decode workers and skipped if its bytes are the same (sha256 is the truth).
A different config refuses (exit 2) unless --overwrite, so one manifest never mixes two configs.
Shards (`--shard K/N`) resume each from their own records file and share the folder's `run.json`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from gradcam_cli.config import Config
from gradcam_cli.errors import ConfigError
from gradcam_cli.io.discovery import ImageSource
from gradcam_cli.io.manifest import MANIFEST_NAME, RECORDS_NAME, RUN_NAME, DoneImage, read_run_info, write_run_info
from gradcam_cli.io.outputs import HEATMAPS, OVERLAYS, RAW
from gradcam_cli.runner.lock import OutputLock
from gradcam_cli.runner.shards import Shard, complete_markers, shard_records_files

RUN_INFO_LOCK_NAME = ".gradcam.run-info.lock"


def check_previous_config(out_dir: Path, config: Config) -> None:
    """Refuse to mix results of two configs in one output folder."""
    info = read_run_info(out_dir)
    has_results = (
        (out_dir / RECORDS_NAME).exists() or (out_dir / MANIFEST_NAME).exists() or bool(shard_records_files(out_dir))
    )
    if not has_results:
        return
    previous = info.get("config_hash") if info else None
    if previous != config.config_hash():
        changed = _changed_keys(info.get("config", {}), config) if info else ["run.json"]
        if info and isinstance(info.get("config"), dict) and not changed:
            return  # written by an older gradcam-cli whose schema lacked keys that are now at their defaults
        differs = "changed: " + ", ".join(changed[:6]) if info and changed else ""
        raise ConfigError(
            f"the output folder {out_dir} holds results of a different config"
            + (f" ({differs})" if differs else "")
            + ". Pass --overwrite to replace them, or choose a new --output; results of two configs are "
            "never mixed in one manifest."
        )


def claim_run_info(out_dir: Path, config: Config, records_path: Path) -> None:
    """Check and write `run.json` as one step, under a short lock: shards starting together on a new
    folder agree on one config (the first writes it, the same config leaves it alone, another is refused).

    The run's records file is created inside the same lock, so from then on the folder "has results" and
    a sibling with another config is refused even before this run has finished its first batch.
    """
    with OutputLock(out_dir, RUN_INFO_LOCK_NAME, wait=True):
        check_previous_config(out_dir, config)
        info = read_run_info(out_dir)
        if info is None or info.get("config_hash") != config.config_hash():
            write_run_info(out_dir, config.config_hash(), config.model_dump(mode="json"))
        records_path.touch(exist_ok=True)


def _changed_keys(previous: dict, config: Config) -> list[str]:
    """Hashed keys whose value differs from the earlier run's; a key the earlier version did not have
    counts as unchanged while it is at its default (upgrades must not orphan existing output folders)."""
    changed = []
    for section in ("model", "preprocess", "cam"):
        part = getattr(config, section)
        values = part.model_dump(mode="json")
        defaults = type(part).model_construct().model_dump(mode="json")
        before = previous.get(section, {}) if isinstance(previous.get(section), dict) else {}
        for key, value in values.items():
            if key in before:
                if before[key] != value:
                    changed.append(f"{section}.{key}")
            elif value != defaults.get(key):
                changed.append(f"{section}.{key}")
    return changed


def clear_results(out_dir: Path) -> None:
    """--overwrite: remove only what gradcam wrote (never anything else in the folder)."""
    for name in (RECORDS_NAME, MANIFEST_NAME, RUN_NAME):
        (out_dir / name).unlink(missing_ok=True)
    for (index, count), path in shard_records_files(out_dir).items():
        path.unlink(missing_ok=True)
        (out_dir / Shard(index, count).complete_name).unlink(missing_ok=True)
    for index, count in complete_markers(out_dir):
        (out_dir / Shard(index, count).complete_name).unlink(missing_ok=True)
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
