"""`--engine ray`: the same manifest as the local engine, on a small local Ray instance."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app

runner = CliRunner()


def test_missing_ray_extra_is_a_usage_error_with_the_install_hint(
    config_file, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = runner.invoke(app, ["run", "-c", str(config_file()), "-i", str(image_folder), "--engine", "ray"])
    assert result.exit_code == 2 and "pip install 'gradcam-cli[ray]'" in result.stderr, result.output
    assert not (tmp_path / "out").exists()
    bad = runner.invoke(app, ["run", "-c", str(config_file()), "-i", str(image_folder), "--ray-actors", "2"])
    assert bad.exit_code == 2 and "--engine ray" in bad.stderr


def test_ray_engine_matches_the_local_engine(config_file, image_folder: Path, tmp_path: Path) -> None:
    """Records, summary and identity as the local engine's, cam.metrics and their passes included."""
    pytest.importorskip("ray.data")
    from gradcam_cli.config import load_config
    from gradcam_cli.runner.options import RunOptions
    from gradcam_cli.runner.run import run

    (image_folder / "broken.jpg").write_bytes(b"not an image")
    metrics = {"metrics": ["confidence_change", "deletion"], "metric_steps": 4}
    config = config_file(runtime={"batch_size": 2}, cam=metrics)
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    local = run(load_config(config, {"output.dir": str(local_out)}), RunOptions(inputs=[str(image_folder)], quiet=True))
    summary = run(
        load_config(config, {"output.dir": str(ray_out)}),
        RunOptions(inputs=[str(image_folder)], quiet=True, backend="ray", ray_actors=2),
    )
    assert (summary.ok, summary.failed, summary.exit_code) == (local.ok, local.failed, 1) == (3, 1, 1)
    assert summary.complete and summary.device == "cpu"
    assert summary.metric_passes == local.metric_passes == 3 * (1 + 4)
    expected = json.loads((local_out / "manifest.json").read_text())
    got = json.loads((ray_out / "manifest.json").read_text())
    assert got["summary"] == expected["summary"] and got["config_hash"] == expected["config_hash"]
    assert [r["path"] for r in got["images"]] == [r["path"] for r in expected["images"]]
    for mine, theirs in zip(got["images"], expected["images"], strict=True):
        same_keys = ("status", "sha256", "error", "width", "height", "source", "file_size", "mtime_ns")
        assert {k: mine[k] for k in same_keys} == {k: theirs[k] for k in same_keys}
        assert [p["class_index"] for p in mine["predictions"]] == [p["class_index"] for p in theirs["predictions"]]
        for p, q in zip(mine["predictions"], theirs["predictions"], strict=True):
            assert p["label"] == q["label"] and p["score"] == pytest.approx(q["score"], abs=1e-4)
        for cam, other in zip(mine["cams"], theirs["cams"], strict=True):
            for key in ("rank", "class_index", "label", "heatmap", "overlay", "quality"):
                assert cam[key] == other[key], key
            assert cam["score"] == pytest.approx(other["score"], abs=1e-4)
            assert cam["raw_max"] == pytest.approx(other["raw_max"], rel=1e-3, abs=1e-6)
            assert cam["metrics"] == pytest.approx(other["metrics"], abs=1e-4)
            for key in ("heatmap", "overlay"):
                a = np.asarray(Image.open(ray_out / cam[key]), dtype=int)
                b = np.asarray(Image.open(local_out / other[key]), dtype=int)
                assert np.abs(a - b).max() <= 1  # within one grey level
    # resume works the same way: a second ray run finds everything done
    (image_folder / "broken.jpg").unlink()  # (failed images are retried)
    os.utime(image_folder / "a.png", ns=(1, 1))  # touched, same bytes: re-hashed, skipped, its record refreshed
    again = run(
        load_config(config, {"output.dir": str(ray_out)}),
        RunOptions(inputs=[str(image_folder)], quiet=True, backend="ray", ray_actors=2),
    )
    assert (again.ok, again.failed, again.skipped, again.complete) == (0, 0, 3, True)
    refreshed = {r["path"]: r for r in json.loads((ray_out / "manifest.json").read_text())["images"]}["a.png"]
    assert (
        refreshed["mtime_ns"] == 1 and refreshed["sha256"] == {r["path"]: r for r in got["images"]}["a.png"]["sha256"]
    )


def test_cluster_checks_come_before_the_output_folder(
    config_file, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set-up error (no GPU for runtime.device cuda, too many GPU actors) exits 2 with nothing written."""
    ray = pytest.importorskip("ray")
    from gradcam_cli.runner import ray_data as ray_engine

    monkeypatch.setattr(ray_engine, "_connect", lambda options: False)  # no real cluster needed

    def never(*args, **kwargs):
        raise AssertionError("the set-up error was not raised before the run started")

    monkeypatch.setattr(ray_engine, "stream", never)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    args = ["run", "-c", str(config_file()), "-i", str(image_folder), "--engine", "ray", "-q"]
    result = runner.invoke(app, [*args, "--device", "cuda"])
    assert result.exit_code == 2 and "no GPUs" in result.stderr, result.output
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    result = runner.invoke(app, [*args, "--device", "cuda", "--ray-actors", "3"])
    assert result.exit_code == 2 and "needs 3 GPUs" in result.stderr and "has 2" in result.stderr, result.output
    assert not (tmp_path / "out").exists()
    from gradcam_cli.config import load_config  # two actors per GPU fit

    half = load_config(config_file(runtime={"ray_gpus_per_actor": 0.5, "device": "auto"}))
    assert ray_engine._resources(half, None)[:2] == (4, {"num_gpus": 0.5, "num_cpus": 1})


def test_a_write_failure_in_an_actor_exits_like_a_full_disk() -> None:
    from gradcam_cli.errors import EXIT_OUTPUT
    from gradcam_cli.runner.ray_data import _failure

    class RemoteError(Exception):  # how Ray wraps an actor's exception: the original in `.cause`
        def __init__(self, cause: BaseException) -> None:
            super().__init__(f"ray task failed\n{cause!r}")
            self.cause = cause

    error = _failure(RemoteError(OSError(28, "No space left on device")))
    assert error.exit_code == EXIT_OUTPUT and "No space left on device" in str(error)
    assert _failure(RemoteError(RuntimeError("boom"))).exit_code == 2
