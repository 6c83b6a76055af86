"""runner/run.py: a whole run as a library call (no CLI), and what follows the manifest."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gradcam_cli.config import parse_config
from gradcam_cli.errors import ConfigError
from gradcam_cli.runner.options import RunOptions, RunSummary
from gradcam_cli.runner.run import run


def test_run_writes_files_records_and_the_manifest(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path
) -> None:
    config = parse_config({**tiny_config, "output": {**tiny_config["output"], "report": True}}, tmp_path)
    summary = run(config, RunOptions(inputs=[str(image_folder)], quiet=True))
    assert (summary.total, summary.ok, summary.failed, summary.complete, summary.exit_code) == (3, 3, 0, True, 0)
    manifest = json.loads(summary.manifest.read_text())
    assert [record["path"] for record in manifest["images"]] == ["a.jpg", "a.png", "sub/b.png"]
    assert (tmp_path / "out" / "heatmaps" / "sub" / "b.png.png").is_file()
    assert (tmp_path / "out" / "index.html").is_file()  # output.report: the gallery follows the manifest
    again = run(config, RunOptions(inputs=[str(image_folder)], quiet=True))
    assert (again.ok, again.skipped) == (0, 3)


def test_unknown_backend_and_overwrite_with_shard_write_nothing(tmp_path: Path, tiny_config: dict[str, Any]) -> None:
    from gradcam_cli.runner.shards import Shard

    config = parse_config(tiny_config, tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(ConfigError, match="--engine must be"):
        run(config, RunOptions(inputs=[str(tmp_path / "images")], backend="spark"))
    with pytest.raises(ConfigError, match="--overwrite cannot be combined with --shard"):
        run(config, RunOptions(inputs=[str(tmp_path / "images")], overwrite=True, shard=Shard(0, 2)))
    assert not (tmp_path / "out").exists()


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text(encoding="utf-8").splitlines()]


def test_hostile_file_names_are_processed_and_the_run_goes_on(
    tmp_path: Path, tiny_config: dict[str, Any], deep_folder: Callable[[Path, int], Path]
) -> None:
    from tests.conftest import random_image

    images = tmp_path / "images"
    random_image(images / "a.png", 20, 20)
    long_name = "x" * 234 + ".png"  # 238 bytes: its temporary output names once passed 255 bytes
    random_image(images / long_name, 20, 20)
    os.rename(random_image(images / "plain.png", 20, 20), os.fsencode(images) + b"/caf\xe9.png")
    random_image(deep_folder(images, 1100) / "z.png", 20, 20)
    config = parse_config(tiny_config, tmp_path)
    summary = run(config, RunOptions(inputs=[str(images)], quiet=True))
    records = _records(tmp_path / "out")
    paths = sorted(record["path"] for record in records)
    assert paths == sorted(["a.png", long_name, "caf%E9.png", "d/" * 1100 + "z.png"])
    assert summary.exit_code == 0 and all(record["status"] == "ok" for record in records)
    for record in records:
        assert (tmp_path / "out" / record["cams"][0]["overlay"]).is_file()


@pytest.mark.parametrize("link", ["heatmaps", "heatmaps/sub", "thumbnails"])
def test_a_symlinked_result_folder_is_refused_before_anything_is_written(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path, link: str
) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere, out / link)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ConfigError, match="is a symbolic link"):
        run(parse_config(tiny_config, tmp_path), RunOptions(inputs=[str(image_folder)], quiet=True))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before and not any(elsewhere.iterdir())


def test_the_output_folder_cannot_be_an_input_folder(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path
) -> None:
    config = parse_config({**tiny_config, "output": {"dir": str(image_folder)}}, tmp_path)
    before = sorted(image_folder.rglob("*"))
    with pytest.raises(ConfigError, match="is also an --input folder"):
        run(config, RunOptions(inputs=[str(image_folder)], quiet=True))
    assert sorted(image_folder.rglob("*")) == before


def test_a_killed_runs_temporary_files_are_removed_at_the_next_start(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path
) -> None:
    config = parse_config(tiny_config, tmp_path)
    run(config, RunOptions(inputs=[str(image_folder)], quiet=True))
    stale = tmp_path / "out" / ".manifest.json.x1y2z3_a.tmp"  # a kill during the manifest write
    stale.write_bytes(b"{")
    kept = tmp_path / "out" / "notes.tmp"
    kept.write_bytes(b"mine")
    run(config, RunOptions(inputs=[str(image_folder)], quiet=True))
    assert not stale.exists() and kept.exists()


def test_nondeterministic_ops_reach_the_manifest_and_one_warning(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA ops without a deterministic kernel (attention or upsample backward) warn at every call in
    warn_only mode: the run records them once, in the manifest and as one GradcamWarning."""
    import warnings

    from gradcam_cli.errors import GradcamWarning
    from gradcam_cli.runner import local

    real_normalise = local.normalise

    def normalise_and_warn(*args: Any, **kwargs: Any) -> Any:
        warnings.warn("index_add_cuda_ does not have a deterministic implementation, ...", UserWarning, stacklevel=2)
        return real_normalise(*args, **kwargs)

    monkeypatch.setattr(local, "normalise", normalise_and_warn)
    config = parse_config({**tiny_config, "runtime": {**tiny_config["runtime"], "batch_size": 1}}, tmp_path)
    with pytest.warns(GradcamWarning, match="index_add_cuda_") as caught:
        summary = run(config, RunOptions(inputs=[str(image_folder)], quiet=True))
    assert len([w for w in caught if issubclass(w.category, GradcamWarning)]) == 1
    assert json.loads(summary.manifest.read_text())["nondeterministic_ops"] == ["index_add_cuda_"]


def test_folder_totals_and_this_runs_counts_are_kept_apart(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path
) -> None:
    """Reviewer repro: after an incremental run the manifest said {total 303, ok 303, skipped 300} while
    --json said ok 3. The manifest's summary is the folder; `run` (and --json) is what this run did."""
    config = parse_config(tiny_config, tmp_path)
    first = run(config, RunOptions(inputs=[str(image_folder)], quiet=True))
    assert first.folder == {"total": 3, "ok": 3, "failed": 0}
    again = run(config, RunOptions(inputs=[str(image_folder)], quiet=True))
    manifest = json.loads(again.manifest.read_text())
    assert manifest["summary"] == {"total": 3, "ok": 3, "failed": 0}
    assert (manifest["run"]["ok"], manifest["run"]["skipped"]) == (0, 3)
    assert again.as_dict()["nothing_new"] and again.as_dict()["folder"]["total"] == 3
    assert again.line().startswith("Nothing new: all 3 images were already done")


def test_a_run_cut_short_says_what_is_left(tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path) -> None:
    config = parse_config(tiny_config, tmp_path)
    summary = run(config, RunOptions(inputs=[str(image_folder)], quiet=True, limit=1))
    assert (summary.ok, summary.complete, summary.left) == (1, False, 2)
    assert "Stopped early" in summary.line() and "2 left" in summary.line()
    interrupted = RunSummary(ok=80, total=80, interrupted_by=2, left=176, seconds=1.0)
    line = interrupted.line()
    assert line.startswith("Interrupted by SIGINT after 80 new images") and "176 images left" in line
    assert "rerun the same command to resume" in line


def test_silent_surprises_become_warnings_in_the_manifest(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path
) -> None:
    """--top-k beyond the classes was clamped silently, an empty input gave exit 0 silently, and a
    torchvision model without weights ran with random weights silently."""
    import warnings

    from gradcam_cli.errors import GradcamWarning

    topk = parse_config({**tiny_config, "cam": {"targets": "topk", "top_k": 9}}, tmp_path)
    with pytest.warns(GradcamWarning, match="top_k is 9 but the model has 3 classes"):
        summary = run(topk, RunOptions(inputs=[str(image_folder)], quiet=True))
    assert any("top_k is 9" in w for w in json.loads(summary.manifest.read_text())["warnings"])
    empty = tmp_path / "empty"
    empty.mkdir()
    config = parse_config({**tiny_config, "output": {"dir": str(tmp_path / "out-empty")}}, tmp_path)
    with pytest.warns(GradcamWarning, match="no images"):
        run(config, RunOptions(inputs=[str(empty)], quiet=True))
    random = parse_config(
        {
            "model": {"torchvision": "resnet18", "labels": "none", "kwargs": {"num_classes": 3}},
            "preprocess": {"size": [32, 32]},
            "output": {"dir": str(tmp_path / "out-random")},
            "runtime": {"workers": 0, "device": "cpu"},
        },
        tmp_path,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run(random, RunOptions(inputs=[str(image_folder)], quiet=True))
    assert any(issubclass(w.category, GradcamWarning) and "random weights" in str(w.message) for w in caught)
    manifest = json.loads(summary.manifest.read_text())
    assert manifest["model"]["weights"] == "random-init" and any("random weights" in w for w in manifest["warnings"])


METRICS = {
    "metrics": ["deletion", "insertion", "confidence_change", "road_most", "road_least"],
    "metric_steps": 4,
    "road_percentiles": [50],
}


def test_metrics_reach_the_records_the_manifest_and_the_summary(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path
) -> None:
    """cam.metrics: a value per metric in every cam entry, their statistics in the manifest's summary, and
    the extra forward passes counted exactly (in `run`, --json and the summary line)."""
    config = parse_config({**tiny_config, "cam": {**METRICS, "targets": "topk", "top_k": 2}}, tmp_path)
    summary = run(config, RunOptions(inputs=[str(image_folder)], quiet=True))
    manifest = json.loads(summary.manifest.read_text())
    cams = [cam for record in manifest["images"] for cam in record["cams"]]
    assert len(cams) == 6 and all(set(cam["metrics"]) == set(METRICS["metrics"]) for cam in cams)
    assert all(0 <= cam["metrics"]["deletion"] <= 1 and 0 <= cam["metrics"]["insertion"] <= 1 for cam in cams)
    block = manifest["metrics"]
    assert block["names"] == METRICS["metrics"] and block["metric_steps"] == 4 and block["road_percentiles"] == [50]
    per_cam = sum(block["passes_per_cam"].values())
    assert per_cam == 4 + 4 + 1 + 1 + 1  # 32x32 input: 4 steps of 256 pixels
    assert manifest["run"]["metric_passes"] == summary.metric_passes == 6 * per_cam
    assert summary.as_dict()["metric_passes"] == 6 * per_cam
    assert f"Metrics: {6 * per_cam} extra forward passes (22.0 per image)." in summary.line()
    stats = manifest["summary"]["metrics"]
    deletion = sorted(cam["metrics"]["deletion"] for cam in cams)
    assert stats["deletion"]["count"] == 6 and stats["deletion"]["min"] == deletion[0]
    assert stats["deletion"]["median"] == pytest.approx((deletion[2] + deletion[3]) / 2, abs=1e-6)
    assert {"average_drop", "increase_in_confidence"} <= set(stats["confidence_change"])
    # a rerun with nothing new rewrites the manifest without torch: the statistics stay
    again = run(config, RunOptions(inputs=[str(image_folder)], quiet=True))
    assert json.loads(again.manifest.read_text())["summary"]["metrics"] == stats


def test_without_metrics_records_and_manifest_keep_their_shape(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path
) -> None:
    summary = run(parse_config(tiny_config, tmp_path), RunOptions(inputs=[str(image_folder)], quiet=True))
    manifest = json.loads(summary.manifest.read_text())
    assert "metrics" not in manifest and set(manifest["summary"]) == {"total", "ok", "failed"}
    assert set(manifest["run"]) == {"ok", "failed", "skipped", "complete", "interrupted_by", "left"}
    keys = {"rank", "class_index", "label", "score", "heatmap", "overlay", "raw_max", "quality"}
    assert all(set(cam) == keys for record in manifest["images"] for cam in record["cams"])
    assert "metric_passes" not in summary.as_dict() and "Metrics" not in summary.line()
    assert not any(key.startswith("cam.metric") or key == "cam.road_percentiles" for key in manifest["identity"])


def test_turning_metrics_on_is_another_identity(
    tmp_path: Path, tiny_config: dict[str, Any], image_folder: Path
) -> None:
    """A folder never mixes records with and without metrics: turning them on is refused like any change of
    identity (--overwrite recomputes everything)."""
    run(parse_config(tiny_config, tmp_path), RunOptions(inputs=[str(image_folder)], quiet=True))
    with_metrics = parse_config({**tiny_config, "cam": {"metrics": ["deletion"]}}, tmp_path)
    with pytest.raises(ConfigError, match=r"cam.metrics changed: \[\] -> \[\"deletion\"\]"):
        run(with_metrics, RunOptions(inputs=[str(image_folder)], quiet=True))
    summary = run(with_metrics, RunOptions(inputs=[str(image_folder)], quiet=True, overwrite=True))
    assert summary.ok == 3 and summary.metric_passes == 3 * 20
