"""What makes `gradcam compare` meaningful: reruns are byte-identical, other machines stay far inside the
default thresholds (simulated here by other thread counts and batch sizes, and checked for real against a
baseline committed from another machine)."""

from __future__ import annotations

import struct
from pathlib import Path

import torch
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.config import CompareConfig, load_compare_config
from gradcam_cli.reports.compare import compare_runs
from tests.conftest import REPO

runner = CliRunner()


def png_chunks(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append(data[offset + 4 : offset + 8].decode())
        offset += 12 + length
    return chunks


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted([*folder.rglob("*.png"), *folder.rglob("*.jpg")])
    }


def test_reruns_are_byte_identical_without_metadata(config_file, image_folder: Path, tmp_path: Path) -> None:
    outputs = []
    for name in ("first", "second"):
        out = tmp_path / name
        result = runner.invoke(app, ["run", "-c", str(config_file()), "-i", str(image_folder), "-o", str(out), "-q"])
        assert result.exit_code == 0, result.output
        outputs.append(out)
    first, second = files_of(outputs[0]), files_of(outputs[1])
    assert len(first) == 6 and first == second  # heatmaps and overlays, byte for byte
    for name in first:
        if name.endswith(".png"):
            assert png_chunks(outputs[0] / name) == ["IHDR", "IDAT", "IEND"]  # no time or text chunks
    comparison = compare_runs(outputs[0], outputs[1], CompareConfig())
    assert comparison.exit_code == 0
    assert all(image.drift is not None and image.drift.mean_abs_diff == 0 for image in comparison.images)


def test_other_threads_and_batching_stay_far_inside_the_thresholds(
    config_file, image_folder: Path, tmp_path: Path
) -> None:
    """Different BLAS blocking and reduction orders (as on another CPU) move heatmaps by float noise only."""
    threads = torch.get_num_threads()
    runs = []
    try:
        for name, batch, count in (("one", 1, 1), ("many", 3, 2)):
            torch.set_num_threads(count)
            out = tmp_path / name
            args = ["run", "-c", str(config_file()), "-i", str(image_folder), "-o", str(out), "-q"]
            result = runner.invoke(app, [*args, "--batch-size", str(batch)])
            assert result.exit_code == 0, result.output
            runs.append(out)
    finally:
        torch.set_num_threads(threads)
    comparison = compare_runs(runs[0], runs[1], CompareConfig())
    assert comparison.exit_code == 0
    for image in comparison.images:
        assert image.drift is not None
        assert image.drift.correlation > 0.999 and image.drift.mean_abs_diff < 0.005


def test_committed_baseline_from_another_machine_passes(tmp_path: Path) -> None:
    """examples/ci/demo-baseline was made on the developers' machine; CI runs on another one."""
    config = REPO / "examples" / "ci" / "gradcam-ci.yaml"
    out = tmp_path / "current"
    args = ["run", "-c", str(config), "-i", str(REPO / "sample_images" / "demo"), "-o", str(out), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    comparison = compare_runs(REPO / "examples" / "ci" / "demo-baseline", out, load_compare_config(config))
    assert comparison.exit_code == 0, [(i.path, i.reasons) for i in comparison.failing]
    assert len(comparison.images) == 12
    for image in comparison.images:
        assert image.drift is not None
        assert image.drift.correlation > 0.99 and image.drift.mean_abs_diff < 0.01
