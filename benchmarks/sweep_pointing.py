"""Does `gradcam sweep`'s ranking agree with where the object is? The demo CNN on freshly generated shapes.

The shapes generator knows each object's bounding box, so beside the sweep's faithfulness ranking (insertion -
deletion, RISE's protocol) this measures the pointing game per method x target layer: the share of maps
whose hottest pixel falls inside the object's box (15 px tolerance at the original size, as
tests/test_localisation.py). The maps are the sweep's own (`run_sweep(on_batch=...)`), so both measures see
the same CAMs. Prints the table and the Spearman correlation between the two rankings.

    python benchmarks/sweep_pointing.py --images 48 --steps 20
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SIDE = 256  # square images: the model frame (128 px, letterbox) is the original scaled by one half
TOLERANCE = 15  # pixels at the original size
LAYERS = ("features", "features.1", "features.0")  # 16x16 (the last block), 16x16 (block 2), 32x32 (block 1)


def make_images(folder: Path, count: int, seed: int) -> dict[str, tuple[int, int, int, int]]:
    from gradcam_cli.demo.shapes import CLASSES, generate_sample

    rng = np.random.default_rng(seed)
    boxes = {}
    for index in range(count):
        sample = generate_sample(rng, SIDE, SIDE)
        name = f"{index:03d}_{CLASSES[sample.label]}.png"
        sample.image.save(folder / name)
        boxes[name] = sample.box
    return boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--steps", type=int, default=20, help="deletion/insertion steps")
    parser.add_argument("--seed", type=int, default=20261201, help="a seed the demo model never trained on")
    parser.add_argument("--methods", default="all", help="comma-separated, or all (scorecam, ablationcam too)")
    args = parser.parse_args()

    from gradcam_cli.config import METHOD_NAMES, load_config
    from gradcam_cli.demo.shapes import CLASSES
    from gradcam_cli.reports.sanity import spearman
    from gradcam_cli.runner.sweep import SweepRequest, run_sweep

    methods = METHOD_NAMES if args.methods == "all" else tuple(args.methods.split(","))
    config = load_config(HERE.parent / "configs" / "demo.yaml", {"runtime.device": "cpu", "runtime.workers": 0})
    hits: dict[tuple[str, str], list[bool]] = {}
    correct: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as folder:
        boxes = make_images(Path(folder), args.images, args.seed)

        def pointing(paths: list[str], batches: dict) -> None:
            for key, batch in batches.items():
                cams = batch.cams[:, 0].float().cpu().numpy()
                for path, cam, cls in zip(paths, cams, batch.class_indices[:, 0].tolist(), strict=True):
                    y, x = np.unravel_index(int(cam.argmax()), cam.shape)
                    scale = SIDE / cam.shape[0]
                    x, y = (x + 0.5) * scale, (y + 0.5) * scale  # the model pixel's centre, original frame
                    x0, y0, x1, y1 = boxes[path]
                    inside = x0 - TOLERANCE <= x < x1 + TOLERANCE and y0 - TOLERANCE <= y < y1 + TOLERANCE
                    hits.setdefault(key, []).append(bool(inside))
                    correct[path] = path[4:-4] == CLASSES[cls]

        request = SweepRequest(methods=tuple(methods), layers=LAYERS, limit=args.images, metric_steps=args.steps)
        sweep = run_sweep(config, [folder], request, on_batch=pointing)

    rates = {key: float(np.mean(values)) for key, values in hits.items()}
    scores = np.array([entry.score for entry in sweep.entries])
    pointing_rates = np.array([rates[(entry.method, entry.given)] for entry in sweep.entries])
    rho = spearman(scores, pointing_rates)
    best_pointing = max(rates.values())
    rank_of_best = min(i for i, e in enumerate(sweep.entries, 1) if rates[(e.method, e.given)] == best_pointing)
    cpu = platform.processor() or platform.machine()
    print(
        f"# machine: {cpu}, {os.cpu_count()} cores; demo CNN, {sweep.images} generated {SIDE}x{SIDE} shapes "
        f"(seed {args.seed}), {args.steps} steps, {sweep.seconds:.0f} s"
    )
    print("| rank | method | target layer | insertion - deletion | deletion | insertion | pointing game | img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for rank, entry in enumerate(sweep.entries, 1):
        rate = rates[(entry.method, entry.given)]
        print(
            f"| {rank} | {entry.method} | {entry.layer_label} | {entry.score:.3f} ± {entry.stderr:.3f} | "
            f"{entry.metrics['deletion']:.3f} | {entry.metrics['insertion']:.3f} | {rate:.0%} | "
            f"{entry.images_per_second:.0f} |"
        )
    top = sweep.entries[:5]
    print(
        f"\nSpearman(sweep score, pointing game) over {len(sweep.entries)} combinations: {rho:.2f}. "
        f"The sweep's winner ({sweep.best.method} on {sweep.best.layer_label}) points at the object in "
        f"{rates[(sweep.best.method, sweep.best.given)]:.0%} of the images; the best pointing rate is "
        f"{best_pointing:.0%}, first reached at sweep rank {rank_of_best}; the sweep's top 5 point at "
        f"{min(rates[(e.method, e.given)] for e in top):.0%} to {max(rates[(e.method, e.given)] for e in top):.0%}. "
        f"Top-1 accuracy {np.mean(list(correct.values())):.0%}."
    )


if __name__ == "__main__":
    main()
