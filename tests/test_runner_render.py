"""runner/render.py and runner/records.py: engine results become files and records, without the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gradcam_cli.config import parse_config
from gradcam_cli.io.discovery import ImageSource
from gradcam_cli.runner.loader import DecodeDataset, collate, normalise
from gradcam_cli.runner.prepare import prepare
from gradcam_cli.runner.records import error_record, label_of
from gradcam_cli.runner.render import RenderJob, render_batch, render_image
from tests.conftest import REPO, gradcam_command, random_image, wait_for_records, write_slow_config


def test_a_batch_becomes_records_in_input_order_and_one_job_per_ok_image(
    tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    config = parse_config(tiny_config, tmp_path)
    prepared = prepare(config)
    good = random_image(tmp_path / "in" / "a.jpg", 50, 30, seed=4)
    (tmp_path / "in" / "b.jpg").write_bytes(b"not a jpeg")
    dataset = DecodeDataset(config.preprocess, config.input)
    items = [dataset[ImageSource(source=str(path), path=path.name)] for path in (good, tmp_path / "in" / "b.jpg")]
    batch = collate(items)
    with prepared.engine:
        result = prepared.engine.explain(normalise(batch.pixels, config.preprocess, prepared.device), prepared.targets)
    jobs: list[RenderJob] = []
    records = render_batch(prepared, tmp_path / "out", batch, result, jobs.append)
    assert [r["path"] for r in records] == ["a.jpg", "b.jpg"]
    assert [r["status"] for r in records] == ["ok", "error"]
    ok = records[0]
    assert (ok["width"], ok["height"]) == (50, 30) and ok["cams"][0]["heatmap"] == "heatmaps/a.jpg.png"
    assert ok["predictions"][0]["label"] in ("cat", "dog", "bird") and len(ok["predictions"]) == 3
    assert ok["cams"][0]["overlay"] == "overlays/a.jpg.jpg"  # JPEG overlays by default
    (job,) = jobs
    assert job.cams.shape == (1, 32, 32) and job.cams.dtype == np.float32  # model size crosses, not the original
    assert render_image(job) is None
    with Image.open(tmp_path / "out" / "heatmaps" / "a.jpg.png") as heatmap:
        assert heatmap.size == (50, 30) and heatmap.mode == "L"
    with Image.open(tmp_path / "out" / "overlays" / "a.jpg.jpg") as overlay:
        assert overlay.size == (50, 30) and overlay.format == "JPEG"


def test_error_records_keep_the_schema() -> None:
    record = error_record(ImageSource(source="/x/a.jpg", path="a.jpg", file_size=3), None, "DecodeError", "bad")
    assert record["status"] == "error" and record["cams"] == [] and record["error"]["type"] == "DecodeError"
    assert record["file_size"] == 3 and record["width"] is None
    assert label_of(["cat"], 0) == "cat" and label_of(["cat"], 4) == "4" and label_of(None, 2) == "2"


def test_a_render_that_fails_for_one_image_becomes_its_error_record(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path, monkeypatch
) -> None:
    """Out of memory while rendering one original: that image is an error record, the others are written."""
    from gradcam_cli.runner import render
    from gradcam_cli.runner.options import RunOptions
    from gradcam_cli.runner.run import run

    real = render._original

    def out_of_memory_for_b(job: RenderJob) -> np.ndarray:
        if job.source.path.endswith("b.png"):
            raise MemoryError
        return real(job)

    monkeypatch.setattr(render, "_original", out_of_memory_for_b)
    config = parse_config({**tiny_config, "runtime": {**tiny_config["runtime"], "render_workers": 0}}, tmp_path)
    summary = run(config, RunOptions(inputs=[str(image_folder)], quiet=True))
    assert (summary.ok, summary.failed, summary.exit_code) == (2, 1, 1)
    records = {r["path"]: r for r in json.loads(summary.manifest.read_text())["images"]}
    assert records["sub/b.png"]["error"]["type"] == "MemoryError" and records["sub/b.png"]["cams"] == []
    assert records["a.jpg"]["status"] == "ok"


def test_an_original_that_changed_since_decoding_is_not_overlaid(tmp_path: Path, tiny_config: dict[str, Any]) -> None:
    config = parse_config(tiny_config, tmp_path)
    prepared = prepare(config)
    good = random_image(tmp_path / "in" / "a.jpg", 50, 30, seed=4)
    dataset = DecodeDataset(config.preprocess, config.input)
    batch = collate([dataset[ImageSource(source=str(good), path="a.jpg")]])
    with prepared.engine:
        result = prepared.engine.explain(normalise(batch.pixels, config.preprocess, prepared.device), prepared.targets)
    jobs: list[RenderJob] = []
    render_batch(prepared, tmp_path / "out", batch, result, jobs.append)
    random_image(good, 50, 30, seed=5)  # replaced between decode and render
    assert render_image(jobs[0])[0] == "SourceChanged"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _slow_run(tmp_path: Path, tiny_weights: Path, count: int, size: tuple[int, int], **runtime: Any) -> list[str]:
    folder = tmp_path / "many"
    for i in range(count):
        random_image(folder / f"{i:02d}.png", *size, seed=i)
    config = write_slow_config(tmp_path / "slow.yaml", tiny_weights, batch_size=2, **runtime)
    return gradcam_command(config, folder, tmp_path / "out")


def _all_files_complete(out: Path) -> None:
    for path in [*out.rglob("*.png"), *out.rglob("*.jpg")]:
        Image.open(path).load()  # nothing partial under a final name
    for line in (out / "records.jsonl").read_text().splitlines():
        json.loads(line)


def test_a_killed_render_worker_stops_the_run_cleanly(tmp_path: Path, tiny_weights: Path) -> None:
    command = _slow_run(tmp_path, tiny_weights, 12, (40, 30), workers=0, render_workers=1)
    out = tmp_path / "out"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_records(out, process)
    workers = _children(process.pid)
    assert workers, "no render worker process found"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 5, stderr.decode()[-2000:]
    assert "render worker" in stderr.decode() and "Traceback" not in stderr.decode()
    assert not _children(process.pid)
    _all_files_complete(out)
    finished = subprocess.run(command, cwd=REPO, capture_output=True, timeout=300)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    images = json.loads((out / "manifest.json").read_text())["images"]
    assert [r["path"] for r in images] == [f"{i:02d}.png" for i in range(12)] and all(
        r["status"] == "ok" for r in images
    )


def test_ctrl_c_while_render_workers_are_busy_finishes_the_batch(tmp_path: Path, tiny_weights: Path) -> None:
    """Ctrl-C reaches the whole process group (a terminal): the batch in flight is written, exit 130."""
    command = _slow_run(tmp_path, tiny_weights, 12, (1600, 1200), workers=1, render_workers=2)
    out = tmp_path / "out"
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    wait_for_records(out, process)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()[-2000:]
    partial = json.loads((out / "manifest.json").read_text())
    assert 0 < partial["summary"]["total"] < 12
    _all_files_complete(out)
    finished = subprocess.run(command, cwd=REPO, capture_output=True, timeout=300)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_every_overlay_format_works_with_report_compare_and_merge(
    config_file, image_folder: Path, tmp_path: Path, fmt: str
) -> None:
    from typer.testing import CliRunner

    from gradcam_cli.cli import app

    runner = CliRunner()
    config = str(config_file(output={"overlay_format": fmt, "overlay_max_side": 32, "report": True}))
    for shard in ("2/2", "1/2"):  # shards count from 1; the last one merges
        result = runner.invoke(
            app, ["run", "-c", config, "-i", str(image_folder), "-o", str(tmp_path / "a"), "-q", "--shard", shard]
        )
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["run", "-c", config, "-i", str(image_folder), "-o", str(tmp_path / "b"), "-q"])
    assert result.exit_code == 0, result.output
    suffix = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}[fmt]
    for out in (tmp_path / "a", tmp_path / "b"):
        records = json.loads((out / "manifest.json").read_text())["images"]
        for record in records:
            overlay = out / record["cams"][0]["overlay"]
            heatmap = out / record["cams"][0]["heatmap"]
            assert overlay.suffix == suffix and heatmap.suffix == ".png"
            with Image.open(overlay) as picture, Image.open(heatmap) as full:
                assert max(picture.size) <= 32 and full.size == (record["width"], record["height"])
        assert "thumbnails/" in (out / "index.html").read_text()
    result = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    from gradcam_cli.reports.compare_formats import _overlay

    record = json.loads((tmp_path / "b" / "manifest.json").read_text())["images"][0]
    picture = _overlay(tmp_path / "b", record["cams"][0], None)  # what compare --html embeds
    assert picture is not None and picture.ndim == 3 and max(picture.shape[:2]) <= 32


def test_a_full_disk_in_a_render_worker_is_exit_4_without_a_hang(tmp_path: Path, tiny_weights: Path) -> None:
    """Reviewer repro (a 3 MB tmpfs as -o): the exit-4 message printed, then the process never exited. Here a
    real write failure in a render worker process: files above 64 KB cannot be written (RLIMIT_FSIZE)."""
    import resource

    command = _slow_run(tmp_path, tiny_weights, 8, (800, 600), workers=1, render_workers=2)

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=90, preexec_fn=small_files)
    assert done.returncode == 4, done.stderr[-2000:]
    assert "cannot write to the output folder" in done.stderr and "Traceback" not in done.stderr
    for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines():
        json.loads(line)  # what was written stays valid


def test_non_finite_scores_are_that_images_error_record(tmp_path: Path, tiny_config: dict[str, Any]) -> None:
    """Reviewer repro: NaN logits for one image made json.dumps(allow_nan=False) raise and the batch was lost."""
    from PIL import Image as PILImage

    from gradcam_cli.runner.options import RunOptions
    from gradcam_cli.runner.run import run
    from tests.conftest import ASSETS

    folder = tmp_path / "images"
    random_image(folder / "dark.png", 40, 30, seed=1)
    folder.mkdir(exist_ok=True)
    PILImage.new("RGB", (40, 30), (255, 255, 255)).save(folder / "white.png")
    model = {**tiny_config["model"], "factory": str(ASSETS / "tiny_models.py") + ":build_nan_for_bright"}
    config = parse_config({**tiny_config, "model": model}, tmp_path)
    summary = run(config, RunOptions(inputs=[str(folder)], quiet=True))
    records = {r["path"]: r for r in json.loads(summary.manifest.read_text())["images"]}
    assert (summary.ok, summary.failed) == (1, 1)
    assert records["white.png"]["error"]["type"] == "NonFiniteScores" and records["dark.png"]["status"] == "ok"


def test_fail_fast_also_stops_on_an_image_whose_render_failed(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path, monkeypatch
) -> None:
    from gradcam_cli.runner import render
    from gradcam_cli.runner.options import RunOptions
    from gradcam_cli.runner.run import run

    def out_of_memory(job: RenderJob) -> np.ndarray:
        raise MemoryError

    monkeypatch.setattr(render, "_original", out_of_memory)
    runtime = {**tiny_config["runtime"], "render_workers": 0, "batch_size": 1}
    config = parse_config({**tiny_config, "runtime": runtime}, tmp_path)
    summary = run(config, RunOptions(inputs=[str(image_folder)], quiet=True, fail_fast=True))
    assert summary.failed >= 1 and summary.total < 3 and not summary.complete


def test_an_image_that_fails_part_way_leaves_no_files(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path, monkeypatch
) -> None:
    """Out of memory on the second class's overlay: its record is an error, and the files it had already
    written (first class, second heatmap) are taken back, so no file lies without a record."""
    from gradcam_cli.io import outputs
    from gradcam_cli.runner.options import RunOptions
    from gradcam_cli.runner.run import run

    real, calls = outputs.blend_bgr, {"n": 0}

    def second_blend_fails(image: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        if image.shape[:2] == (48, 64):  # a.jpg's (images render in parallel threads: pick it by its size)
            calls["n"] += 1
            if calls["n"] == 2:
                raise MemoryError
        return real(image, *args, **kwargs)

    monkeypatch.setattr(outputs, "blend_bgr", second_blend_fails)
    runtime = {**tiny_config["runtime"], "render_workers": 0, "batch_size": 1}
    cam = {"targets": "topk", "top_k": 2}
    config = parse_config({**tiny_config, "runtime": runtime, "cam": cam}, tmp_path)
    summary = run(config, RunOptions(inputs=[str(image_folder)], quiet=True))
    records = {r["path"]: r for r in json.loads(summary.manifest.read_text())["images"]}
    assert records["a.jpg"]["error"]["type"] == "MemoryError" and summary.failed == 1
    out = tmp_path / "out"
    assert not [p for p in out.rglob("a.jpg.*") if p.is_file()]
    assert (out / "heatmaps" / "a.png.cls0.png").exists() or (out / "heatmaps" / "a.png.cls1.png").exists()


RENDER_POOL_AFTER_OPENCV = """
import sys, cv2, numpy as np
from pathlib import Path
from gradcam_cli.io.manifest import RecordsWriter
from gradcam_cli.runner.render import RenderPool
image = np.random.default_rng(0).random((1500, 2000)).astype(np.float32)
cv2.GaussianBlur(image, (11, 11), 5)  # OpenCV's own worker threads start in this process
before = cv2.getNumThreads()
pool = RenderPool(RecordsWriter(Path(sys.argv[1])), processes=2)
in_workers = {pool.pool.submit(cv2.getNumThreads).result() for _ in range(4)}
print("workers", sorted(in_workers), "main", before, cv2.getNumThreads())
pool.close()
"""


def test_render_workers_start_after_opencv_used_its_threads_and_run_it_single_threaded(tmp_path: Path) -> None:
    """A forked worker that set OpenCV's thread count itself waited forever for the parent's pool threads."""
    done = subprocess.run(
        [sys.executable, "-c", RENDER_POOL_AFTER_OPENCV, str(tmp_path / "records.jsonl")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    workers, main = done.stdout.split("main")
    assert workers.split("workers")[1].strip() == "[1]"  # one image per worker: the cores are shared out
    assert main.split()[0] == main.split()[1]  # the main process keeps its own setting
