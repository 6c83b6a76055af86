"""What an output folder already holds, and which earlier results a run may keep (no torch here).

Rerunning with the same output folder and the same run identity (io/identity.py: what determines the
heatmaps, by content) processes only new or changed images: an ok record whose file size and mtime still
match is skipped at once; one whose size or mtime changed is re-hashed by the decode workers and skipped if
its bytes are the same (sha256 is the truth), and its record is then written again with the new size and
mtime (TouchedFiles), so the next run skips it at once. Another identity (a retrained checkpoint at the same path,
another precision) refuses (exit 2, naming what changed) unless --overwrite, so one manifest never mixes
two; the same files at other paths (a second clone) are the same identity.
Shards (`--shard K/N`) resume each from their own records file and share the folder's `run.json`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from gradcam_cli.config import Config, parse_config
from gradcam_cli.errors import ConfigError
from gradcam_cli.io.discovery import ImageSource
from gradcam_cli.io.identity import FileHashes, RunIdentity, describe_differences, recorded_main_file, run_identity
from gradcam_cli.io.manifest import (
    MANIFEST_NAME,
    RECORDS_NAME,
    RUN_NAME,
    DoneImage,
    RecordsWriter,
    read_manifest_header,
    read_run_info,
    refreshed_records,
    write_run_info,
)
from gradcam_cli.io.outputs import HEATMAPS, OVERLAYS, RAW
from gradcam_cli.runner.lock import OutputLock
from gradcam_cli.runner.shards import Shard, complete_markers, shard_records_files

RUN_INFO_LOCK_NAME = ".gradcam.run-info.lock"


def _has_results(out_dir: Path) -> bool:
    return (out_dir / RECORDS_NAME).exists() or (out_dir / MANIFEST_NAME).exists() or bool(shard_records_files(out_dir))


def _refuse(out_dir: Path, changes: list[str]) -> ConfigError:
    shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
    return ConfigError(
        f"the output folder {out_dir} holds results of a different config: {shown}. Pass --overwrite to "
        "replace them, or choose a new --output; results of two configs are never mixed in one manifest."
    )


def check_previous_config(out_dir: Path, config: Config) -> RunIdentity | None:
    """Refuse (exit 2, naming what changed) to mix results of two run identities in one output folder.

    Returns this run's identity (None when the folder holds no results yet). When a file of the identity
    cannot be read (a checkpoint that is not there) nothing is refused here: loading the model says so.
    """
    if not _has_results(out_dir):
        return None
    info = read_run_info(out_dir)
    if info is None:
        raise _refuse(out_dir, ["its run.json, which records the config, is missing or unreadable"])
    hashes = FileHashes(info.get("file_hashes"))
    current = run_identity(config, hashes)
    if current.missing:
        return current
    recorded = recorded_identity(out_dir, info, hashes)
    if recorded is None:  # a run.json this version cannot read as a config: compare the recorded keys
        if info.get("config_hash") == config.config_hash():
            return current
        changed = _changed_keys(info.get("config", {}), config) if isinstance(info.get("config"), dict) else []
        if isinstance(info.get("config"), dict) and not changed:
            return current  # written by an older gradcam-cli whose schema lacked keys now at their defaults
        raise _refuse(out_dir, ["changed: " + ", ".join(changed)] if changed else ["its run.json does not say how"])
    changes = describe_differences(recorded, current.parts)
    if changes:
        raise _refuse(out_dir, changes)
    return current


def recorded_identity(out_dir: Path, info: dict[str, Any], hashes: FileHashes) -> dict[str, Any] | None:
    """The identity of the results an output folder holds, from its run.json.

    Folders of this version record it (`identity`). Folders of earlier releases (run.json with only
    `config_hash` and `config`, paths absolute) are migrated: their identity is computed from the recorded
    config, hashing the files at the recorded paths, except that the checkpoint (or pickled/ONNX file) is
    taken by the sha256 the folder's manifest or shard markers recorded for it (`model.checkpoint_sha256`:
    what that run really loaded). So a retrained checkpoint at the same path is a change, the same files in
    a second clone are not (if the first clone's files still hold the same content), and a recorded file
    that is gone cannot be vouched for: refused, naming it. The files of an earlier release's run are
    otherwise taken as they are now; there is no other record of them. The next run writes the identity into
    run.json, so the folder is migrated once. None: the recorded config is not one this version can read
    (the caller compares the recorded keys instead, as earlier releases did).
    """
    parts = info.get("identity")
    if isinstance(parts, dict):
        return parts
    recorded = info.get("config")
    if not isinstance(recorded, dict):
        return None
    try:
        old = parse_config(recorded, Path("/"), source="run.json")
    except ConfigError:
        return None
    identity = run_identity(old, hashes).parts
    main = recorded_main_file(old)
    loaded = _recorded_checkpoint_sha256(out_dir)
    if main is not None and loaded is not None:
        identity[main] = {"sha256": loaded}
    return identity


def _recorded_checkpoint_sha256(out_dir: Path) -> str | None:
    """The checkpoint sha256 an earlier run's manifest header (or a shard marker) recorded."""
    headers = [read_manifest_header(out_dir)] + [m.get("header") for m in complete_markers(out_dir).values()]
    for header in headers:
        model = header.get("model") if isinstance(header, dict) else None
        if isinstance(model, dict) and isinstance(model.get("checkpoint_sha256"), str):
            return model["checkpoint_sha256"]
    return None


def claim_run_info(out_dir: Path, config: Config, records_path: Path) -> RunIdentity:
    """Check and write `run.json` as one step, under a short lock: shards starting together on a new
    folder agree on one identity (the first writes it, the same identity leaves it alone, another is
    refused). run.json records the identity, its hash (`config_hash`), the config, and the sha256 of the
    files the identity read, by (path, size, mtime_ns), so the next run does not hash them again.

    The run's records file is created inside the same lock, so from then on the folder "has results" and
    a sibling with another config is refused even before this run has finished its first batch.
    """
    with OutputLock(out_dir, RUN_INFO_LOCK_NAME, wait=True):
        check_previous_config(out_dir, config)
        info = read_run_info(out_dir) or {}
        hashes = FileHashes(info.get("file_hashes"))
        identity = run_identity(config, hashes)
        known = {k: v for k, v in hashes.known.items() if k not in hashes.used and _still_matches(k, v)}
        file_hashes = dict(list(known.items())[-KEEP_OTHER_HASHES:], **hashes.used) if known else hashes.used
        same = info.get("config_hash") == identity.hash and info.get("identity") == identity.parts
        if not same or info.get("file_hashes") != file_hashes:
            kept = info.get("config") if same and isinstance(info.get("config"), dict) else None
            migrated_from = info.get("migrated_from")
            if "identity" not in info and isinstance(info.get("config_hash"), str):
                migrated_from = info["config_hash"]  # an earlier release's folder, accepted just now
            write_run_info(
                out_dir,
                identity.hash,
                kept or config.model_dump(mode="json"),
                identity=identity.parts,
                file_hashes=file_hashes,
                migrated_from=migrated_from if isinstance(migrated_from, str) else None,
            )
        records_path.touch(exist_ok=True)
    return identity


KEEP_OTHER_HASHES = 8  # cached hashes of files other configs of this folder used (another clone's weights)


def _still_matches(path: str, entry: Any) -> bool:
    try:
        info = os.stat(path)
    except OSError:
        return False
    return isinstance(entry, dict) and (entry.get("size"), entry.get("mtime_ns")) == (info.st_size, info.st_mtime_ns)


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


class TouchedFiles:
    """Sources found touched but unchanged (new size or mtime, the same sha256): their records are written
    again with the new size and mtime once the run's own records are in (`write`)."""

    def __init__(self) -> None:
        self.stats: dict[str, tuple[int | None, int | None]] = {}

    def add(self, path: str, file_size: int | None, mtime_ns: int | None) -> None:
        self.stats[path] = (file_size, mtime_ns)

    def write(self, records: RecordsWriter, records_path: Path) -> None:
        if self.stats:
            records.write_batch(refreshed_records(records_path, self.stats))


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
