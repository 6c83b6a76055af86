"""Reports of a `Comparison`: a terminal table, JUnit XML, Markdown for a pull request, a standalone HTML page.

Every report lists the failing images worst first; the HTML page shows, per failing image, the baseline
overlay, the current overlay and a signed difference map, embedded so the one file can be uploaded as a
CI artifact and opened anywhere.

Text from the folders (file names, labels, error messages) is untrusted: control characters are shown
escaped (`\x1b`) in every report, so a name cannot move the terminal's cursor or break a table row. The
HTML page reads an original image only when a record of the run names it and its bytes still have the
record's sha256; otherwise overlays are drawn from the heatmap alone.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gradcam_cli import __version__
from gradcam_cli.config import InputConfig
from gradcam_cli.io.decode import ImageReadError, decode_bytes
from gradcam_cli.io.encode import jpeg_preview
from gradcam_cli.io.files import atomic_write_bytes
from gradcam_cli.io.overlay import blend, colorize
from gradcam_cli.reports.compare import PASS, Comparison, ImageComparison, MetricCheck, read_picture, result_file

TABLE_ROWS = 40  # terminal and Markdown: enough to act on, short enough to read
HTML_IMAGES = 100  # failing images shown with pictures; the rest are listed in the table
THUMB_SIDE = 320  # long side of embedded pictures, in pixels
DEFAULT_MAX_PIXELS = InputConfig().max_pixels


# C0 and C1 controls, DEL, lone surrogates and the non-characters XML cannot carry.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def printable(text: Any) -> str:
    """`str(text)` with control characters shown as \\xNN (\\uNNNN): safe on a terminal and in a table row."""
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", str(text)
    )


def _number(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _labels(image: ImageComparison) -> str:
    if image.baseline_label == image.current_label:
        return printable(image.current_label or "-")
    return printable(f"{image.baseline_label or '-'} -> {image.current_label or '-'}")


def _cells(image: ImageComparison) -> list[str]:
    drift = image.drift
    return [
        image.status,
        printable(image.path),
        _labels(image),
        _number(image.score_change, signed=True),
        _number(drift.correlation if drift else None),
        _number(drift.mean_abs_diff if drift else None),
        _number(drift.iou if drift else None),
        _number(drift.peak_shift if drift else None, 1),
    ]


HEADERS = ["status", "image", "top-1", "score change", "correlation", "mean abs diff", "IoU top-20%", "peak shift px"]


def _thresholds(comparison: Comparison) -> str:
    limits = comparison.thresholds
    parts = [
        f"correlation >= {limits.min_correlation}",
        f"mean abs diff <= {limits.max_mean_abs_diff}",
        f"IoU >= {limits.min_iou}",
    ]
    if limits.max_peak_shift is not None:
        parts.append(f"peak shift <= {limits.max_peak_shift} px")
    if limits.max_score_change is not None:
        parts.append(f"|score change| <= {limits.max_score_change}")
    if limits.max_metric_drop is not None:
        parts.append(f"metric mean worse by <= {limits.max_metric_drop}")
    parts.append("label changes allowed" if limits.allow_label_change else "label changes fail")
    return ", ".join(parts)


def _metric_line(check: MetricCheck) -> str:
    return f"metric {'DRIFT' if check.failing else 'ok'}: {printable(check.describe())}"


def text_table(comparison: Comparison, rows: int = TABLE_ROWS) -> str:
    """The terminal report: the non-passing images worst first, then the verdict."""
    shown = [image for image in comparison.images if image.status != PASS]
    lines = [f"baseline: {printable(comparison.baseline_dir)}", f"current:  {printable(comparison.current_dir)}"]
    lines += [f"note: {printable(note)}" for note in comparison.notes]
    lines.append(f"thresholds: {_thresholds(comparison)}")
    lines += [_metric_line(check) for check in comparison.metric_checks]
    if shown:
        table = [HEADERS] + [_cells(image) for image in shown[:rows]]
        widths = [min(60, max(len(row[i]) for row in table)) for i in range(len(HEADERS))]
        for row in table:
            lines.append("  ".join(cell[: widths[i]].ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if len(shown) > rows:
            lines.append(f"... and {len(shown) - rows} more (see --junit/--markdown/--html reports)")
        for image in shown[: min(rows, 10)]:
            if image.reasons:
                lines.append(printable(f"  {image.path}: {'; '.join(image.reasons)}"))
    lines.append(comparison.summary_line())
    return "\n".join(lines)


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _xml_safe(text: str) -> str:
    return _XML_INVALID.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def write_junit(comparison: Comparison, path: Path) -> None:
    """JUnit XML: one testcase per image; drift and failures are <failure>, missing images <skipped>."""
    failures = len(comparison.failing) + len(comparison.failing_metrics)
    skipped = sum(1 for image in comparison.images if image.status not in (PASS, "drift", "failed"))
    tests = len(comparison.images) + len(comparison.metric_checks)
    suites = ET.Element("testsuites", name="gradcam compare", tests=str(tests))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="gradcam-compare",
        tests=str(tests),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        time="0",
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in comparison.thresholds.model_dump().items():
        ET.SubElement(properties, "property", name=key, value=json.dumps(value))
    for image in sorted(comparison.images, key=lambda i: i.path):
        case = ET.SubElement(suite, "testcase", classname="gradcam.compare", name=printable(image.path), time="0")
        reasons = [printable(reason) for reason in image.reasons]
        detail = "\n".join(
            [
                *reasons,
                "metrics: " + ", ".join(f"{h}={c}" for h, c in zip(HEADERS[2:], _cells(image)[2:], strict=True)),
            ]
        )
        if image.failing:
            failure = ET.SubElement(case, "failure", type=image.status, message="; ".join(reasons)[:500])
            failure.text = detail
        elif image.status != PASS:
            ET.SubElement(case, "skipped", message=f"{image.status}: {'; '.join(reasons)}"[:500])
        else:
            ET.SubElement(case, "system-out").text = detail
    for check in comparison.metric_checks:  # compare.max_metric_drop: one testcase per metric, for the run
        case = ET.SubElement(suite, "testcase", classname="gradcam.compare.metrics", name=check.name, time="0")
        if check.failing:
            ET.SubElement(case, "failure", type="metric-drop", message=check.describe()).text = check.describe()
        else:
            ET.SubElement(case, "system-out").text = check.describe()
    for element in suites.iter():  # file names may hold characters XML 1.0 cannot carry
        element.attrib = {key: _xml_safe(value) for key, value in element.attrib.items()}
        if element.text:
            element.text = _xml_safe(element.text)
    ET.indent(suites)
    atomic_write_bytes(Path(path), ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n")


def _md(text: str) -> str:
    """Table-cell text that cannot close the cell or start Markdown/HTML (file names are untrusted)."""
    escaped = html.escape(printable(text.replace("\n", " ")), quote=False)
    return re.sub(r"([\\`*_\[\]()!#|~<>])", r"\\\1", escaped)


def markdown(comparison: Comparison, rows: int = 10) -> str:
    """A short summary fit for a pull-request comment."""
    failing = comparison.failing
    total = len(comparison.images)
    title = (
        f"### Grad-CAM attention check: drift in {len(failing)} of {total} images"
        if failing
        else f"### Grad-CAM attention check: no drift in {total} images"
    )
    lines = [title, ""]
    counts = [
        f"{comparison.count(s)} {s}"
        for s in ("pass", "drift", "failed", "missing-in-current", "missing-in-baseline", "failed-both")
        if comparison.count(s)
    ]
    if comparison.failing_metrics:
        worse = "a metric's mean got worse"
        lines[0] = f"{title}; {worse}" if failing else f"### Grad-CAM attention check: {worse}"
    lines.append(f"{', '.join(counts)}. Thresholds: {_thresholds(comparison)}.")
    lines += [f"- note: {_md(note)}" for note in comparison.notes]
    lines += [f"- {_md(_metric_line(check))}" for check in comparison.metric_checks]
    shown = [image for image in comparison.images if image.status != PASS][:rows]
    if shown:
        lines += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        for image in shown:
            cells = _cells(image)
            cells = [_md(cell) for cell in cells]
            cells[1] = f"<code>{cells[1]}</code>"
            lines.append("| " + " | ".join(cells) + " |")
        more = sum(1 for image in comparison.images if image.status != PASS) - len(shown)
        if more > 0:
            lines.append(f"\n... and {more} more in the HTML report.")
    lines.append(f"\n<sub>gradcam-cli {__version__} compare</sub>")
    return "\n".join(lines) + "\n"


def write_markdown(comparison: Comparison, path: Path) -> None:
    atomic_write_bytes(Path(path), markdown(comparison).encode())


# HTML -------------------------------------------------------------------------------------------------


def _read_rgb(path: Path) -> np.ndarray | None:
    try:
        return read_picture(path, "RGB")
    except ValueError:
        return None


def _data_uri(pixels: np.ndarray | None) -> str | None:
    """A JPEG data URI of the shrunk picture (a tenth of a PNG's size for photo overlays)."""
    if pixels is None:
        return None
    try:
        encoded = jpeg_preview(cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), THUMB_SIDE)
    except ValueError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(encoded).decode()


def difference_map(baseline: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Signed heatmap difference as RGB: red where the current map is hotter, blue where it is colder."""
    delta = (current.astype(np.float32) - baseline.astype(np.float32)) / 255.0
    hotter, colder = np.clip(delta, 0, 1), np.clip(-delta, 0, 1)
    rgb = np.stack([1 - colder, 1 - hotter - colder, 1 - hotter], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def _file(out_dir: Path, cam: dict[str, Any] | None, key: str) -> Path | None:
    return result_file(out_dir, (cam or {}).get(key))


def _recorded_original(record: dict[str, Any] | None) -> bytes | None:
    """The bytes of the image an ok record was made from, only if they still have the record's sha256 (a
    manifest can name any file; only the image the run read is shown)."""
    record = record or {}
    source, sha256, size = record.get("source"), record.get("sha256"), record.get("file_size")
    if record.get("status") != "ok" or record.get("archive") or not isinstance(source, str):
        return None
    if not isinstance(sha256, str) or not isinstance(size, int):
        return None
    try:
        if not Path(source).is_file() or Path(source).stat().st_size != size:
            return None  # checked before reading: a record cannot make us read a huge file
        data = Path(source).read_bytes()
    except (OSError, ValueError):
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256 else None


def _original(image: ImageComparison) -> np.ndarray | None:
    """The source image (for overlays a run did not write), if it is the very file the run read."""
    for record in (image.current_record, image.baseline_record):
        data = _recorded_original(record)
        if data is None:
            continue
        try:
            return np.asarray(decode_bytes(data, max_pixels=DEFAULT_MAX_PIXELS))
        except (ImageReadError, MemoryError):
            continue
    return None


def _overlay(out_dir: Path, cam: dict[str, Any] | None, original: np.ndarray | None) -> np.ndarray | None:
    """The run's overlay; else one drawn from its heatmap (committed CI baselines often keep heatmaps only)."""
    overlay = _file(out_dir, cam, "overlay")
    if overlay is not None and overlay.is_file():
        return _read_rgb(overlay)
    heatmap_path = _file(out_dir, cam, "heatmap")
    heatmap = _read_rgb(heatmap_path) if heatmap_path is not None else None
    if heatmap is None:
        return None
    if original is None or original.shape[:2] != heatmap.shape[:2]:
        return colorize(heatmap[..., 0], "jet")
    return blend(original, heatmap[..., 0], "jet", 0.5)


def _pictures(comparison: Comparison, image: ImageComparison) -> list[tuple[str, str | None]]:
    old_cam = image.baseline_cam or ((image.baseline_record or {}).get("cams") or [None])[0]
    new_cam = image.current_cam or ((image.current_record or {}).get("cams") or [None])[0]
    pictures: list[tuple[str, str | None]] = []
    original = _original(image)
    for title, out_dir, cam in (
        ("baseline", comparison.baseline_dir, old_cam),
        ("current", comparison.current_dir, new_cam),
    ):
        label = printable(f"{title}: {cam.get('label')} ({cam.get('score') or 0:.3f})") if cam else f"{title}: -"
        pictures.append((label, _data_uri(_overlay(out_dir, cam, original))))
    old_map, new_map = (
        _file(comparison.baseline_dir, old_cam, "heatmap"),
        _file(comparison.current_dir, new_cam, "heatmap"),
    )
    difference = None
    if old_map and new_map:
        a, b = _read_rgb(old_map), _read_rgb(new_map)
        if a is not None and b is not None and a.shape == b.shape:
            difference = _data_uri(difference_map(a[..., 0], b[..., 0]))
    pictures.append(("difference (red: hotter now, blue: colder)", difference))
    return pictures


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1d232b;color:#fff;padding:16px 24px}header h1{margin:0 0 4px;font-size:20px}
header p{margin:2px 0;color:#c9d1db}main{padding:16px 24px}
.verdict{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600}
.bad{background:#d64545;color:#fff}.good{background:#2f9e5b;color:#fff}
.card{background:#fff;border:1px solid #dde2e8;border-radius:8px;margin:0 0 16px;padding:12px 16px}
.card h2{font-size:15px;margin:0 0 6px;word-break:break-all}.reasons{color:#a23030;margin:0 0 8px;padding-left:18px}
.row{display:flex;gap:12px;flex-wrap:wrap}figure{margin:0}figure img{display:block;max-width:320px;
border:1px solid #dde2e8;border-radius:4px;background:#eee}figcaption{font-size:12px;color:#56606b}
.missing{width:320px;height:120px;display:flex;align-items:center;justify-content:center;background:#eee;color:#777}
table{border-collapse:collapse;background:#fff;font-size:13px;width:100%}
th,td{border-bottom:1px solid #e6e9ee;padding:4px 8px;text-align:left}td.path{word-break:break-all}
.metrics{font-size:12px;color:#333;margin:4px 0 8px}
"""


def _card(comparison: Comparison, image: ImageComparison) -> str:
    cells = _cells(image)
    metrics = " · ".join(f"{h}: {html.escape(c)}" for h, c in zip(HEADERS[2:], cells[2:], strict=True))
    figures = []
    for caption, uri in _pictures(comparison, image):
        body = f'<img src="{uri}" alt="{html.escape(caption)}">' if uri else '<div class="missing">not available</div>'
        figures.append(f"<figure>{body}<figcaption>{html.escape(caption)}</figcaption></figure>")
    reasons = "".join(f"<li>{html.escape(printable(reason))}</li>" for reason in image.reasons)
    return (
        f'<section class="card" data-status="{image.status}"><h2>{html.escape(printable(image.path))} '
        f'<span class="verdict bad">{image.status}</span></h2><ul class="reasons">{reasons}</ul>'
        f'<div class="metrics">{metrics}</div><div class="row">{"".join(figures)}</div></section>'
    )


def html_page(comparison: Comparison) -> str:
    """A self-contained page (pictures embedded as data URIs; no scripts, no network)."""
    failing = comparison.failing
    verdict = (
        f'<span class="verdict bad">drift in {len(failing)} images</span>'
        if failing
        else '<span class="verdict good">no drift</span>'
    )
    if comparison.failing_metrics:
        verdict += ' <span class="verdict bad">metric mean worse</span>'
    notes = "".join(f"<p>note: {html.escape(printable(note))}</p>" for note in comparison.notes)
    notes += "".join(f"<p>{html.escape(_metric_line(check))}</p>" for check in comparison.metric_checks)
    cards = "".join(_card(comparison, image) for image in failing[:HTML_IMAGES])
    if len(failing) > HTML_IMAGES:
        cards += f"<p>{len(failing) - HTML_IMAGES} more failing images are listed in the table below.</p>"
    rows = "".join(
        "<tr>"
        + "".join(
            f'<td class="path">{html.escape(c)}</td>' if i == 1 else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(_cells(image))
        )
        + "</tr>"
        for image in comparison.images
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    folders = printable(f"baseline: {comparison.baseline_dir} · current: {comparison.current_dir}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>gradcam compare: {"drift" if comparison.exit_code else "ok"}</title><style>{STYLE}</style></head>
<body><header><h1>Grad-CAM attention check {verdict}</h1>
<p>{html.escape(comparison.summary_line())}</p>
<p>{html.escape(folders)}</p>
<p>thresholds: {html.escape(_thresholds(comparison))}</p>{notes}</header>
<main>{cards}<h2>All images</h2><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>
<p><small>gradcam-cli {__version__}</small></p></main></body></html>
"""


def write_html(comparison: Comparison, path: Path) -> None:
    atomic_write_bytes(Path(path), html_page(comparison).encode())
