"""Streaming keeps memory flat: 10x the images must not need more memory (slow: `pytest -m slow`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ASSETS, REPO, gradcam_command, random_image

MEASURE = (
    "import resource, sys\n"
    "from gradcam_cli.cli import main\n"
    "sys.argv = ['gradcam'] + sys.argv[1:]\n"
    "try:\n    main()\nexcept SystemExit as done:\n    assert done.code == 0, done.code\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
)


def _peak_rss_kb(folder: Path, config: Path, out: Path) -> int:
    command = [sys.executable, "-c", MEASURE, "run", "-c", str(config), "-i", str(folder), "-o", str(out), "-q"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return int(done.stdout.split("PEAK_RSS_KB")[1].split()[0])


@pytest.mark.slow
def test_peak_memory_is_flat_from_500_to_5000_images(tmp_path: Path, tiny_weights: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"factory": str(ASSETS / "tiny_models.py") + ":build", "weights": str(tiny_weights)},
                "preprocess": {"size": [32, 32]},
                "runtime": {"batch_size": 32, "workers": 1, "device": "cpu"},
            }
        )
    )
    small, large = tmp_path / "small", tmp_path / "large"
    for i in range(5000):
        path = random_image(large / f"{i // 500:02d}" / f"{i:05d}.png", 64, 48, seed=i % 50)
        if i < 500:
            (small / path.relative_to(large)).parent.mkdir(parents=True, exist_ok=True)
            (small / path.relative_to(large)).write_bytes(path.read_bytes())
    peak_small = _peak_rss_kb(small, config, tmp_path / "out-small")
    peak_large = _peak_rss_kb(large, config, tmp_path / "out-large")
    print(f"peak RSS: {peak_small / 1024:.0f} MB for 500 images, {peak_large / 1024:.0f} MB for 5000")
    assert peak_large <= peak_small * 1.10


TREE_MEASURE = (
    "import sys, threading, time\n"
    "from benchmarks.throughput import tree_rss_mb\n"
    "from gradcam_cli.cli import main\n"
    "peak = [0.0]\n"
    "def sample():\n"
    "    while True:\n"
    "        peak[0] = max(peak[0], tree_rss_mb(__import__('os').getpid())); time.sleep(0.1)\n"
    "threading.Thread(target=sample, daemon=True).start()\n"
    "sys.argv = ['gradcam'] + sys.argv[1:]\n"
    "try:\n    main()\nexcept SystemExit as done:\n    assert done.code == 0, done.code\n"
    "print('TREE_PEAK_MB', peak[0])\n"
)


@pytest.mark.slow
def test_memory_does_not_grow_with_the_batch_size_on_large_photos(tmp_path: Path, tiny_weights: Path) -> None:
    """Full-resolution work is bounded by the render workers, not by runtime.batch_size: 48 photos of
    12 MP at batch 4 and at batch 48 need about the same memory (main process and all workers)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(48):
        coarse = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((4032, 3024), Image.Resampling.BILINEAR).save(
            folder / f"{i:02d}.jpg", quality=90
        )
    peaks = {}
    for batch in (4, 48):
        config = tmp_path / f"c{batch}.yaml"
        config.write_text(
            json.dumps(
                {
                    "model": {"factory": str(ASSETS / "tiny_models.py") + ":build", "weights": str(tiny_weights)},
                    "preprocess": {"size": [32, 32]},
                    "runtime": {"batch_size": batch, "workers": 1, "render_workers": 1, "device": "cpu"},
                }
            )
        )
        command = gradcam_command(config, folder, tmp_path / f"o{batch}", entry=("-c", TREE_MEASURE))
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
        peaks[batch] = float(done.stdout.split("TREE_PEAK_MB")[1].split()[0])
    print(f"peak RSS of the process tree: {peaks[4]:.0f} MB at batch 4, {peaks[48]:.0f} MB at batch 48")
    assert peaks[48] <= peaks[4] + 200
