"""The HTML gallery (`gradcam report`): report data, thumbnails and escaping, then the page in real Chromium.

Runs are synthesised (manifest + PNGs, no model) so every case is explicit: names with spaces, '#', '?',
'%' and unicode, labels and error messages that are HTML, top-k records, records without overlays,
failures, an empty run. One test runs the real pipeline to keep the report in step with the manifest.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from gradcam_cli.errors import GradcamError
from gradcam_cli.io.encode import THUMBNAIL_SIZE
from gradcam_cli.reports.gallery import REPORT_NAME, url, write_report, write_thumbnails
from tests.browser import artifact, chromium_page
from tests.conftest import REPO

WEIRD = "sub dir/we#ird ?name %20 ü.jpg"
HOSTILE_LABEL = '<img src=x onerror="window.__pwned=1">'
HOSTILE_PATH = "<b>bold</b> & 'quote'.png"
HOSTILE_MESSAGE = '</script><script>window.__pwned=2</script> "not" an image'
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 80, 220)]  # rank 0, 1, 2


@functools.cache
def _png_bytes(size: tuple[int, int], colour: tuple[int, ...] | int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L" if isinstance(colour, int) else "RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def _png(path: Path, size: tuple[int, int], colour: tuple[int, ...] | int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(size, colour))


def _ok(
    out: Path,
    path: str,
    scores: list[float],
    labels: list[str],
    overlays: bool = True,
    size: tuple[int, int] = (320, 240),
    k: int = 1,
) -> dict[str, Any]:
    """An ok record with `k` cams; its heatmaps (grey 90 + rank) and overlays (COLOURS[rank]) on disk."""
    cams = []
    for rank in range(k):
        name = f"{path}.cls{rank}.png" if k > 1 else f"{path}.png"
        _png(out / "heatmaps" / name, size, 90 + rank)
        if overlays:
            _png(out / "overlays" / name, size, COLOURS[rank])
        cams.append(
            {
                "rank": rank,
                "class_index": rank,
                "label": labels[rank],
                "score": scores[rank],
                "heatmap": f"heatmaps/{name}",
                "overlay": f"overlays/{name}" if overlays else None,
                "quality": "ok",
                "raw_max": 0.5 / (rank + 1),
            }
        )
    predictions = [
        {"class_index": i, "label": label, "score": score}
        for i, (label, score) in enumerate(zip(labels, scores, strict=True))
    ]
    return {
        "path": path,
        "source": f"/data/{path}",
        "archive": None,
        "member": None,
        "file_size": 1,
        "mtime_ns": 1,
        "sha256": "0" * 64,
        "width": size[0],
        "height": size[1],
        "status": "ok",
        "predictions": predictions,
        "cams": cams,
        "error": None,
    }


def _failed(path: str, kind: str, message: str) -> dict[str, Any]:
    return {
        "path": path,
        "source": f"/data/{path}",
        "archive": None,
        "member": None,
        "file_size": 0,
        "mtime_ns": 1,
        "sha256": None,
        "width": None,
        "height": None,
        "status": "error",
        "predictions": [],
        "cams": [],
        "error": {"type": kind, "message": message},
    }


def _manifest(out: Path, records: list[dict[str, Any]], **header: Any) -> Path:
    failed = sum(r["status"] == "error" for r in records)
    manifest = {
        "schema_version": 1,
        "tool": {"name": "gradcam-cli", "version": "0.1.0"},
        "config": {},
        "config_hash": "ab" * 32,
        "method": "gradcam",
        "target_layer": "features",
        "targets": "top1",
        "device": "cpu",
        "precision": "fp32",
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:00:01+00:00",
        "normalization": "min-max",
        "model": {"source": "factory:demo", "weights": None, "checkpoint_sha256": None, "num_classes": 3},
        "summary": {"total": len(records), "ok": len(records) - failed, "failed": failed, "skipped": 0},
        "images": records,
    }
    manifest.update(header)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False))
    return out


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run with every kind of record the page must handle."""
    out = tmp_path / "out"
    labels = ["cat", "dog", "bird"]
    records = [
        _failed("broken.jpg", "NotAnImage", HOSTILE_MESSAGE),
        _ok(out, "plain.jpg", [0.9, 0.07, 0.03], labels),
        _ok(out, HOSTILE_PATH, [0.6, 0.3, 0.1], [HOSTILE_LABEL, "dog", "bird"], size=(100, 300)),
        _ok(out, "noov.jpg", [0.5, 0.3, 0.2], ["dog", "cat", "bird"], overlays=False),
        _failed("empty.jpg", "EmptyFile", "the file is empty (0 bytes)"),
        _ok(out, WEIRD, [0.3, 0.2, 0.1], ["dog", "cat", "bird"], size=(64, 48)),
        _ok(out, "topk.jpg", [0.7, 0.2, 0.1], labels, k=3),
    ]
    return _manifest(out, records, model={"source": "factory:<b>evil</b>", "num_classes": 3})


def _page_data(page: Path) -> dict[str, Any]:
    text = page.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert match, "report data not embedded"
    return json.loads(match.group(1))


def _urls(image: dict[str, Any]) -> list[str]:
    found = [image["thumbnail"]] if image["thumbnail"] else []
    for cam in image["cams"]:
        found += [u for u in (cam["heatmap"], cam["overlay"]) if u]
    return found


# ---------------------------------------------------------------------------------------------- data


def test_url_escapes_every_segment() -> None:
    assert url("overlays/sub dir/a#b?c%d ü.png") == "overlays/sub%20dir/a%23b%3Fc%25d%20%C3%BC.png"
    assert url("a:b/c.png") == "a%3Ab/c.png"  # never read as a URL scheme


def test_report_escapes_text_and_uses_relative_urls(run_dir: Path) -> None:
    page = write_report(run_dir)
    assert page == (run_dir / REPORT_NAME).resolve()
    text = page.read_text(encoding="utf-8")
    # No markup from data: labels, paths and messages are JSON-escaped, the header is HTML-escaped.
    for hostile in (HOSTILE_LABEL, HOSTILE_PATH, "<b>evil</b>", "window.__pwned=2</script>"):
        assert hostile not in text
    assert "factory:&lt;b&gt;evil&lt;/b&gt;" in text
    assert text.count("</script>") == 2  # the data block and the page script, nothing injected
    data = _page_data(page)
    images = {image["path"]: image for image in data["images"]}
    assert list(images) == [r["path"] for r in json.loads((run_dir / "manifest.json").read_text())["images"]]
    assert images[HOSTILE_PATH]["label"] == HOSTILE_LABEL  # kept verbatim as data
    weird = images[WEIRD]
    assert weird["thumbnail"] == "thumbnails/sub%20dir/we%23ird%20%3Fname%20%2520%20%C3%BC.jpg.jpg"
    assert weird["cams"][0]["overlay"] == "overlays/sub%20dir/we%23ird%20%3Fname%20%2520%20%C3%BC.jpg.png"
    for image in data["images"]:
        for link in _urls(image):
            assert "://" not in link and not link.startswith("/") and " " not in link and "#" not in link
            assert (run_dir / unquote(link)).is_file(), link


def test_failures_are_listed_with_type_and_message(run_dir: Path) -> None:
    data = _page_data(write_report(run_dir))
    failed = [image for image in data["images"] if image["status"] == "error"]
    expected = [("broken.jpg", "NotAnImage"), ("empty.jpg", "EmptyFile")]
    assert [(i["path"], i["error"]["type"]) for i in failed] == expected
    assert failed[0]["error"]["message"] == HOSTILE_MESSAGE
    assert all(i["thumbnail"] is None and i["label"] is None and i["score"] is None for i in failed)
    assert '<span class="count failed nonzero"><b>2</b> failed</span>' in (run_dir / REPORT_NAME).read_text()


def test_topk_uses_rank0_for_the_thumbnail_and_keeps_every_cam(run_dir: Path) -> None:
    data = _page_data(write_report(run_dir))
    topk = next(i for i in data["images"] if i["path"] == "topk.jpg")
    assert [c["rank"] for c in topk["cams"]] == [0, 1, 2]
    assert [c["overlay"] for c in topk["cams"]] == [f"overlays/topk.jpg.cls{r}.png" for r in range(3)]
    assert (topk["label"], topk["score"]) == ("cat", 0.7)
    thumb = np.asarray(Image.open(run_dir / "thumbnails/topk.jpg.jpg").convert("RGB")).astype(int)
    assert thumb.shape == (120, 160, 3)  # 320x240 -> 160 px on the long side
    assert np.abs(thumb.mean(axis=(0, 1)) - COLOURS[0]).max() < 6  # the rank-0 overlay


def test_without_overlays_the_thumbnail_is_the_heatmap(run_dir: Path) -> None:
    data = _page_data(write_report(run_dir))
    image = next(i for i in data["images"] if i["path"] == "noov.jpg")
    assert image["cams"][0]["overlay"] is None and image["cams"][0]["heatmap"] == "heatmaps/noov.jpg.png"
    thumb = np.asarray(Image.open(run_dir / "thumbnails/noov.jpg.jpg"))
    assert abs(float(thumb.mean()) - 90) < 3


def test_thumbnails_are_made_once_and_remade_when_stale(run_dir: Path) -> None:
    write_report(run_dir)
    thumbs = sorted((run_dir / "thumbnails").rglob("*.jpg"))
    assert len(thumbs) == 5 and not list(run_dir.rglob("*.tmp"))
    assert max(Image.open(t).size[0] for t in thumbs) == THUMBNAIL_SIZE
    assert Image.open(run_dir / "thumbnails" / f"{WEIRD}.jpg").size == (64, 48)  # never enlarged
    before = {t: t.stat().st_mtime_ns for t in thumbs}
    write_report(run_dir)
    assert {t: t.stat().st_mtime_ns for t in thumbs} == before
    overlay = run_dir / "overlays/plain.jpg.png"
    later = before[run_dir / "thumbnails/plain.jpg.jpg"] + 5_000_000_000
    os.utime(overlay, ns=(later, later))
    write_report(run_dir)
    after = {t: t.stat().st_mtime_ns for t in thumbs}
    assert [t.name for t in thumbs if after[t] != before[t]] == ["plain.jpg.jpg"]


def test_empty_run(tmp_path: Path) -> None:
    out = _manifest(tmp_path / "out", [])
    data = _page_data(write_report(out))
    assert data["images"] == [] and not (out / "thumbnails").exists()


def test_refuses_a_folder_without_a_usable_manifest(tmp_path: Path) -> None:
    with pytest.raises(GradcamError, match="no manifest.json"):
        write_report(tmp_path)
    with pytest.raises(GradcamError, match="not a folder"):
        write_report(tmp_path / "missing")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(GradcamError, match="not valid JSON"):
        write_report(tmp_path)
    _manifest(tmp_path, [], schema_version=2)
    with pytest.raises(GradcamError, match="schema_version 2"):
        write_report(tmp_path)
    assert not (tmp_path / REPORT_NAME).exists()


def test_never_reads_or_writes_outside_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _png(tmp_path / "outside.png", (32, 32), (1, 2, 3))
    record = _ok(out, "fine.jpg", [0.9], ["cat"])
    record["cams"][0]["overlay"] = "../outside.png"
    escaping = _ok(out, "x.jpg", [0.8], ["cat"])
    escaping["path"] = "../../escape.jpg"
    _manifest(out, [record, escaping])
    data = _page_data(write_report(out))
    assert data["images"][0]["cams"][0]["overlay"] is None
    assert data["images"][0]["thumbnail"] == "thumbnails/fine.jpg.jpg"  # from the heatmap instead
    assert data["images"][1]["thumbnail"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "outside.png"]
    # a thumbnails/ folder that links elsewhere is not written through
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for thumb in (out / "thumbnails").rglob("*.jpg"):
        thumb.unlink()
    (out / "thumbnails").rmdir()
    (out / "thumbnails").symlink_to(elsewhere)
    assert write_thumbnails(out, [record]) == {}
    assert not list(elsewhere.iterdir())


def test_report_does_not_import_torch() -> None:
    code = "import sys, gradcam_cli.reports.gallery; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_report_of_a_real_run(config_file, image_folder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gradcam_cli.cli import app

    (image_folder / "bad #1.png").write_bytes(b"not a picture")
    config = config_file(cam={"targets": "topk", "top_k": 2})
    result = CliRunner().invoke(app, ["run", "-c", str(config), "-i", str(image_folder), "--quiet"])
    assert result.exit_code == 1, result.output  # one image failed
    out = tmp_path / "out"
    data = _page_data(write_report(out))
    assert [i["path"] for i in data["images"]] == ["a.jpg", "a.png", "bad #1.png", "sub/b.png"]
    assert data["images"][2]["error"]["type"] == "NotAnImage"
    assert all(len(i["cams"]) == 2 and i["thumbnail"] for i in data["images"] if i["status"] == "ok")
    assert Image.open(out / "thumbnails/sub/b.png.jpg").size == (30, 70)


# ------------------------------------------------------------------------------------------- browser

VISIBLE_IMAGES = """
const visible = [...document.querySelectorAll(arguments[0])].filter((img) => {
  const box = img.getBoundingClientRect();
  return box.width > 0 && box.bottom > 0 && box.top < innerHeight && getComputedStyle(img).visibility !== "hidden";
}).map((img) => ({src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth}));
"""


@pytest.fixture(scope="module")
def page():
    with chromium_page() as opened:
        yield opened


def _loaded(page, selector: str = ".grid img") -> list[dict[str, Any]]:
    """The visible images once all have finished loading; fails naming any that did not decode."""
    # wait for at least one: right after a click the dialog may not have laid out its pictures yet
    page.wait_for(VISIBLE_IMAGES + "return visible.length > 0 && visible.every((i) => i.complete);", 10, selector)
    images = page.run_js(VISIBLE_IMAGES + "return visible;", selector)
    assert images, f"no visible images for {selector}"
    assert [i["src"] for i in images if i["width"] == 0] == []
    return images


def _cards(page) -> list[str]:
    return page.run_js("return [...document.querySelectorAll('#grid .card .path')].map((p) => p.textContent)")


def test_gallery_renders_in_chromium(page, run_dir: Path) -> None:
    page.open(write_report(run_dir))
    assert len(_loaded(page)) == 5  # every ok image, the '#', '?', '%', unicode one included
    assert _cards(page) == [r["path"] for r in json.loads((run_dir / "manifest.json").read_text())["images"]]
    assert page.run_js("return window.__pwned === undefined && !document.querySelector('img[src=\"x\"]')")
    assert page.run_js("return document.querySelector('.card .label').textContent") == "failed"
    rows = page.run_js("return [...document.querySelectorAll('#failures-body tr')].map((r) => r.innerText)")
    assert rows == ["broken.jpg\tNotAnImage\t" + HOSTILE_MESSAGE, "empty.jpg\tEmptyFile\tthe file is empty (0 bytes)"]
    page.screenshot(artifact("report-gallery.png"), full_page=True)
    assert page.console_errors() == []


def test_filters_and_sorting(page, run_dir: Path) -> None:
    page.open(write_report(run_dir))
    page.select("#class-filter", "dog")
    assert _cards(page) == ["noov.jpg", WEIRD]
    page.select("#class-filter", "")
    page.click("#failed-only")
    assert _cards(page) == ["broken.jpg", "empty.jpg"]
    page.click("#failed-only")
    page.select("#sort", "score-desc")
    assert _cards(page) == ["plain.jpg", "topk.jpg", HOSTILE_PATH, "noov.jpg", WEIRD, "broken.jpg", "empty.jpg"]
    page.select("#sort", "score-asc")
    assert _cards(page)[:5] == [WEIRD, "noov.jpg", HOSTILE_PATH, "topk.jpg", "plain.jpg"]
    page.select("#sort", "path-desc")
    assert _cards(page)[0] == "topk.jpg"
    assert page.console_errors() == []


def test_detail_view(page, run_dir: Path) -> None:
    page.open(write_report(run_dir))
    page.click('.card[title="topk.jpg"]')
    assert page.run_js("return document.getElementById('detail').open")
    assert page.run_js("return document.getElementById('detail-title').textContent") == "topk.jpg"
    assert page.run_js("return document.querySelectorAll('#detail .cam').length") == 3
    shown = _loaded(page, "#detail .cam img")
    assert {i["src"] for i in shown} >= {"overlays/topk.jpg.cls0.png", "heatmaps/topk.jpg.cls0.png"}
    assert page.run_js("return document.querySelectorAll('#detail .preds tbody tr').length") == 3
    page.screenshot(artifact("report-detail.png"))
    page.click("#detail-prev")
    assert page.run_js("return document.getElementById('detail-title').textContent") == WEIRD
    _loaded(page, "#detail .cam img")
    page.press("ESCAPE")
    page.wait_for("return !document.getElementById('detail').open")
    page.click("#failures-body button")  # a failure opens its detail, with the error
    assert page.run_js("return document.querySelector('#detail .error-box').textContent") == (
        "NotAnImage: " + HOSTILE_MESSAGE
    )
    page.click("#detail-close")
    assert page.console_errors() == []


def test_paging_a_large_run(page, tmp_path: Path) -> None:
    out = tmp_path / "big"
    records = [_ok(out, f"d{i // 100}/img {i:04d}.jpg", [i / 450], ["cat"], size=(48, 32)) for i in range(450)]
    page.open(write_report(_manifest(out, records)))
    assert len(_cards(page)) == 200
    assert page.run_js("return document.querySelector('#pager-top span').textContent") == "Page 1 of 3"
    _loaded(page)
    page.click('#pager-bottom [data-page="last"]')
    assert _cards(page)[0] == "d4/img 0400.jpg" and len(_cards(page)) == 50
    _loaded(page)
    page.click("#search")
    page.press("img 0449")
    assert _cards(page) == ["d4/img 0449.jpg"]
    page.screenshot(artifact("report-paging.png"))
    assert page.console_errors() == []


def test_empty_run_page(page, tmp_path: Path) -> None:
    page.open(write_report(_manifest(tmp_path / "out", [])))
    assert page.run_js("return document.getElementById('empty').textContent") == "This run has no images."
    assert page.run_js("return document.getElementById('failures').hidden")
    assert page.console_errors() == []


# ---------------------------------------------------------------------------------------------- metrics


@pytest.fixture
def metric_run(tmp_path: Path) -> Path:
    """A run with cam.metrics: deletion (lower is better) and insertion per cam; one cam without a value."""
    out = tmp_path / "metrics"
    values = {"a.jpg": (0.30, 0.70), "b.jpg": (0.10, 0.90), "c.jpg": (0.50, None), "d.jpg": (0.20, 0.40)}
    records = []
    for path, (deletion, insertion) in values.items():
        record = _ok(out, path, [0.8, 0.2], ["cat", "dog"])
        record["cams"][0]["metrics"] = {"deletion": deletion, "insertion": insertion}
        records.append(record)
    records.append(_failed("broken.jpg", "NotAnImage", "not an image"))
    block = {"names": ["deletion", "insertion"], "higher_is_better": {"deletion": False, "insertion": True}}
    summary = {"total": 5, "ok": 4, "failed": 1, "metrics": {"deletion": {"mean": 0.275, "median": 0.25}}}
    return _manifest(out, records, metrics=block, summary=summary)


def test_report_data_carries_the_metrics(metric_run: Path) -> None:
    page = write_report(metric_run)
    data = _page_data(page)
    assert data["metrics"] == [
        {"name": "deletion", "higher_is_better": False},
        {"name": "insertion", "higher_is_better": True},
    ]
    by_path = {image["path"]: image for image in data["images"]}
    assert by_path["b.jpg"]["metrics"] == {"deletion": 0.1, "insertion": 0.9}
    assert by_path["c.jpg"]["cams"][0]["metrics"] == {"deletion": 0.5, "insertion": None}
    assert by_path["broken.jpg"]["metrics"] == {}
    text = page.read_text(encoding="utf-8")
    assert text.count('class="histogram"') == 2 and "mean 0.275 · median 0.250" in text
    assert "(lower is better)" in text and "(higher is better)" in text


def test_a_run_without_metrics_has_no_metric_columns(run_dir: Path) -> None:
    page = write_report(run_dir)
    data = _page_data(page)
    assert data["metrics"] == [] and all(cam["metrics"] is None for i in data["images"] for cam in i["cams"])
    assert 'class="histogram"' not in page.read_text(encoding="utf-8")


def test_histogram_counts_every_value() -> None:
    from gradcam_cli.reports.gallery import histogram_svg

    svg = histogram_svg([0.0, 0.1, 0.1, 1.0], bins=4)
    counts = [int(n) for n in re.findall(r"<title>(\d+) in", svg)]
    assert counts == [3, 0, 0, 1] and histogram_svg([]) == ""
    assert "<title>2 in" in histogram_svg([0.5, 0.5], bins=2)  # all equal: one bar, no division by zero


def test_sorting_by_a_metric_in_chromium(page, metric_run: Path) -> None:
    page.open(write_report(metric_run))
    options = page.run_js("return [...document.querySelectorAll('#sort option')].map((o) => o.value)")
    assert "metric:best:deletion" in options and "metric:worst:insertion" in options
    page.select("#sort", "metric:best:deletion")  # lower is better: smallest first, failures last
    assert _cards(page) == ["b.jpg", "d.jpg", "a.jpg", "c.jpg", "broken.jpg"]
    shown = page.run_js("return [...document.querySelectorAll('#grid .card .mval')].map((m) => m.textContent)")
    assert shown == ["deletion 0.100", "deletion 0.200", "deletion 0.300", "deletion 0.500"]
    page.select("#sort", "metric:best:insertion")  # higher is better; c.jpg has no value: last of the ok
    assert _cards(page) == ["b.jpg", "a.jpg", "d.jpg", "c.jpg", "broken.jpg"]
    page.select("#sort", "metric:worst:insertion")
    assert _cards(page)[:3] == ["d.jpg", "a.jpg", "b.jpg"]
    page.click('.card[title="c.jpg"]')
    assert page.run_js("return document.querySelector('#detail .cam .mvals').textContent") == (
        "deletion 0.500 · insertion –"
    )
    page.screenshot(artifact("report-metrics.png"))
    page.click("#detail-close")
    assert page.console_errors() == []
