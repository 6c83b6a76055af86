"""Records and the manifest: the machine-readable result of a run, and the memory of earlier runs.

`records.jsonl` gets one JSON line per image, appended, flushed and fsynced as each batch finishes, so a
crash loses at most the batch in flight; a torn last line (a crash mid-write) is cut off on the next
start. A later record for the same path supersedes an earlier one. `manifest.json` is written
atomically from the records: every image exactly once (its latest record), in input order.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gradcam_cli.io.files import atomic_open, atomic_write_bytes
from gradcam_cli.io.metric_summary import metric_summary

SCHEMA_VERSION = 1
RECORDS_NAME = "records.jsonl"
MANIFEST_NAME = "manifest.json"
RUN_NAME = "run.json"
NORMALIZATION = (
    "per image and target: ReLU, then (cam - min) / (max - min + 1e-7) at feature resolution, bilinear to "
    "the model input size, mean over target layers, min-max again, then mapped onto the original image; "
    "heatmap PNG value = round(255 * cam); an all-zero CAM stays zero (quality 'empty')"
)


def dumps_record(record: dict[str, Any]) -> str:
    """One canonical JSON line (sorted keys, no NaN)."""
    return json.dumps(record, sort_keys=True, allow_nan=False, ensure_ascii=False)


class RecordsWriter:
    """Append-only `records.jsonl`: a line per image, durable per batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write_batch(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self._handle.write("".join(dumps_record(r) + "\n" for r in records))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RecordsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repair_records(path: Path) -> bool:
    """Cut a torn last line (no newline) left by a crash; returns whether anything was cut."""
    if not path.exists():
        return False
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return False
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return False
        position = size
        while position > 0:  # scan back for the last complete line
            step = min(65536, position)
            handle.seek(position - step)
            block = handle.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                handle.truncate(position - step + newline + 1)
                return True
            position -= step
        handle.truncate(0)
        return True


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records in file order; a torn or corrupt line is skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


@dataclass(frozen=True)
class DoneImage:
    """What an ok record says about its source, to decide whether the source changed since."""

    sha256: str
    file_size: int | None
    mtime_ns: int | None


def load_done(records_path: Path) -> dict[str, DoneImage]:
    """The latest record per path, kept only where it is ok (failed images are retried)."""
    done: dict[str, DoneImage] = {}
    for record in read_records(records_path):
        path = record.get("path")
        if not isinstance(path, str):
            continue
        if record.get("status") == "ok" and record.get("sha256"):
            done[path] = DoneImage(record["sha256"], record.get("file_size"), record.get("mtime_ns"))
        else:
            done.pop(path, None)
    return done


def refreshed_records(records_path: Path, stats: dict[str, tuple[int | None, int | None]]) -> list[dict[str, Any]]:
    """The latest ok record of each path in `stats` (path -> (file size, mtime_ns)) with that new size and
    mtime: appended for a file that was touched but not changed (a `cp -r`, a restore), so the next run
    skips it by its size and mtime instead of reading and hashing it again, run after run."""
    latest: dict[str, dict[str, Any] | None] = {}
    for record in read_records(records_path):
        path = record.get("path")
        if isinstance(path, str) and path in stats:
            latest[path] = record if record.get("status") == "ok" else None
    refreshed = []
    for path, record in latest.items():
        if record is not None:
            size, mtime_ns = stats[path]
            refreshed.append({**record, "file_size": size, "mtime_ns": mtime_ns})
    return refreshed


def path_order(path: str) -> tuple[str, ...]:
    """Sort key matching discovery's order (depth-first, names sorted per folder)."""
    return tuple(path.split("/"))


def _latest_lines(records_path: Path) -> dict[str, tuple[int, bool]]:
    """Per path: byte offset of its latest complete record line, and whether that record failed."""
    latest: dict[str, tuple[int, bool]] = {}
    if not records_path.exists():
        return latest
    with open(records_path, "rb") as handle:
        offset = 0
        for line in handle:
            if line.endswith(b"\n"):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if isinstance(record, dict) and isinstance(record.get("path"), str):
                    latest[record["path"]] = (offset, record.get("status") == "error")
            offset += len(line)
    return latest


def latest_records(
    records_paths: list[Path],
) -> tuple[dict[str, tuple[int, int, bool]], dict[str, list[int]]]:
    """The latest record line per path over several records files (the shards of one folder).

    Returns, per path, (index of its file, byte offset, failed), and the paths found in more than one
    file with those files' indices (a shard layout that changed between runs); of those, the last file
    given wins in the first mapping.
    """
    latest: dict[str, tuple[int, int, bool]] = {}
    duplicates: dict[str, list[int]] = {}
    for index, records_path in enumerate(records_paths):
        for path, (offset, is_error) in _latest_lines(records_path).items():
            if path in latest:
                duplicates.setdefault(path, [latest[path][0]]).append(index)
            latest[path] = (index, offset, is_error)
    return latest, duplicates


def folder_counts(latest: dict[str, tuple[int, int, bool]]) -> dict[str, int]:
    """The folder's totals: every image in the manifest (its latest record), ok or failed."""
    failed = sum(1 for *_, is_error in latest.values() if is_error)
    return {"total": len(latest), "ok": len(latest) - failed, "failed": failed}


def write_manifest(
    out_dir: Path,
    header: dict[str, Any],
    run: dict[str, Any] | None = None,
    records_files: list[Path] | None = None,
    latest: dict[str, tuple[int, int, bool]] | None = None,
) -> tuple[Path, dict[str, int]]:
    """Write `manifest.json` atomically: the header (sorted keys) and every image's latest record; returns
    its path and the folder's totals.

    `summary` counts the images in the manifest, i.e. the whole folder (`total`, `ok`, `failed`); `run`
    says what the run that wrote it did (`ok`, `failed` new records, `skipped` already done, whether it
    was `complete`). `records_files` (default: the folder's `records.jsonl`) lists the shards' records files
    when merging, with `latest` if the caller already indexed them (`latest_records`). `config_hash` and
    `identity` are the folder's, from run.json (`identity_fields`), when it records them.
    """
    files = records_files if records_files is not None else [out_dir / RECORDS_NAME]
    if latest is None:
        latest, _ = latest_records(files)
    counts = folder_counts(latest)
    summary: dict[str, Any] = dict(counts)
    names = (header.get("metrics") or {}).get("names") if isinstance(header.get("metrics"), dict) else None
    if names:  # cam.metrics: their statistics over the folder (one more read of the latest records)
        summary["metrics"] = metric_summary((json.loads(line) for line in _latest_lines_of(files, latest)), names)
    body = dict(header, schema_version=SCHEMA_VERSION, summary=summary, **identity_fields(out_dir))
    if run is not None:
        body["run"] = run
    head = json.dumps(body, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False)
    path = out_dir / MANIFEST_NAME
    with atomic_open(path, durable=True) as out, contextlib.ExitStack() as stack:
        out.write((head[: head.rstrip().rfind("}")].rstrip() + ',\n  "images": [').encode())
        for index, line in enumerate(_latest_lines_of(files, latest, stack)):
            out.write((b"\n    " if index == 0 else b",\n    ") + line)
        out.write(b"\n  ]\n}\n")
    return path, counts


def _latest_lines_of(
    files: list[Path], latest: dict[str, tuple[int, int, bool]], stack: contextlib.ExitStack | None = None
) -> Iterator[bytes]:
    """Each path's latest record line (without its newline), in path order, read from its records file."""
    with contextlib.ExitStack() as own:
        stack = stack or own
        handles: dict[int, IO[bytes]] = {}
        for image_path in sorted(latest, key=path_order):
            file_index, offset, _ = latest[image_path]
            if file_index not in handles:
                handles[file_index] = stack.enter_context(open(files[file_index], "rb"))
            records = handles[file_index]
            records.seek(offset)
            yield records.readline().rstrip(b"\n")


def write_run_info(
    out_dir: Path,
    config_hash: str,
    config: dict[str, Any],
    identity: dict[str, Any] | None = None,
    file_hashes: dict[str, Any] | None = None,
    migrated_from: str | None = None,
) -> None:
    """`run.json`: which run identity produced this folder's results (checked by the next run): its hash
    (`config_hash`), its parts (`identity`), the config, and the sha256 of the files the identity read by
    (path, size, mtime_ns) (`file_hashes`, so a rerun does not hash an unchanged checkpoint again), and for a
    folder of an earlier release the `config_hash` it recorded (`migrated_from`: its shard markers carry it)."""
    data: dict[str, Any] = {"config_hash": config_hash, "config": config}
    if identity is not None:
        data["identity"] = identity
    if file_hashes is not None:
        data["file_hashes"] = file_hashes
    if migrated_from is not None:
        data["migrated_from"] = migrated_from
    text = json.dumps(data, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False)
    atomic_write_bytes(out_dir / RUN_NAME, text.encode(), durable=True)


def read_run_info(out_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((out_dir / RUN_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def identity_fields(out_dir: Path) -> dict[str, Any]:
    """`config_hash` and `identity` as the folder's run.json records them (empty for an older run.json):
    what every manifest and shard marker of the folder carries, since run.json is claimed before any result
    is written and a run of another identity is refused."""
    info = read_run_info(out_dir)
    if info is None or not isinstance(info.get("identity"), dict) or not isinstance(info.get("config_hash"), str):
        return {}
    return {"config_hash": info["config_hash"], "identity": info["identity"]}


MANIFEST_HEADER_LIMIT = 1 << 24  # the header is small; never read a whole 100,000-image manifest for it


def read_manifest_header(out_dir: Path) -> dict[str, Any] | None:
    """A manifest's header (everything but `images`), read from its start: `write_manifest` writes the
    images last (a manifest rewritten with its keys sorted is read whole). None when there is no readable
    manifest."""
    marker = b'"images": ['
    head = b""
    try:
        with open(Path(out_dir) / MANIFEST_NAME, "rb") as handle:
            while marker not in head and len(head) < MANIFEST_HEADER_LIMIT:
                block = handle.read(1 << 16)
                if not block:
                    break
                head += block
    except OSError:
        return None
    cut = head.find(marker)
    if cut < 0:
        return None
    try:
        header = json.loads(head[:cut].rstrip().rstrip(b",").decode("utf-8") + "}")
        if isinstance(header, dict) and "tool" not in header:  # keys after `images`: not as we write it
            header = json.loads((Path(out_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    header.pop("images", None)
    return header


def read_manifest(out_dir: Path, role: str = "") -> dict[str, Any]:
    """A finished run's manifest; a missing folder or manifest, bad JSON or another schema_version is a
    GradcamError (exit 2) whose message starts with `role` ("baseline", "current") when given."""
    from gradcam_cli.errors import GradcamError, InputError

    where = f"{role} {out_dir}" if role else str(out_dir)
    path = Path(out_dir) / MANIFEST_NAME
    if not Path(out_dir).is_dir():
        raise InputError(f"{where} is not a folder: give the output folder of `gradcam run`.")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            f"{where} has no {MANIFEST_NAME}: give the output folder of a finished `gradcam run` "
            "(the manifest is written when a run ends; an interrupted run writes it when resumed)."
        ) from None
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        manifest = json.loads(text)
    except ValueError as error:
        raise InputError(f"{path} is not valid JSON ({error}); re-run `gradcam run` to rewrite it.") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path} is not a gradcam manifest (expected a JSON object).")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise GradcamError(
            f"{where}: {path} has schema_version {version!r}; this gradcam-cli reads schema_version "
            f"{SCHEMA_VERSION}. Use the gradcam-cli version that wrote it, or re-run `gradcam run` into a new folder."
        )
    if not isinstance(manifest.get("images"), list):
        raise InputError(f"{path} has no 'images' list; re-run `gradcam run` to rewrite it.")
    return manifest
