"""What `preprocess.fast_decode` does to heatmaps: the same images explained with and without it.

JPEGs much larger than the model input can be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
(Pillow's draft mode) before the final resize. This runs `gradcam run` twice on the benchmark sets
(photo-like JPEGs of each size, a random-initialised resnet50, as throughput.py makes them) and compares
every heatmap pixel: Pearson correlation, max and 99.9th-percentile absolute grey-level difference, and
top-1 agreement, with the time each run took.

    python benchmarks/fast_decode.py --sizes 640x480,4032x3024 --images 16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.throughput import make_images, make_model  # noqa: E402


def explain(images: Path, weights: Path, out: Path, fast: bool, batch_size: int) -> tuple[dict, float]:
    from gradcam_cli.config import parse_config
    from gradcam_cli.runner.options import RunOptions
    from gradcam_cli.runner.run import run

    config = parse_config(
        {
            "model": {"torchvision": "resnet50", "weights": str(weights), "labels": "none", "target_layer": "layer4"},
            "preprocess": {"fast_decode": fast},
            "output": {"dir": str(out), "overlays": False},
            "runtime": {"batch_size": batch_size, "device": "cpu"},
        },
        HERE,
    )
    start = time.perf_counter()
    summary = run(config, RunOptions(inputs=[str(images)], quiet=True))
    return json.loads(summary.manifest.read_text()), time.perf_counter() - start


def compare(exact: dict, fast: dict, exact_dir: Path, fast_dir: Path) -> dict:
    correlations, maxima, tails, same_top = [], [], [], []
    for a, b in zip(exact["images"], fast["images"], strict=True):
        same_top.append(a["predictions"][0]["class_index"] == b["predictions"][0]["class_index"])
        x = np.asarray(Image.open(exact_dir / a["cams"][0]["heatmap"]), dtype=np.float64)
        y = np.asarray(Image.open(fast_dir / b["cams"][0]["heatmap"]), dtype=np.float64)
        diff = np.abs(x - y)
        correlations.append(float(np.corrcoef(x.ravel(), y.ravel())[0, 1]))
        maxima.append(float(diff.max()))
        tails.append(float(np.percentile(diff, 99.9)))
    return {
        "pearson_min": min(correlations),
        "pearson_mean": float(np.mean(correlations)),
        "max_grey_diff": max(maxima),
        "p999_grey_diff_max": max(tails),
        "top1_agreement": float(np.mean(same_top)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="640x480,4032x3024")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", default=str(HERE / "_data"))
    args = parser.parse_args()
    data = Path(args.data_dir)
    weights = make_model(data / "resnet50-random.pt")
    print("| size | images | exact s | fast s | Pearson min / mean | max grey diff | p99.9 grey diff | top-1 same |")
    print("|---|---|---|---|---|---|---|---|")
    for text in args.sizes.split(","):
        size = tuple(int(v) for v in text.split("x"))
        images = make_images(data / f"images-{args.images}-{size[0]}x{size[1]}", args.images, size=size)
        with tempfile.TemporaryDirectory() as scratch:
            exact, exact_s = explain(images, weights, Path(scratch) / "exact", False, args.batch_size)
            fast, fast_s = explain(images, weights, Path(scratch) / "fast", True, args.batch_size)
            found = compare(exact, fast, Path(scratch) / "exact", Path(scratch) / "fast")
        print(
            f"| {text} | {args.images} | {exact_s:.1f} | {fast_s:.1f} | {found['pearson_min']:.4f} / "
            f"{found['pearson_mean']:.4f} | {found['max_grey_diff']:.0f} | {found['p999_grey_diff_max']:.0f} | "
            f"{found['top1_agreement'] * 100:.0f}% |",
            flush=True,
        )


if __name__ == "__main__":
    main()
