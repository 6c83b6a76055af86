"""The record of one image, as records.jsonl and the manifest hold it (schema_version in io/manifest.py).

A record says where the image came from (and what resume compares next time), its predictions, and per
explained class its heatmap, overlay and raw files; a failed image has its error instead.
"""

from __future__ import annotations

from typing import Any

from gradcam_cli.io.discovery import ImageSource, printable_path

TOP_PREDICTIONS = 5


def label_of(labels: list[str] | None, index: int) -> str:
    return labels[index] if labels is not None and 0 <= index < len(labels) else str(index)


def source_fields(source: ImageSource) -> dict[str, Any]:
    """Where a record's image came from, and what resume compares next time."""
    # A name that is not UTF-8 is shown escaped (records are UTF-8 JSON); discovery escaped `path` already.
    return {
        "path": source.path,
        "source": printable_path(source.source),
        "archive": printable_path(source.archive) if source.archive is not None else None,
        "member": printable_path(source.member) if source.member is not None else None,
        "file_size": source.file_size,
        "mtime_ns": source.mtime_ns,
    }


def error_record(source: ImageSource, sha256: str | None, kind: str, message: str) -> dict[str, Any]:
    return {
        **source_fields(source),
        "sha256": sha256,
        "width": None,
        "height": None,
        "status": "error",
        "predictions": [],
        "cams": [],
        "error": {"type": kind, "message": message},
    }


def ok_record(
    source: ImageSource,
    sha256: str | None,
    size: tuple[int, int],
    predictions: list[tuple[int, float]],
    labels: list[str] | None,
    cams: list[dict[str, Any]],
) -> dict[str, Any]:
    """An explained image: its size as displayed, its top predictions (class, probability) and its cams."""
    width, height = size
    return {
        **source_fields(source),
        "sha256": sha256,
        "width": width,
        "height": height,
        "status": "ok",
        "predictions": [
            {"class_index": int(i), "label": label_of(labels, int(i)), "score": round(float(s), 6)}
            for i, s in predictions
        ],
        "cams": cams,
        "error": None,
    }
