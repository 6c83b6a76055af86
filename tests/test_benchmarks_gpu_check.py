"""benchmarks/gpu_check.sh --cpu-dry-run: the one-call GPU check runs every section on the CPU (tiny sizes)
and leaves its JSON rows and Markdown tables, so the GPU run never has to debug it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def header(columns: list[str]) -> str:
    return "| " + " | ".join(columns) + " |"


def test_cpu_dry_run_writes_a_row_per_section_and_the_tables(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_DATA": str(tmp_path / "data"), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # the script's own limits add up to 410 s; a loaded machine is slower
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

    rows = json.loads((out / "gpu_check.json").read_text())["rows"]
    assert {row["section"] for row in rows} == set(gpu_check.SECTIONS)
    assert not [row for row in rows if "failed" in row or "error" in row], [r for r in rows if "error" in r]
    parity = {(row["check"], row.get("resize")): row for row in rows if row["section"] == "parity"}
    for resize in ("letterbox", "center_crop"):  # "GPU" is the CPU here: the same maps
        assert parity[("CPU fp32 vs GPU fp32 (TF32 off)", resize)]["verdict"] == "met"
    assert parity[("GPU fp32 rerun", "letterbox")]["byte_equal"] == parity[("GPU fp32 rerun", "letterbox")]["maps"]
    assert parity[("GPU fp32 device_decode vs GPU fp32", "letterbox")]["verdict"] == "met"  # decoded "on the device"
    overlays = parity[("overlays: device_decode (nvJPEG) vs render workers", "letterbox")]
    assert overlays["verdict"] == "met" and overlays["maps"] > 0  # the device's JPEG overlays, file by file
    determinism = parity[("determinism warnings (stderr of the GPU runs)", None)]
    assert determinism["verdict"] == "met" and determinism["finished"] >= 6  # counted over runs that finished
    timings = [row for row in rows if row["section"] == "compute" and row.get("images_per_s")]
    assert {row["mode"] for row in timings} == {"floor", "ours", "pytorch-grad-cam"}
    measured = [row for row in rows if row["section"] == "e2e" and row.get("images_per_s")]
    assert {row["mode"] for row in measured} == {"ours", "baseline", "floor"}
    assert all(row["images"] > 0 and row["peak_rss_mb"] > 0 for row in measured)
    assert "ours, preprocess.device_decode" in {row["run"] for row in measured}
    assert len([row for row in rows if row["section"] == "e2e" and "target" in row]) == 6

    markdown = (out / "gpu_check.md").read_text()
    assert markdown.startswith("## GPU (measured on ")
    for columns in (
        ["what", "found"],
        gpu_check.PARITY_COLUMNS,
        gpu_check.AGREE_COLUMNS,
        gpu_check.COMPUTE_COLUMNS,
        gpu_check.E2E_COLUMNS,
        gpu_check.TARGET_COLUMNS,
    ):
        assert header(columns) in markdown
    assert (out / "gpu_check.log").read_text().count("== section ") == len(gpu_check.SECTIONS)
