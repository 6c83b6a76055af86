"""Records and the manifest: the machine-readable result of a run.

`records.jsonl` gets one JSON line per image, appended and flushed as each batch finishes, so a crash
loses at most the batch in flight. `manifest.json` is written atomically at the end from the header and
the records (streamed, never all in memory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from gradcam_cli.io.files import atomic_open

SCHEMA_VERSION = 1
RECORDS_NAME = "records.jsonl"
MANIFEST_NAME = "manifest.json"
NORMALIZATION = (
    "per image and target: ReLU, then (cam - min) / (max - min + 1e-7) at feature resolution, bilinear to "
    "the model input size, mean over target layers, min-max again, then mapped onto the original image; "
    "heatmap PNG value = round(255 * cam); an all-zero CAM stays zero (quality 'empty')"
)


def dumps_record(record: dict[str, Any]) -> str:
    """One canonical JSON line (sorted keys, no NaN)."""
    return json.dumps(record, sort_keys=True, allow_nan=False, ensure_ascii=False)


class RecordsWriter:
    """Append-only `records.jsonl`: a line per image, flushed per batch."""

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


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records in file order; a torn last line (a crash mid-write) is skipped."""
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


def summarize(records_path: Path) -> dict[str, int]:
    counts = {"total": 0, "ok": 0, "failed": 0, "skipped": 0}
    for record in read_records(records_path):
        counts["total"] += 1
        status = record.get("status")
        counts["failed" if status == "error" else "skipped" if status == "skipped" else "ok"] += 1
    return counts


def write_manifest(out_dir: Path, header: dict[str, Any]) -> Path:
    """Write `manifest.json` atomically: the header (sorted keys) plus `images` streamed from records."""
    records_path = out_dir / RECORDS_NAME
    body = dict(header, schema_version=SCHEMA_VERSION, summary=summarize(records_path))
    head = json.dumps(body, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False)
    path = out_dir / MANIFEST_NAME
    with atomic_open(path, durable=True) as handle:
        handle.write((head[: head.rstrip().rfind("}")].rstrip() + ',\n  "images": [').encode())
        for index, record in enumerate(read_records(records_path)):
            handle.write((("\n    " if index == 0 else ",\n    ") + dumps_record(record)).encode())
        handle.write(b"\n  ]\n}\n")
    return path
