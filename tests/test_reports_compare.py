"""`gradcam compare`: drift measures, verdicts, exit codes and the four reports."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.config import CompareConfig
from gradcam_cli.errors import ConfigError
from gradcam_cli.reports.compare import compare_runs, heatmap_drift
from tests.conftest import write_yaml

runner = CliRunner()


def blob(center: tuple[int, int], size: tuple[int, int] = (48, 64), sigma: float = 6.0) -> np.ndarray:
    """A uint8 Gaussian heatmap (H, W) peaking at center = (x, y)."""
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width]
    values = np.exp(-((xs - center[0]) ** 2 + (ys - center[1]) ** 2) / (2 * sigma**2))
    return np.round(255 * values / values.max()).astype(np.uint8)


def record(path: str, label: str, score: float = 0.9, status: str = "ok") -> dict[str, Any]:
    classes = {"cat": 0, "dog": 1}
    cams = [
        {
            "rank": 0,
            "class_index": classes[label],
            "label": label,
            "score": score,
            "heatmap": f"heatmaps/{path}.png",
            "overlay": None,
        }
    ]
    return {
        "path": path,
        "source": f"/nowhere/{path}",
        "archive": None,
        "status": status,
        "predictions": [{"class_index": classes[label], "label": label, "score": score}] if status == "ok" else [],
        "cams": cams if status == "ok" else [],
        "error": None if status == "ok" else {"type": "decode", "message": "truncated file"},
    }


def fake_run(folder: Path, images: dict[str, tuple[str, np.ndarray | None]], schema: int = 1) -> Path:
    """An output folder as `gradcam run` leaves it: manifest.json and heatmaps/ (no overlays)."""
    records = []
    for path, (label, heatmap) in images.items():
        records.append(record(path, label) if heatmap is not None else record(path, label, status="error"))
        if heatmap is not None:
            target = folder / "heatmaps" / f"{path}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(heatmap).save(target)
    manifest = {"schema_version": schema, "method": "gradcam", "config_hash": "x" * 64, "images": records}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_identical_heatmaps_do_not_drift() -> None:
    drift = heatmap_drift(blob((20, 20)), blob((20, 20)))
    assert drift.correlation == pytest.approx(1.0)
    assert drift.mean_abs_diff == 0.0 and drift.iou == 1.0 and drift.peak_shift == 0.0


def test_moved_blob_measures_the_shift() -> None:
    drift = heatmap_drift(blob((20, 20)), blob((50, 24)))
    assert drift.peak_shift == pytest.approx(np.hypot(30, 4))
    assert drift.correlation < 0.2 and drift.iou < 0.1
    assert 0.05 < drift.mean_abs_diff < 0.5


def test_gain_change_keeps_correlation_but_not_mean_difference() -> None:
    base = blob((30, 20))
    dimmer = (base.astype(np.float32) * 0.5).round().astype(np.uint8)
    drift = heatmap_drift(base, dimmer)
    assert drift.correlation > 0.999
    assert drift.mean_abs_diff > 0.01


def test_flat_and_empty_maps() -> None:
    zeros = np.zeros((10, 10), np.uint8)
    assert heatmap_drift(zeros, zeros).correlation == 1.0
    assert heatmap_drift(zeros, zeros).iou == 1.0 and heatmap_drift(zeros, zeros).peak_shift is None
    assert heatmap_drift(zeros, blob((5, 5), (10, 10))).correlation == 0.0
    with pytest.raises(ValueError, match="sizes differ"):
        heatmap_drift(zeros, np.zeros((10, 11), np.uint8))


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    baseline = fake_run(
        tmp_path / "baseline",
        {
            "same.jpg": ("cat", blob((20, 20))),
            "moved.jpg": ("cat", blob((20, 20))),
            "relabelled.jpg": ("cat", blob((30, 30))),
            "broken.jpg": ("dog", blob((10, 10))),
            "sub/nearly.jpg": ("dog", blob((40, 10))),
        },
    )
    current = fake_run(
        tmp_path / "current",
        {
            "same.jpg": ("cat", blob((20, 20))),
            "moved.jpg": ("cat", blob((50, 30))),
            "relabelled.jpg": ("dog", blob((30, 30))),
            "broken.jpg": ("dog", None),
            "sub/nearly.jpg": ("dog", blob((41, 10))),
        },
    )
    return baseline, current


def test_verdicts_worst_first(two_runs: tuple[Path, Path]) -> None:
    comparison = compare_runs(*two_runs, CompareConfig())
    statuses = {image.path: image.status for image in comparison.images}
    assert statuses == {
        "same.jpg": "pass",
        "moved.jpg": "drift",
        "relabelled.jpg": "drift",
        "broken.jpg": "failed",
        "sub/nearly.jpg": "pass",
    }
    assert [image.path for image in comparison.images[:3]] == ["broken.jpg", "moved.jpg", "relabelled.jpg"]
    relabelled = next(image for image in comparison.images if image.path == "relabelled.jpg")
    assert relabelled.reasons == ["top-1 class changed: cat -> dog"]  # the heatmaps themselves agree
    assert comparison.exit_code == 1


def test_thresholds_and_allowances(two_runs: tuple[Path, Path]) -> None:
    lenient = CompareConfig(allow_label_change=True, min_correlation=-1, max_mean_abs_diff=1, min_iou=0)
    statuses = {image.path: image.status for image in compare_runs(*two_runs, lenient).images}
    assert statuses["moved.jpg"] == statuses["relabelled.jpg"] == "pass"
    assert statuses["broken.jpg"] == "failed"  # an image the current run could not explain always fails
    strict = CompareConfig(max_peak_shift=0.5)
    nearly = next(i for i in compare_runs(*two_runs, strict).images if i.path == "sub/nearly.jpg")
    assert nearly.status == "drift" and "peak moved 1.0 px" in nearly.reasons[0]


def test_different_image_sets_need_allow_missing(tmp_path: Path) -> None:
    baseline = fake_run(tmp_path / "a", {"one.jpg": ("cat", blob((5, 5))), "two.jpg": ("cat", blob((5, 5)))})
    current = fake_run(tmp_path / "b", {"one.jpg": ("cat", blob((5, 5))), "three.jpg": ("cat", blob((5, 5)))})
    with pytest.raises(ConfigError, match="different image sets.*missing in current: two.jpg"):
        compare_runs(baseline, current, CompareConfig())
    comparison = compare_runs(baseline, current, CompareConfig(allow_missing=True))
    assert {i.path: i.status for i in comparison.images} == {
        "one.jpg": "pass",
        "two.jpg": "missing-in-current",
        "three.jpg": "missing-in-baseline",
    }
    assert comparison.exit_code == 0  # reported, not drift


def test_unusable_inputs_exit_2(tmp_path: Path) -> None:
    good = fake_run(tmp_path / "good", {"one.jpg": ("cat", blob((5, 5)))})
    old = fake_run(tmp_path / "old", {"one.jpg": ("cat", blob((5, 5)))}, schema=0)
    result = runner.invoke(app, ["compare", str(tmp_path / "nothing"), str(good)])
    assert result.exit_code == 2 and "baseline" in result.output and "not a folder" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["compare", str(good), str(tmp_path / "empty")])
    assert result.exit_code == 2 and "current" in result.output and "no manifest.json" in result.output
    result = runner.invoke(app, ["compare", str(good), str(old)])
    assert result.exit_code == 2 and "schema_version 0" in result.output
    (good / "heatmaps" / "one.jpg.png").unlink()
    result = runner.invoke(app, ["compare", str(good), str(good)])
    assert result.exit_code == 2 and "heatmap heatmaps/one.jpg.png" in result.output
    assert "Traceback" not in result.output


def test_cli_thresholds_from_config_and_options(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    baseline, current = (str(p) for p in two_runs)
    config = write_yaml(tmp_path / "thresholds.yaml", {"compare": {"allow_label_change": True}})
    result = runner.invoke(app, ["compare", baseline, current, "-c", str(config)])
    assert result.exit_code == 1, result.output
    assert "relabelled.jpg" not in result.output.split("DRIFT")[0].split("thresholds")[1]
    result = runner.invoke(app, ["compare", baseline, current, "--min-correlation", "1.5"])
    assert result.exit_code == 2 and "min_correlation" in result.output
    bad = write_yaml(tmp_path / "bad.yaml", {"compare": {"min_corelation": 0.9}})
    result = runner.invoke(app, ["compare", baseline, current, "-c", str(bad)])
    assert result.exit_code == 2 and "did you mean 'min_correlation'" in result.output


def test_reports(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    baseline, current = (str(p) for p in two_runs)
    reports = tmp_path / "reports"
    args = ["--junit", str(reports / "junit.xml"), "--markdown", str(reports / "summary.md")]
    result = runner.invoke(app, ["compare", baseline, current, *args, "--html", str(reports / "compare.html")])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[-1] == "DRIFT: 5 images compared (1 failed, 2 drift, 2 pass)."
    table = [line.split()[0] for line in lines if line.split()[:1] in (["failed"], ["drift"])]
    assert table == ["failed", "drift", "drift"]

    suite = ET.parse(reports / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "5" and suite.get("failures") == "3"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == {"same.jpg", "moved.jpg", "relabelled.jpg", "broken.jpg", "sub/nearly.jpg"}
    assert cases["moved.jpg"].find("failure") is not None and cases["same.jpg"].find("failure") is None

    summary = (reports / "summary.md").read_text()
    assert summary.startswith("### Grad-CAM attention check: drift in 3 of 5 images")
    assert "| failed | <code>broken.jpg</code> |" in summary

    page = (reports / "compare.html").read_text()
    assert page.count('class="card"') == 3  # one card per failing image
    assert "data:image/jpeg;base64," in page and "http" not in page.replace("http-equiv", "")
    assert "truncated file" in page


def test_html_escapes_paths(tmp_path: Path) -> None:
    name = "<script>alert(1)</script>.jpg"
    baseline = fake_run(tmp_path / "a", {name: ("cat", blob((5, 5)))})
    current = fake_run(tmp_path / "b", {name: ("cat", blob((40, 40)))})
    from gradcam_cli.reports.compare_formats import html_page

    page = html_page(compare_runs(baseline, current, CompareConfig()))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_html_report_renders_in_chromium(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.browser import artifact, chromium_page

    page_path = tmp_path / "compare.html"
    result = runner.invoke(app, ["compare", *(str(p) for p in two_runs), "--html", str(page_path), "-q"])
    assert result.exit_code == 1, result.output
    with chromium_page(width=1200, height=900) as page:
        page.open(page_path)
        images = page.run_js("return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
        assert len(images) == 7  # 3 for each drifting image, the baseline only for the failed one
        assert all(complete and width > 0 for complete, width, _ in images), images
        assert page.run_js("return document.querySelectorAll('section.card').length") == 3
        assert page.run_js("return document.querySelectorAll('tbody tr').length") == 5
        assert page.console_errors() == []
        page.screenshot(artifact("compare.png"), full_page=True)


def test_untrusted_names_stay_text_in_every_report(tmp_path: Path) -> None:
    name = "a`![x](https://evil.example/p.png)`|\x01.jpg"
    baseline = fake_run(tmp_path / "a", {name: ("cat", blob((5, 5)))})
    current = fake_run(tmp_path / "b", {name: ("cat", blob((40, 40)))})
    from gradcam_cli.reports.compare_formats import markdown, write_junit

    comparison = compare_runs(baseline, current, CompareConfig())
    summary = markdown(comparison)
    assert "![x](" not in summary and "\\!\\[x\\]" in summary and "`" not in summary.replace("\\`", "")
    write_junit(comparison, tmp_path / "junit.xml")
    case = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite/testcase")  # parses: no control characters
    assert case is not None and case.get("name", "").endswith("\\x01.jpg")


def test_manifest_paths_outside_the_folder_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    Image.fromarray(blob((5, 5))).save(secret)
    baseline = fake_run(tmp_path / "a", {"one.jpg": ("cat", blob((5, 5)))})
    current = fake_run(tmp_path / "b", {"one.jpg": ("cat", blob((5, 5)))})
    manifest = json.loads((current / "manifest.json").read_text())
    manifest["images"][0]["cams"][0]["heatmap"] = "../secret.png"
    (current / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="outside its output folder"):
        compare_runs(baseline, current, CompareConfig())


def test_nothing_compared_is_not_a_pass(tmp_path: Path) -> None:
    baseline = fake_run(tmp_path / "a", {"one.jpg": ("cat", None)})
    current = fake_run(tmp_path / "b", {"one.jpg": ("cat", None)})
    result = runner.invoke(app, ["compare", str(baseline), str(current)])
    assert result.exit_code == 2 and "nothing to compare" in result.output
    empty_a, empty_b = fake_run(tmp_path / "c", {}), fake_run(tmp_path / "d", {})
    assert runner.invoke(app, ["compare", str(empty_a), str(empty_b)]).exit_code == 2


def test_more_verdicts(tmp_path: Path) -> None:
    baseline = fake_run(
        tmp_path / "a",
        {
            "both-failed.jpg": ("cat", None),
            "fixed.jpg": ("cat", None),
            "resized.jpg": ("cat", blob((5, 5))),
            "surer.jpg": ("cat", blob((5, 5))),
        },
    )
    current = fake_run(
        tmp_path / "b",
        {
            "both-failed.jpg": ("cat", None),
            "fixed.jpg": ("cat", blob((5, 5))),
            "resized.jpg": ("cat", blob((5, 5), size=(50, 64))),
            "surer.jpg": ("cat", blob((5, 5))),
        },
    )
    manifest = json.loads((current / "manifest.json").read_text())
    surer = next(r for r in manifest["images"] if r["path"] == "surer.jpg")
    surer["predictions"][0]["score"] = 0.99
    (current / "manifest.json").write_text(json.dumps(manifest))
    comparison = compare_runs(baseline, current, CompareConfig(max_score_change=0.05))
    verdicts = {image.path: (image.status, image.reasons) for image in comparison.images}
    assert verdicts["both-failed.jpg"][0] == "failed-both"
    assert verdicts["fixed.jpg"] == ("pass", ["baseline had failed; now explained"])
    assert verdicts["resized.jpg"] == ("drift", ["heatmap size changed: 64x48 -> 64x50"])
    assert verdicts["surer.jpg"][0] == "drift" and "score changed by +0.090" in verdicts["surer.jpg"][1][0]
    assert compare_runs(baseline, current, CompareConfig()).count("drift") == 1  # score change off by default


def test_cli_options_override_the_config_section(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    baseline, current = (str(p) for p in two_runs)
    config = write_yaml(tmp_path / "limits.yaml", {"compare": {"max_peak_shift": 0.5, "allow_label_change": True}})
    result = runner.invoke(app, ["compare", baseline, current, "-c", str(config), "--max-peak-shift", "5", "-q"])
    assert result.output.strip() == "DRIFT: 5 images compared (1 failed, 1 drift, 3 pass)."  # nearly.jpg passes again
    lenient = ["--min-correlation", "-1", "--max-mean-abs-diff", "1", "--min-iou", "0", "--allow-label-change"]
    result = runner.invoke(app, ["compare", baseline, current, *lenient, "-q"])
    assert result.output.strip() == "DRIFT: 5 images compared (1 failed, 4 pass)."


def test_difference_map_colours() -> None:
    from gradcam_cli.reports.compare_formats import difference_map

    before = np.array([[0, 255, 100]], np.uint8)
    after = np.array([[255, 0, 100]], np.uint8)
    rgb = difference_map(before, after)
    assert rgb[0, 0].tolist() == [255, 0, 0]  # hotter now: red
    assert rgb[0, 1].tolist() == [0, 0, 255]  # colder now: blue
    assert rgb[0, 2].tolist() == [255, 255, 255]  # unchanged: white


def _edit_record(folder: Path, **fields: Any) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["images"][0].update(fields)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_html_reads_only_the_original_the_run_recorded(tmp_path: Path) -> None:
    from gradcam_cli.reports.compare_formats import _original

    baseline = fake_run(tmp_path / "a", {"one.jpg": ("cat", blob((5, 5)))})
    current = fake_run(tmp_path / "b", {"one.jpg": ("cat", blob((40, 40)))})
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    Image.fromarray(np.full((48, 64, 3), 200, dtype=np.uint8)).save(secret)
    data = secret.read_bytes()
    for folder in (baseline, current):  # a record naming a file outside both folders, with no sha256
        _edit_record(folder, source=str(secret), file_size=len(data))
    (image,) = compare_runs(baseline, current, CompareConfig()).failing
    assert _original(image) is None
    import hashlib

    _edit_record(current, sha256=hashlib.sha256(data).hexdigest())  # the very file the run read: shown
    (image,) = compare_runs(baseline, current, CompareConfig()).failing
    assert _original(image) is not None
    secret.write_bytes(data[:-1] + b"\0")  # changed since: not shown
    assert _original(image) is None


def test_a_heatmap_declaring_too_many_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    import struct
    import zlib

    baseline = fake_run(tmp_path / "a", {"one.jpg": ("cat", blob((5, 5)))})
    current = fake_run(tmp_path / "b", {"one.jpg": ("cat", blob((5, 5)))})

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)  # 30000x30000 grey: 900 MB decoded
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(30001)))
        + chunk(b"IEND", b"")
    )
    (current / "heatmaps" / "one.jpg.png").write_bytes(bomb)
    with pytest.raises(ConfigError, match="30000x30000 pixels exceeds the limit"):
        compare_runs(baseline, current, CompareConfig())


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "error", "error": "boom", "cams": [], "predictions": []},
        {"path": ["one.jpg"]},
        {"predictions": [{"class_index": 0, "label": "cat", "score": "high"}]},
        {"cams": {"heatmap": "heatmaps/one.jpg.png"}},
        {"cams": []},  # an ok record with nothing to compare
    ],
)
def test_malformed_records_exit_2_naming_the_record(tmp_path: Path, fields: dict[str, Any]) -> None:
    baseline = fake_run(tmp_path / "a", {"one.jpg": ("cat", blob((5, 5)))})
    current = fake_run(tmp_path / "b", {"one.jpg": ("cat", blob((40, 40)))})
    _edit_record(current, **fields)
    result = runner.invoke(app, ["compare", str(baseline), str(current)])
    assert result.exit_code == 2, result.output
    assert "record 0" in result.stderr and "Traceback" not in result.output


def test_control_characters_are_escaped_in_every_report(tmp_path: Path) -> None:
    from gradcam_cli.reports.compare_formats import html_page, markdown, text_table, write_junit

    name = "a\x1b[2J\rb.jpg"
    baseline = fake_run(tmp_path / "a", {name: ("cat", blob((5, 5)))})
    current = fake_run(tmp_path / "b", {name: ("cat", blob((40, 40)))})
    comparison = compare_runs(baseline, current, CompareConfig())
    write_junit(comparison, tmp_path / "junit.xml")
    junit = (tmp_path / "junit.xml").read_text()
    for report in (text_table(comparison), markdown(comparison), html_page(comparison), junit):
        assert "\x1b" not in report and "\r" not in report and "&#13;" not in report
        assert "x1b" in report and "x0d" in report


def test_notes_name_the_parts_of_the_identity_that_differ(tmp_path: Path) -> None:
    from gradcam_cli.io.identity import identity_hash

    images = {"one.jpg": ("cat", blob((20, 20)))}
    baseline, current = fake_run(tmp_path / "baseline", images), fake_run(tmp_path / "current", images)
    parts = {"model.weights": {"sha256": "ab12" * 16}, "cam.method": "gradcam", "runtime.precision": "fp32"}

    def with_identity(folder: Path, identity: dict[str, Any], device: str = "cpu") -> None:
        data = json.loads((folder / "manifest.json").read_text())
        data.update(identity=identity, config_hash=identity_hash(identity), device=device)
        (folder / "manifest.json").write_text(json.dumps(data))

    with_identity(baseline, parts)
    with_identity(current, parts, device="cuda:0")
    same = compare_runs(baseline, current, CompareConfig()).notes
    assert same[0].startswith("the two runs have the same identity")
    assert same[1] == "device differs: cpu -> cuda:0 (not part of the identity)"

    with_identity(current, dict(parts, **{"model.weights": {"sha256": "cd34" * 16}, "runtime.precision": "bf16"}))
    notes = compare_runs(baseline, current, CompareConfig()).notes
    assert notes == [
        "the weights file's content changed between the runs (sha256 ab12ab12ab12... -> cd34cd34cd34...)",
        "runtime.precision changed: fp32 -> bf16",
    ]
    result = runner.invoke(app, ["compare", str(baseline), str(current)])
    assert "note: runtime.precision changed: fp32 -> bf16" in result.stdout


# ------------------------------------------------------------------------------------ compare.max_metric_drop
def metric_run(folder: Path, insertion: list[float], deletion: list[float], names: tuple[str, ...] = ()) -> Path:
    """Same heatmaps as every other side, with cam.metrics values per image (and the manifest's names)."""
    images = {f"{i}.jpg": ("cat", blob((20 + i, 24))) for i in range(len(insertion))}
    fake_run(folder, images)
    manifest = json.loads((folder / "manifest.json").read_text())
    for record_, ins, dele in zip(manifest["images"], insertion, deletion, strict=True):
        record_["cams"][0]["metrics"] = {"insertion": ins, "deletion": dele}
    manifest["metrics"] = {"names": list(names or ("deletion", "insertion"))}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_a_metric_mean_that_got_worse_fails_the_run(tmp_path: Path) -> None:
    """insertion (higher is better) falls by 0.2 on average, deletion (lower is better) falls too: only
    insertion is worse. Exit 1 with the heatmaps unchanged, in the table, JUnit and Markdown."""
    baseline = metric_run(tmp_path / "a", [0.8, 0.9, 0.7], [0.3, 0.2, 0.4])
    current = metric_run(tmp_path / "b", [0.6, 0.7, 0.5], [0.2, 0.1, 0.3])
    comparison = compare_runs(baseline, current, CompareConfig(max_metric_drop=0.05))
    checks = {check.name: check for check in comparison.metric_checks}
    assert checks["insertion"].drop == pytest.approx(0.2) and checks["insertion"].failing
    assert checks["deletion"].drop == pytest.approx(-0.1) and not checks["deletion"].failing
    assert checks["insertion"].images == 3 and not comparison.failing and comparison.exit_code == 1
    reports = tmp_path / "reports"
    args = ["--max-metric-drop", "0.05", "--junit", str(reports / "j.xml"), "--markdown", str(reports / "s.md")]
    result = runner.invoke(app, ["compare", str(baseline), str(current), *args, "--html", str(reports / "c.html")])
    assert result.exit_code == 1, result.output
    assert "metric DRIFT: insertion mean 0.800 -> 0.600 (worse by 0.200; limit 0.05; 3 images)" in result.output
    assert "metric ok: deletion mean 0.300 -> 0.200 (better by 0.100" in result.output
    assert result.output.splitlines()[-1].startswith("DRIFT: 3 images compared (3 pass); metric mean worse: insertion")
    suite = ET.parse(reports / "j.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "5" and suite.get("failures") == "1"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["insertion"].find("failure") is not None and cases["deletion"].find("failure") is None
    assert "a metric's mean got worse" in (reports / "s.md").read_text().splitlines()[0]
    assert "metric mean worse" in (reports / "c.html").read_text()
    # within the limit: passes, and says how much
    result = runner.invoke(app, ["compare", str(baseline), str(current), "--max-metric-drop", "0.25"])
    assert result.exit_code == 0 and "metric ok: insertion" in result.output
    # not asked for: no metric check at all
    assert compare_runs(baseline, current, CompareConfig()).metric_checks == []


def test_metric_gate_without_metrics_in_common_is_unusable(tmp_path: Path) -> None:
    baseline = metric_run(tmp_path / "a", [0.8], [0.3], names=("deletion",))
    plain = fake_run(tmp_path / "b", {"0.jpg": ("cat", blob((20, 24)))})
    with pytest.raises(ConfigError, match="no faithfulness metric in common"):
        compare_runs(baseline, plain, CompareConfig(max_metric_drop=0.1))
    current = metric_run(tmp_path / "c", [0.1], [0.9], names=("insertion",))
    with pytest.raises(ConfigError, match="baseline: deletion; current: insertion"):
        compare_runs(baseline, current, CompareConfig(max_metric_drop=0.1))
