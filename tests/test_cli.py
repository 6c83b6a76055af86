"""The command line: exit codes, messages, inputs, outputs and the manifest contract."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app
from tests.conftest import REPO, random_image

runner = CliRunner()


def gradcam(*args: str, stdin: str | None = None):
    return runner.invoke(app, list(args), input=stdin)


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_help_is_fast_and_does_not_import_torch() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from gradcam_cli.cli import app; "
        "r = CliRunner().invoke(app, ['run', '--help']); assert r.exit_code == 0, r.output; "
        "assert '--target-layer' in r.output and '--precision' in r.output; "
        "assert 'torch' not in sys.modules, 'torch imported on the help path'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_run_writes_heatmaps_overlays_and_manifest(config_file, image_folder: Path, tmp_path: Path) -> None:
    result = gradcam("run", "-c", str(config_file()), "-i", str(image_folder), "--quiet")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    manifest = _manifest(out)
    assert manifest["schema_version"] == 1
    assert manifest["tool"]["name"] == "gradcam-cli"
    assert manifest["summary"] == {"total": 3, "ok": 3, "failed": 0}  # the folder
    assert manifest["run"] == {
        "ok": 3,
        "failed": 0,
        "skipped": 0,
        "complete": True,
        "interrupted_by": None,
        "left": None,
    }
    assert manifest["target_layer"] == "features.3" and manifest["method"] == "gradcam"
    assert len(manifest["config_hash"]) == 64 and manifest["config"]["preprocess"]["size"] == [32, 32]
    for key in ("started_at", "finished_at", "model", "normalization"):
        assert key in manifest
    assert [r["path"] for r in manifest["images"]] == ["a.jpg", "a.png", "sub/b.png"]
    record = manifest["images"][2]
    assert record["status"] == "ok" and (record["width"], record["height"]) == (30, 70)
    assert record["source"] == str((image_folder / "sub" / "b.png").resolve())
    assert len(record["sha256"]) == 64 and record["error"] is None
    assert len(record["predictions"]) == 3  # min(5, number of classes)
    assert {p["label"] for p in record["predictions"]} == {"cat", "dog", "bird"}
    assert abs(sum(p["score"] for p in record["predictions"]) - 1) < 1e-4
    (cam,) = record["cams"]
    assert cam["class_index"] == record["predictions"][0]["class_index"]
    assert cam["heatmap"] == "heatmaps/sub/b.png.png" and cam["overlay"] == "overlays/sub/b.png.jpg"
    heatmap = Image.open(out / cam["heatmap"])
    overlay = Image.open(out / cam["overlay"])
    assert heatmap.mode == "L" and heatmap.size == (30, 70)
    assert overlay.mode == "RGB" and overlay.size == (30, 70)
    assert np.asarray(heatmap).max() == 255  # rounded, not truncated to 254
    # records.jsonl holds the same records, one per line
    lines = (out / "records.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == manifest["images"]
    # a.jpg and a.png do not collide
    assert (out / "heatmaps" / "a.jpg.png").exists() and (out / "heatmaps" / "a.png.png").exists()
    assert not list(out.rglob("*.tmp"))


def test_bad_images_become_error_records(config_file, image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "empty.jpg").write_bytes(b"")
    (image_folder / "text.png").write_bytes(b"hello, not a picture")
    good = random_image(tmp_path / "big.jpg", 150, 100, seed=4).read_bytes()
    (image_folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    random_image(image_folder / "huge.png", 200, 200, seed=5)
    config = config_file(input={"max_pixels": 30_000})
    result = gradcam("run", "-c", str(config), "-i", str(image_folder), "--quiet")
    assert result.exit_code == 1, result.output
    manifest = _manifest(tmp_path / "out")
    by_path = {r["path"]: r for r in manifest["images"]}
    assert manifest["summary"] == {"total": 7, "ok": 3, "failed": 4}
    assert by_path["empty.jpg"]["error"]["type"] == "EmptyFile"
    assert by_path["text.png"]["error"]["type"] == "NotAnImage"
    assert by_path["truncated.jpg"]["error"]["type"] in ("TruncatedImage", "DecodeError")
    assert by_path["huge.png"]["error"]["type"] == "DecompressionBomb"
    assert all(r["cams"] == [] for r in by_path.values() if r["status"] == "error")


def test_fail_fast_stops_after_the_first_failure(config_file, image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "0-empty.jpg").write_bytes(b"")
    config = config_file(runtime={"batch_size": 1})
    result = gradcam("run", "-c", str(config), "-i", str(image_folder), "--quiet", "--fail-fast")
    assert result.exit_code == 1
    assert _manifest(tmp_path / "out")["summary"]["total"] == 1


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"model": {"factory": "x.py:build", "colour": 1}}, "unknown key 'model.colour'"),
        ({"runtime": {"batch_size": -1}}, "runtime.batch_size"),
        ({"cam": {"method": "gradcm"}}, "did you mean 'gradcam'"),
        ({"model": {"factory": "missing.py:build"}}, "not found"),
        ({"cam": {"targets": ["cta"]}}, "Did you mean 'cat'"),
        ({"model": {"labels": ["a", "b"]}}, "2 names but the model returns 3"),
        ({"model": {"num_classes": 5}}, "num_classes is 5"),
        ({"model": {"target_layer": "head"}}, "feature map"),
    ],
)
def test_config_errors_exit_2_with_one_paragraph_and_write_nothing(
    config_file, image_folder: Path, tmp_path: Path, section: dict, expected: str
) -> None:
    result = gradcam("run", "-c", str(config_file(**section)), "-i", str(image_folder))
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    if expected != "feature map":  # an unusable layer is only found by running the first batch
        assert not (tmp_path / "out").exists()


def test_missing_config_and_input_exit_2(config_file, tmp_path: Path, image_folder: Path) -> None:
    result = gradcam("run", "-c", str(tmp_path / "none.yaml"), "-i", str(image_folder))
    assert result.exit_code == 2 and "config file not found" in result.stderr
    result = gradcam("run", "-c", str(config_file()), "-i", str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "input not found" in result.stderr
    assert not (tmp_path / "out").exists()
    result = gradcam("run", "-c", str(config_file()))
    assert result.exit_code == 2  # --input is required (usage error)


def test_unusable_model_output_shows_what_it_returned(config_file, image_folder: Path) -> None:
    factory = str(Path(__file__).parent / "assets" / "tiny_models.py") + ":build_tuple"
    result = gradcam("run", "-c", str(config_file(model={"factory": factory})), "-i", str(image_folder))
    assert result.exit_code == 2 and "tuple of 2" in result.stderr and "model.output" in result.stderr
    good = config_file(model={"factory": factory, "output": 1})
    assert gradcam("run", "-c", str(good), "-i", str(image_folder), "-q").exit_code == 0


def test_stdin_input(config_file, image_folder: Path, tmp_path: Path) -> None:
    paths = f"{image_folder / 'a.jpg'}\n{image_folder / 'sub' / 'b.png'}\n"
    result = gradcam("run", "-c", str(config_file()), "-i", "-", "-q", stdin=paths)
    assert result.exit_code == 0, result.output
    manifest = _manifest(tmp_path / "out")
    assert [r["source"] for r in manifest["images"]] == [str(image_folder / "a.jpg"), str(image_folder / "sub/b.png")]


def test_stdin_paths_relative_to_give_the_records_of_the_folder(
    config_file, image_folder: Path, tmp_path: Path
) -> None:
    listing = "".join(f"{path}\n" for path in sorted(image_folder.rglob("*"), key=lambda p: p.parts) if path.is_file())
    config = str(config_file())
    folder = gradcam("run", "-c", config, "-i", str(image_folder), "-o", str(tmp_path / "walked"), "-q")
    assert folder.exit_code == 0, folder.output
    piped = gradcam(
        "run",
        "-c",
        config,
        "-i",
        "-",
        "--relative-to",
        str(image_folder),
        "-o",
        str(tmp_path / "piped"),
        "-q",
        stdin=listing,
    )
    assert piped.exit_code == 0, piped.output
    walked, named = _manifest(tmp_path / "walked")["images"], _manifest(tmp_path / "piped")["images"]
    assert [r["path"] for r in named] == [r["path"] for r in walked] == ["a.jpg", "a.png", "sub/b.png"]
    assert [r["cams"][0]["heatmap"] for r in named] == [r["cams"][0]["heatmap"] for r in walked]
    dry = gradcam("run", "-c", config, "-i", "-", "--relative-to", str(image_folder), "--dry-run", stdin=listing)
    assert dry.exit_code == 0 and "process  sub/b.png" in dry.stdout
    alone = gradcam("run", "-c", config, "-i", str(image_folder), "--relative-to", str(image_folder))
    assert alone.exit_code == 2 and "--relative-to" in alone.stderr
    missing = gradcam("run", "-c", config, "-i", "-", "--relative-to", str(tmp_path / "nowhere"), stdin=listing)
    assert missing.exit_code == 2 and "not a folder" in missing.stderr
    assert not (tmp_path / "out").exists()


def test_single_file_input_and_overrides(config_file, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    result = gradcam(
        "run",
        "-c",
        str(config_file()),
        "-i",
        str(image_folder / "a.jpg"),
        "-o",
        str(out),
        "-q",
        "--method",
        "layercam",
        "--top-k",
        "2",
        "--batch-size",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--target-layer",
        "features.0,features.3",
    )
    assert result.exit_code == 0, result.output
    manifest = _manifest(out)
    assert manifest["method"] == "layercam" and manifest["target_layer"] == ["features.0", "features.3"]
    (record,) = manifest["images"]
    assert [c["rank"] for c in record["cams"]] == [0, 1]
    assert [c["class_index"] for c in record["cams"]] == [p["class_index"] for p in record["predictions"][:2]]
    for cam in record["cams"]:
        assert cam["heatmap"] == f"heatmaps/a.jpg.cls{cam['class_index']}.png"
        assert (out / cam["heatmap"]).exists() and (out / cam["overlay"]).exists()


def test_fixed_targets_by_label_and_index(config_file, image_folder: Path, tmp_path: Path) -> None:
    result = gradcam("run", "-c", str(config_file(cam={"targets": ["dog", 2]})), "-i", str(image_folder), "-q")
    assert result.exit_code == 0, result.output
    for record in _manifest(tmp_path / "out")["images"]:
        assert [(c["class_index"], c["label"]) for c in record["cams"]] == [(1, "dog"), (2, "bird")]


def test_limit(config_file, image_folder: Path, tmp_path: Path) -> None:
    result = gradcam("run", "-c", str(config_file()), "-i", str(image_folder), "-q", "--limit", "2")
    assert result.exit_code == 0
    assert _manifest(tmp_path / "out")["summary"]["total"] == 2


def test_exif_rotated_image_maps_onto_the_displayed_frame(config_file, tmp_path: Path) -> None:
    folder = tmp_path / "exif"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees: stored 60x20 shows as 20x60
    random_image(tmp_path / "plain.png", 60, 20, seed=9)
    Image.open(tmp_path / "plain.png").save(folder / "rotated.jpg", exif=exif.tobytes())
    assert gradcam("run", "-c", str(config_file()), "-i", str(folder), "-q").exit_code == 0
    record = _manifest(tmp_path / "out")["images"][0]
    assert (record["width"], record["height"]) == (20, 60)
    assert Image.open(tmp_path / "out" / record["cams"][0]["heatmap"]).size == (20, 60)


def test_workers_and_repeat_runs_give_identical_heatmaps(config_file, image_folder: Path, tmp_path: Path) -> None:
    outputs = []
    for workers in (0, 2, 0):
        out = tmp_path / f"out-{len(outputs)}"
        config = config_file(runtime={"workers": workers, "batch_size": 2})
        assert gradcam("run", "-c", str(config), "-i", str(image_folder), "-o", str(out), "-q").exit_code == 0
        outputs.append({p.relative_to(out): p.read_bytes() for p in sorted((out / "heatmaps").rglob("*.png"))})
    assert outputs[0] == outputs[1] == outputs[2] and len(outputs[0]) == 3


def test_raw_output(config_file, image_folder: Path, tmp_path: Path) -> None:
    result = gradcam("run", "-c", str(config_file(output={"raw": True})), "-i", str(image_folder), "-q")
    assert result.exit_code == 0, result.output
    record = _manifest(tmp_path / "out")["images"][2]
    cam = record["cams"][0]
    full = np.load(tmp_path / "out" / cam["raw"])
    feature = np.load(tmp_path / "out" / cam["raw_feature"])
    assert full.dtype == np.float32 and full.shape == (70, 30) and feature.shape == (8, 8)
    assert abs(float(feature.max()) - cam["raw_max"]) < 1e-5


def test_layers_command(config_file) -> None:
    result = gradcam("layers", "-c", str(config_file()))
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert " auto " in lines["features"] and "1x16x8x8" in lines["features"] and lines["features"].endswith("nchw")
    assert " yes " in lines["features.3"]
    assert " yes " not in lines["head"] and " auto " not in lines["head"]


def test_version() -> None:
    result = gradcam("--version")
    assert result.exit_code == 0 and "gradcam-cli" in result.stdout


def test_output_report_writes_the_gallery_after_the_run(config_file, image_folder: Path, tmp_path: Path) -> None:
    result = gradcam("run", "-c", str(config_file(output={"report": True})), "-i", str(image_folder), "-q")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "index.html").read_text()
    assert "sub/b.png" in page
    thumbnails = sorted((tmp_path / "out" / "thumbnails").rglob("*.jpg"))
    assert len(thumbnails) == 3
    # Made by the run from the overlay in memory (before its JPEG encoding): close to what the report makes
    # from the file, and current, so the report does not make it again.
    import numpy as np

    from gradcam_cli.reports.gallery import make_thumbnail

    overlay = tmp_path / "out" / "overlays" / "sub" / "b.png.jpg"
    made_by_run = Image.open(tmp_path / "out" / "thumbnails" / "sub" / "b.png.jpg")
    from_file = Image.open(io.BytesIO(make_thumbnail(overlay.read_bytes())))
    assert made_by_run.size == from_file.size
    assert np.abs(np.asarray(made_by_run, np.int16) - np.asarray(from_file, np.int16)).mean() < 3
    made = [t.stat().st_mtime_ns for t in thumbnails]
    result = gradcam("report", str(tmp_path / "out"))
    assert result.exit_code == 0 and "index.html" in result.output
    assert [t.stat().st_mtime_ns for t in thumbnails] == made
    result = gradcam("report", str(tmp_path / "nothing-here"))
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_an_unexpected_error_is_one_paragraph_exit_5_and_never_hangs(tmp_path: Path, tiny_weights: Path) -> None:
    """A model whose forward raises mid-run: not exit 1 ("some images failed"), no traceback, no hang with a
    decode worker alive; --debug and --log-file have the traceback."""
    from tests.conftest import ASSETS, random_image

    for i in range(8):
        random_image(tmp_path / "images" / f"{i}.png", 40, 30, seed=i)
    config = tmp_path / "raising.json"
    config.write_text(
        json.dumps(
            {
                "model": {"factory": str(ASSETS / "tiny_models.py") + ":build_raising", "weights": str(tiny_weights)},
                "preprocess": {"size": [32, 32]},
                "runtime": {"device": "cpu", "batch_size": 4, "workers": 1},
            }
        )
    )
    base = [sys.executable, "-m", "gradcam_cli.cli", "run", "-c", str(config), "-i", str(tmp_path / "images")]
    log = tmp_path / "events.jsonl"
    done = subprocess.run(
        [*base, "-o", str(tmp_path / "a"), "--log-file", str(log)], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 5, done.stderr
    assert "unexpected RuntimeError" in done.stderr and "boom" in done.stderr and "Traceback" not in done.stderr
    assert str(log) in done.stderr
    failed = [json.loads(line) for line in log.read_text().splitlines() if '"run_failed"' in line]
    assert failed and "Traceback" in failed[0]["traceback"]
    debug = subprocess.run([*base, "-o", str(tmp_path / "b"), "--debug"], capture_output=True, text=True, timeout=90)
    assert debug.returncode == 5 and "Traceback" in debug.stderr


def test_a_shared_activation_module_is_shown_and_explained_without_hanging(tmp_path: Path) -> None:
    """Reviewer repro: ablationcam on a ReLU module used three times (which auto used to pick) printed a
    traceback and hung with its decode worker alive."""
    from tests.conftest import ASSETS, random_image

    for i in range(4):
        random_image(tmp_path / "images" / f"{i}.png", 40, 30, seed=i)
    config = tmp_path / "shared.json"
    model = {"factory": str(ASSETS / "tiny_models.py") + ":build_shared_activation"}
    for target in ("auto", "act"):
        config.write_text(
            json.dumps(
                {
                    "model": {**model, "target_layer": target},
                    "preprocess": {"size": [32, 32]},
                    "runtime": {"device": "cpu", "batch_size": 2, "workers": 1},
                }
            )
        )
        command = [sys.executable, "-m", "gradcam_cli.cli", "run", "-c", str(config), "-i", str(tmp_path / "images")]
        done = subprocess.run(
            [*command, "-o", str(tmp_path / target), "--method", "ablationcam", "-q"],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0, done.stderr
    listing = runner.invoke(app, ["layers", "-c", str(config)])
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert "3" in rows["act"] and "auto" in rows["conv3"]
    assert "explained at its last call" in listing.stderr


def gradcam_process(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, so that a hang fails the test instead of stalling the suite."""
    return subprocess.run(
        [sys.executable, "-m", "gradcam_cli.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


@pytest.mark.parametrize("name", ["empty.zip", "random.tar"])
def test_an_unreadable_archive_exits_2_and_writes_nothing(config_file, tmp_path: Path, name: str) -> None:
    archive = tmp_path / name
    archive.write_bytes(b"" if name == "empty.zip" else np.random.default_rng(0).bytes(4096))
    result = gradcam_process("run", "-c", str(config_file()), "-i", str(archive), "--quiet")
    assert result.returncode == 2, result.stderr
    assert "cannot open the archive" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_truncated_tar_gz_keeps_the_records_of_its_complete_members(config_file, tmp_path: Path) -> None:
    import io
    import tarfile

    archive = tmp_path / "images.tar.gz"
    rng = np.random.default_rng(0)
    with tarfile.open(archive, "w:gz") as handle:
        for index in range(3):
            buffer = io.BytesIO()  # noise: incompressible, so the cut lands inside the archive's later members
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
            info = tarfile.TarInfo(f"m{index}.png")
            info.size = buffer.tell()
            handle.addfile(info, io.BytesIO(buffer.getvalue()))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    result = gradcam_process("run", "-c", str(config_file()), "-i", str(archive), "--quiet")
    assert result.returncode == 1, result.stderr
    by_path = {r["path"]: r for r in _manifest(tmp_path / "out")["images"]}
    assert by_path["images.tar.gz/m0.png"]["status"] == "ok"
    assert by_path["images.tar.gz"]["error"]["type"] == "ArchiveError"


def test_help_texts_name_the_choices() -> None:
    from gradcam_cli.config import METHOD_NAMES

    run_help = runner.invoke(app, ["run", "--help"]).output.replace("\n", " ")
    for method in METHOD_NAMES:
        assert method in run_help, f"--method help does not list {method}"
    assert "BASELINE" in runner.invoke(app, ["compare", "--help"]).output


def test_an_empty_output_option_is_refused(config_file, image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    """`-o ""` wrote the results into the working directory."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "-c", str(config_file()), "-i", str(image_folder), "-o", "", "-q"])
    assert result.exit_code == 2 and "output.dir" in result.stderr
    assert not (tmp_path / "heatmaps").exists() and not (tmp_path / "manifest.json").exists()
