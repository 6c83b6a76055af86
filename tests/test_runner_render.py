"""runner/render.py and runner/records.py: engine results become files and records, without the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gradcam_cli.config import parse_config
from gradcam_cli.io.discovery import ImageSource
from gradcam_cli.io.outputs import OutputJob, write_outputs
from gradcam_cli.runner.loader import DecodeDataset, collate, normalise
from gradcam_cli.runner.prepare import prepare
from gradcam_cli.runner.records import error_record, label_of
from gradcam_cli.runner.render import render_batch
from tests.conftest import random_image


def test_a_batch_becomes_records_in_input_order_and_one_job_per_ok_image(
    tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    config = parse_config(tiny_config, tmp_path)
    prepared = prepare(config)
    good = random_image(tmp_path / "in" / "a.jpg", 50, 30, seed=4)
    (tmp_path / "in" / "b.jpg").write_bytes(b"not a jpeg")
    dataset = DecodeDataset(config.preprocess, config.input, keep_original=True)
    items = [dataset[ImageSource(source=str(path), path=path.name)] for path in (good, tmp_path / "in" / "b.jpg")]
    batch = collate(items)
    with prepared.engine:
        result = prepared.engine.explain(normalise(batch.pixels, config.preprocess, prepared.device), prepared.targets)
    jobs: list[OutputJob] = []
    records = render_batch(prepared, tmp_path / "out", batch, result, jobs.append)
    assert [r["path"] for r in records] == ["a.jpg", "b.jpg"]
    assert [r["status"] for r in records] == ["ok", "error"]
    ok = records[0]
    assert (ok["width"], ok["height"]) == (50, 30) and ok["cams"][0]["heatmap"] == "heatmaps/a.jpg.png"
    assert ok["predictions"][0]["label"] in ("cat", "dog", "bird") and len(ok["predictions"]) == 3
    (job,) = jobs
    assert job.heatmaps.shape == (1, 30, 50) and job.heatmaps.dtype == np.uint8
    write_outputs(job)
    assert (tmp_path / "out" / "heatmaps" / "a.jpg.png").is_file()
    assert (tmp_path / "out" / "overlays" / "a.jpg.png").is_file()


def test_error_records_keep_the_schema() -> None:
    record = error_record(ImageSource(source="/x/a.jpg", path="a.jpg", file_size=3), None, "DecodeError", "bad")
    assert record["status"] == "error" and record["cams"] == [] and record["error"]["type"] == "DecodeError"
    assert record["file_size"] == 3 and record["width"] is None
    assert label_of(["cat"], 0) == "cat" and label_of(["cat"], 4) == "4" and label_of(None, 2) == "2"
