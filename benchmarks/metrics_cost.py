"""What each faithfulness metric (cam.metrics) costs: extra forward passes per image and img/s, end to end.

`gradcam run` (the library call, in this process) over the same images once without metrics and once per
metric alone, on the demo CNN (128x128 input, generated shapes) and on a random-initialised resnet50
(the throughput benchmark's 640x480 JPEGs, stretched to 224x224). Prints a Markdown table.

    python benchmarks/metrics_cost.py --demo-images 48 --resnet-images 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.throughput import make_images, make_model  # noqa: E402

METRICS = ("deletion", "insertion", "confidence_change", "road_most", "road_least")


def demo_images(folder: Path, count: int) -> Path:
    import numpy as np

    from gradcam_cli.demo.shapes import generate_sample

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for index in range(count):
        generate_sample(rng, 256, 192).image.save(folder / f"{index:03d}.png")
    return folder


def timed_run(model: dict, preprocess: dict, images: Path, out: Path, metrics: tuple[str, ...], batch: int):
    from gradcam_cli.config import parse_config
    from gradcam_cli.runner.options import RunOptions
    from gradcam_cli.runner.run import run

    config = parse_config(
        {
            "model": model,
            "preprocess": preprocess,
            "cam": {"metrics": list(metrics)},
            "output": {"dir": str(out), "overlays": False},
            "runtime": {"batch_size": batch, "device": "cpu"},
        },
        Path("."),
    )
    start = time.perf_counter()
    summary = run(config, RunOptions(inputs=[str(images)], quiet=True, overwrite=True))
    seconds = time.perf_counter() - start
    passes = json.loads(summary.manifest.read_text())["run"].get("metric_passes", 0)
    return summary.ok, seconds, passes


def table(name: str, model: dict, preprocess: dict, images: Path, out: Path, batch: int) -> list[str]:
    rows = []
    plain = None
    timed_run(model, preprocess, images, out / "warm-up", (), batch)  # one-time costs (first model load, caches)
    for metrics in [(), *((m,) for m in METRICS)]:
        ok, seconds, passes = timed_run(
            model, preprocess, images, out / (metrics[0] if metrics else "plain"), metrics, batch
        )
        plain = plain or seconds
        label = metrics[0] if metrics else "(no metrics)"
        rows.append(
            f"| {name} | {label} | {passes / ok:.0f} | {ok / seconds:.2f} | {seconds / ok:.3f} | "
            f"{(seconds - plain) / ok:.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-images", type=int, default=48)
    parser.add_argument("--resnet-images", type=int, default=8)
    parser.add_argument("--only", choices=["demo", "resnet"], default=None)
    args = parser.parse_args()
    import torch

    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads; defaults: metric_steps 20, "
        "road_percentiles 10..90 (9), chunk_size 64"
    )
    print("| model | metric | extra passes / image | img/s | s / image | metric s / image |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        demo = {
            "factory": "gradcam_cli.demo.model:build_demo_cnn",
            "weights": str(HERE.parent / "gradcam_cli/demo/demo_cnn.safetensors"),
            "labels": str(HERE.parent / "gradcam_cli/demo/labels.txt"),
            "target_layer": "features",
        }
        if args.only != "resnet":
            table(
                "demo CNN 128x128",
                demo,
                {"size": [128, 128], "resize": "letterbox"},
                demo_images(root / "demo", args.demo_images),
                root / "out-demo",
                16,
            )
        if args.only != "demo":
            weights = make_model(root / "resnet50.pt")
            resnet = {"torchvision": "resnet50", "weights": str(weights), "labels": "none", "target_layer": "layer4"}
            table(
                "resnet50 640x480 -> 224",
                resnet,
                {},
                make_images(root / "jpegs", args.resnet_images),
                root / "out-resnet",
                8,
            )


if __name__ == "__main__":
    main()
