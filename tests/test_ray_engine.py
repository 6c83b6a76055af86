"""`--engine ray`: the same manifest as the local engine, on a small local Ray instance."""

from __future__ import annotations

import json
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
    pytest.importorskip("ray.data")
    from gradcam_cli.config import load_config
    from gradcam_cli.pipeline import RunOptions, run

    (image_folder / "broken.jpg").write_bytes(b"not an image")
    config = config_file(runtime={"batch_size": 2})
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    local = run(load_config(config, {"output.dir": str(local_out)}), RunOptions(inputs=[str(image_folder)], quiet=True))
    summary = run(
        load_config(config, {"output.dir": str(ray_out)}),
        RunOptions(inputs=[str(image_folder)], quiet=True, engine="ray", ray_actors=2),
    )
    assert (summary.ok, summary.failed, summary.exit_code) == (local.ok, local.failed, 1) == (3, 1, 1)
    assert summary.complete and summary.device == "cpu"
    expected = json.loads((local_out / "manifest.json").read_text())
    got = json.loads((ray_out / "manifest.json").read_text())
    assert got["summary"] == expected["summary"] and got["config_hash"] == expected["config_hash"]
    assert [r["path"] for r in got["images"]] == [r["path"] for r in expected["images"]]
    for mine, theirs in zip(got["images"], expected["images"], strict=True):
        assert (mine["status"], mine["sha256"], mine["error"]) == (theirs["status"], theirs["sha256"], theirs["error"])
        assert [p["class_index"] for p in mine["predictions"]] == [p["class_index"] for p in theirs["predictions"]]
        for cam, other in zip(mine["cams"], theirs["cams"], strict=True):
            assert (cam["class_index"], cam["heatmap"], cam["overlay"]) == (
                other["class_index"],
                other["heatmap"],
                other["overlay"],
            )
            a = np.asarray(Image.open(ray_out / cam["heatmap"]), dtype=int)
            b = np.asarray(Image.open(local_out / other["heatmap"]), dtype=int)
            assert np.abs(a - b).max() <= 1  # within one grey level
    # resume works the same way: a second ray run finds everything done, without starting Ray
    (image_folder / "broken.jpg").unlink()  # (failed images are retried)
    again = run(
        load_config(config, {"output.dir": str(ray_out)}),
        RunOptions(inputs=[str(image_folder)], quiet=True, engine="ray", ray_actors=2),
    )
    assert (again.ok, again.failed, again.skipped, again.complete) == (0, 0, 3, True)
