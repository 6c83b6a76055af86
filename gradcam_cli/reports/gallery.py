"""The HTML gallery of a run: `OUT/index.html`, a static page that works offline from file://.

The page is one file: the header (run summary) rendered here, the gallery built in the browser from the
report data embedded as JSON in a `<script type="application/json">` tag (file:// forbids fetch()). Every
path in it is relative to the output folder and URL-escaped; all text reaches the DOM as text, never as
HTML. Thumbnails (`thumbnails/<path>.jpg`, ~160 px) are made once, in a thread pool, and remade only when
missing or older than their overlay (or heatmap, when overlays were off), so a 10,000-image run reopens
fast; the page shows them 200 at a time, lazily loaded. No torch here.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

from gradcam_cli.config import METRIC_HIGHER_IS_BETTER as HIGHER_IS_BETTER
from gradcam_cli.errors import OutputError
from gradcam_cli.io.encode import THUMBNAIL_SIZE, jpeg_preview
from gradcam_cli.io.files import Within, atomic_write_bytes, inside
from gradcam_cli.io.manifest import read_manifest
from gradcam_cli.io.outputs import thumbnail_name
from gradcam_cli.reports.page import read_template

REPORT_NAME = "index.html"
PAGE_SIZE = 200
_URL_SAFE = re.compile(r"[A-Za-z0-9_.~/-]*")  # what quote() leaves alone: most names skip it


def url(relative: str) -> str:
    """A relative path as a URL relative to index.html: every segment percent-escaped (space, #, ?, %, :)."""
    return relative if _URL_SAFE.fullmatch(relative) else quote(relative, safe="/")


def _existing(within: Within, relative: Any) -> str | None:
    """`relative` when it names a file inside the output folder, else None (missing, absent or escaping)."""
    if not isinstance(relative, str) or not relative:
        return None
    return relative if within.mtime(relative) is not None else None


def _cams(record: dict[str, Any]) -> list[dict[str, Any]]:
    cams = [c for c in record.get("cams") or [] if isinstance(c, dict)]
    return sorted(cams, key=lambda c: c.get("rank") if isinstance(c.get("rank"), int) else 0)


def thumbnail_source(within: Within, record: dict[str, Any]) -> str | None:
    """What the thumbnail shows: the rank-0 cam's overlay, else its heatmap (overlays off), else nothing."""
    cams = _cams(record)
    if not cams:
        return None
    return _existing(within, cams[0].get("overlay")) or _existing(within, cams[0].get("heatmap"))


def make_thumbnail(data: bytes, size: int = THUMBNAIL_SIZE) -> bytes:
    """JPEG bytes of an encoded image scaled (INTER_AREA) to `size` pixels on its long side; never enlarged."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ValueError("not a decodable image")
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2BGR)
    return jpeg_preview(pixels, size)


def _make_thumbnail(within: Within, name: str, source: str) -> bool:
    """Write one thumbnail; False when its overlay cannot be read (the card then shows no picture)."""
    try:
        with open(within.path(source), "rb") as handle:
            data = make_thumbnail(handle.read())
    except (OSError, ValueError):
        return False
    target = Path(within.path(name))
    try:
        atomic_write_bytes(target, data)
    except OSError as error:
        raise OutputError(f"cannot write {target}: {error.strerror or error}") from None
    return True


def write_thumbnails(out_dir: Path, records: Iterable[dict[str, Any]], workers: int | None = None) -> dict[str, str]:
    """Make the missing or stale thumbnails; {image path: thumbnail name} for those that exist.

    A thumbnail is remade only when it is missing or older than its source, so reopening is cheap.
    """
    within = Within(out_dir)
    current: dict[str, str] = {}
    stale: list[tuple[str, str, str]] = []  # image path, thumbnail name, source name
    for record in records:
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            continue
        source = thumbnail_source(within, record)
        name = thumbnail_name(record["path"])
        try:
            within.path(name)
        except ValueError:
            continue  # a path that would land outside the folder gets no thumbnail
        if source is None:
            continue
        made = within.mtime(name)
        if made is not None and made >= (within.mtime(source) or 0):
            current[record["path"]] = name
        else:
            stale.append((record["path"], name, source))
    if stale:
        # OpenCV releases the GIL while decoding, resizing and encoding, so threads scale.
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            made_ok = pool.map(lambda job: _make_thumbnail(within, job[1], job[2]), stale)
            current.update((path, name) for (path, name, _), ok in zip(stale, made_ok, strict=True) if ok)
    return current


def _score(value: Any) -> float | None:
    """A finite number, else None (the page's JSON has no NaN)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _label(entry: dict[str, Any]) -> str | None:
    label = entry.get("label")
    if isinstance(label, str) and label:
        return label
    index = entry.get("class_index")
    return f"class {index}" if isinstance(index, int) else None


def _metrics(cam: dict[str, Any]) -> dict[str, float | None] | None:
    """cam.metrics values of a cam entry (finite numbers or None), None when the run computed none."""
    metrics = cam.get("metrics")
    if not isinstance(metrics, dict):
        return None
    return {str(name): _score(value) for name, value in metrics.items()}


def _image_data(within: Within, record: dict[str, Any], thumbnails: dict[str, str]) -> dict[str, Any]:
    path = record["path"]
    cams = []
    for cam in _cams(record):
        heatmap, overlay = _existing(within, cam.get("heatmap")), _existing(within, cam.get("overlay"))
        cams.append(
            {
                "rank": cam.get("rank"),
                "class_index": cam.get("class_index"),
                "label": _label(cam),
                "score": _score(cam.get("score")),
                "quality": cam.get("quality"),
                "raw_max": _score(cam.get("raw_max")),
                "metrics": _metrics(cam),
                "heatmap": url(heatmap) if heatmap else None,
                "overlay": url(overlay) if overlay else None,
            }
        )
    predictions = [
        {"class_index": p.get("class_index"), "label": _label(p), "score": _score(p.get("score"))}
        for p in record.get("predictions") or []
        if isinstance(p, dict)
    ]
    top = cams[0] if cams else (predictions[0] if predictions else None)
    error = record.get("error") if isinstance(record.get("error"), dict) else None
    status = record.get("status") if isinstance(record.get("status"), str) else "ok"
    thumbnail = thumbnails.get(path)
    return {
        "path": path,
        "source": record.get("source") if isinstance(record.get("source"), str) else None,
        "status": status,
        "width": record.get("width"),
        "height": record.get("height"),
        "label": top["label"] if top and status != "error" else None,
        "score": top["score"] if top and status != "error" else None,
        "metrics": (cams[0]["metrics"] or {}) if cams and status != "error" else {},  # the top class's, to sort by
        "thumbnail": url(thumbnail) if thumbnail else None,
        "cams": cams,
        "predictions": predictions,
        "error": {"type": str(error.get("type") or "Error"), "message": str(error.get("message") or "")}
        if error
        else None,
    }


def report_data(out_dir: Path, manifest: dict[str, Any], thumbnails: dict[str, str]) -> dict[str, Any]:
    """What the page's script reads: one entry per image, in manifest order, with escaped relative URLs."""
    within = Within(out_dir)
    images = [
        _image_data(within, record, thumbnails)
        for record in manifest.get("images") or []
        if isinstance(record, dict) and isinstance(record.get("path"), str)
    ]
    return {"page_size": PAGE_SIZE, "images": images, "metrics": metric_columns(manifest, images)}


def metric_columns(manifest: dict[str, Any], images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metrics the page can show and sort by: the manifest's `metrics.names` (else those the records
    hold), each with whether higher is better. Empty for a run without cam.metrics."""
    block = manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else {}
    names = [n for n in block.get("names") or [] if isinstance(n, str)] if isinstance(block.get("names"), list) else []
    if not names:
        names = sorted({name for image in images for cam in image["cams"] for name in cam["metrics"] or {}})
    better = block.get("higher_is_better") if isinstance(block.get("higher_is_better"), dict) else {}
    return [{"name": name, "higher_is_better": better.get(name, HIGHER_IS_BETTER.get(name, True))} for name in names]


HISTOGRAM_BINS = 16


def histogram_svg(values: list[float], bins: int = HISTOGRAM_BINS, width: int = 160, height: int = 34) -> str:
    """A small inline SVG histogram of `values` (each bar's count and range in its tooltip); '' when empty."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / span * bins))] += 1
    tallest = max(counts)
    step = width / bins
    bars = []
    for index, count in enumerate(counts):
        bar = round((height - 2) * count / tallest, 1)
        start, end = low + span * index / bins, low + span * (index + 1) / bins
        bars.append(
            f'<rect x="{index * step:.1f}" y="{height - bar:.1f}" width="{step - 1:.1f}" height="{bar}">'
            f"<title>{count} in [{start:.3f}, {end:.3f}]</title></rect>"
        )
    return (
        f'<svg class="histogram" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="histogram">{"".join(bars)}</svg>'
    )


def _metrics_header(manifest: dict[str, Any], data: dict[str, Any]) -> str:
    """Per metric: its name (which way is better), mean and median, and a histogram over the top classes."""
    summary = manifest.get("summary") if isinstance(manifest.get("summary"), dict) else {}
    stats = summary.get("metrics") if isinstance(summary.get("metrics"), dict) else {}
    blocks = []
    for column in data["metrics"]:
        name = column["name"]
        values = [v for image in data["images"] if (v := (image.get("metrics") or {}).get(name)) is not None]
        facts = stats.get(name) if isinstance(stats.get(name), dict) else {}
        numbers = " · ".join(
            f"{key} {facts[key]:.3f}" for key in ("mean", "median") if isinstance(facts.get(key), (int, float))
        )
        better = "higher is better" if column["higher_is_better"] else "lower is better"
        blocks.append(
            f'<figure class="metric" data-metric="{html.escape(name)}">{histogram_svg(values)}'
            f"<figcaption><b>{html.escape(name)}</b> <span>{html.escape(numbers)}</span> "
            f"<span>({better})</span></figcaption></figure>"
        )
    return f'<div class="metrics">{"".join(blocks)}</div>' if blocks else ""


def _summary(manifest: dict[str, Any], data: dict[str, Any]) -> dict[str, int]:
    summary = manifest.get("summary")
    if isinstance(summary, dict) and all(isinstance(summary.get(k), int) for k in ("total", "ok", "failed")):
        run = manifest.get("run") if isinstance(manifest.get("run"), dict) else {}
        skipped = run.get("skipped", summary.get("skipped", 0))  # older manifests kept it in the summary
        return {
            **{k: summary[k] for k in ("total", "ok", "failed")},
            "skipped": skipped if isinstance(skipped, int) else 0,
        }
    failed = sum(1 for image in data["images"] if image["status"] == "error")
    total = len(data["images"])
    return {"total": total, "ok": total - failed, "failed": failed, "skipped": 0}


def _header(out_dir: Path, manifest: dict[str, Any], data: dict[str, Any]) -> str:
    """The run summary as escaped HTML: model, method, layer, targets, counts, config hash."""
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    tool = manifest.get("tool") if isinstance(manifest.get("tool"), dict) else {}
    targets = manifest.get("targets")
    if isinstance(targets, list):
        targets = ", ".join(str(t) for t in targets)
    config_hash = manifest.get("config_hash")
    facts = [
        ("Model", model.get("source")),
        ("Method", manifest.get("method")),
        ("Target layer", manifest.get("target_layer")),
        ("Targets", targets),
        ("Device", " · ".join(str(v) for v in (manifest.get("device"), manifest.get("precision")) if v)),
        ("Config", config_hash[:12] if isinstance(config_hash, str) else None),
        ("Finished", manifest.get("finished_at")),
        ("Tool", " ".join(str(v) for v in (tool.get("name"), tool.get("version")) if v)),
    ]
    items = "".join(
        f'<div><dt>{html.escape(name)}</dt><dd title="{html.escape(str(value))}">{html.escape(str(value))}</dd></div>'
        for name, value in facts
        if value not in (None, "")
    )
    counts = _summary(manifest, data)
    badges = "".join(
        f'<span class="count {key}{" nonzero" if counts.get(key) else ""}"><b>{counts.get(key, 0):,}</b> {key}</span>'
        for key in ("total", "ok", "failed", "skipped")
    )
    name = html.escape(Path(out_dir).resolve().name or str(out_dir))
    return (
        f'<h1>Grad-CAM report <span class="dir">{name}</span></h1>'
        f'<div class="counts">{badges}</div><dl class="facts">{items}</dl>{_metrics_header(manifest, data)}'
    )


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' that could end it or open a comment."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_report(out_dir: Path, manifest: dict[str, Any], data: dict[str, Any]) -> str:
    """The complete page: the template with the title, header and data filled in (one pass, no re-scan)."""
    template = read_template("report.html")
    values = {
        "TITLE": html.escape(f"Grad-CAM report: {Path(out_dir).resolve().name}"),
        "HEADER": _header(out_dir, manifest, data),
        "DATA": _script_json(data),
    }
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda match: values[match.group(1)], template)


def write_report(out_dir: Path, workers: int | None = None) -> Path:
    """Write OUT_DIR/index.html (and the missing or stale thumbnails); returns the page's path.

    Raises a GradcamError when OUT_DIR has no manifest.json or one with an unsupported schema_version,
    and an OutputError when the folder cannot be written. Nothing is written outside OUT_DIR.
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    thumbnails = write_thumbnails(out_dir, manifest["images"], workers)
    data = report_data(out_dir, manifest, thumbnails)
    try:
        page = inside(out_dir, REPORT_NAME)
    except ValueError:
        raise OutputError(f"{out_dir / REPORT_NAME} is a link leading outside the output folder; remove it.") from None
    try:
        atomic_write_bytes(page, render_report(out_dir, manifest, data).encode("utf-8"))
    except OSError as error:
        raise OutputError(f"cannot write {page}: {error.strerror or error}") from None
    return page
