"""Scaling benchmark: one process vs shards (--shard K/N, N processes) vs the Ray engine (1, 2 actors).

Same photo-like JPEGs as benchmarks/throughput.py (its generator, fixed seed) and a random-initialised
torchvision model saved to a file (resnet18 by default). Every mode is `gradcam run` end to end in fresh
processes, from launch to exit (imports, model load, Ray start-up included), into a fresh output folder.
While they run, this script polls the records files, which gives two more figures per mode: start-up
(launch to the first record) and the steady rate (images per second after the first record).

    python benchmarks/scaling.py                                   # 128 images, resnet18, CPU
    python benchmarks/scaling.py --modes single,shards2 --images 512 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from throughput import SIZE, machine, make_images  # noqa: E402 - the shared data generator

# single: a plain run; shardsN: N processes with --shard K/N side by side; rayN: --engine ray, N actors
MODES = ("single", "shards1", "shards2", "ray1", "ray2")


def make_model(path: Path, name: str) -> Path:
    import torch
    import torchvision

    if not path.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(name).state_dict(), path)
    return path


def write_config(folder: Path, model: str, weights: Path, batch_size: int, device: str) -> Path:
    config = {
        "model": {"torchvision": model, "weights": str(weights), "labels": "none", "target_layer": "layer4"},
        "runtime": {"batch_size": batch_size, "device": device},
    }
    path = folder / "scaling.yaml"
    path.write_text(json.dumps(config))
    return path


def commands(mode: str, config: Path, images: Path, out: Path) -> list[tuple[list[str], dict[str, str]]]:
    """The processes of one mode, each with its environment."""
    base = [sys.executable, "-m", "gradcam_cli.cli", "run", "-c", str(config), "-i", str(images), "-o", str(out), "-q"]
    env = dict(os.environ)
    cores = os.cpu_count() or 1
    if mode == "single":
        return [(base, env)]
    if mode.startswith("shards"):
        count = int(mode.removeprefix("shards"))
        # N processes on one host share its cores: each gets cores/N threads (with GPUs: CUDA_VISIBLE_DEVICES=K)
        threads = str(max(1, cores // count))
        return [
            ([*base, "--shard", f"{k + 1}/{count}"], dict(env, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads))
            for k in range(count)
        ]
    actors = int(mode.removeprefix("ray"))
    return [([*base, "--engine", "ray", "--ray-actors", str(actors)], env)]


def records_lines(out: Path) -> int:
    total = 0
    for path in [out / "records.jsonl", *out.glob("records.shard-*.jsonl")]:
        with contextlib.suppress(OSError):  # a folder not created yet
            total += path.read_bytes().count(b"\n")
    return total


def run_mode(mode: str, config: Path, images: Path, count: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"scaling-{mode}-")) / "out"
    started = time.perf_counter()
    processes = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for command, env in commands(mode, config, images, out)
    ]
    seen, first, last = 0, None, None
    while any(p.poll() is None for p in processes):
        lines = records_lines(out)
        if lines != seen:
            now = time.perf_counter()
            if first is None:
                first, at_first = now, lines
            seen, last = lines, now
        time.sleep(0.05)
    wall = time.perf_counter() - started
    errors = [p.stderr.read().decode()[-2000:] for p in processes if p.wait() != 0]  # type: ignore[union-attr]
    if errors:
        raise SystemExit(f"{mode} failed:\n" + "\n".join(errors))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["total"] == count, manifest["summary"]
    steady = None
    if first is not None and last is not None and last > first and seen > at_first:
        steady = (seen - at_first) / (last - first)
    shutil.rmtree(out.parent, ignore_errors=True)
    return {
        "mode": mode,
        "processes": len(processes),
        "images": count,
        "wall_s": wall,
        "images_per_s": count / wall,
        "startup_s": (first - started) if first is not None else None,
        "steady_images_per_s": steady,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--data-dir", default=str(HERE / "_data"))
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()

    data = Path(args.data_dir)
    images = make_images(data / f"images-{args.images}", args.images)
    weights = make_model(data / f"{args.model}-random.pt", args.model)
    work = Path(tempfile.mkdtemp(prefix="scaling-"))
    config = write_config(work, args.model, weights, args.batch_size, args.device)
    print(f"# machine: {machine()}")
    print(
        f"# {args.images} images {SIZE[0]}x{SIZE[1]}, {args.model} (random init), batch {args.batch_size}, "
        f"device {args.device}; wall = launch to exit of all processes"
    )
    rows = []
    for mode in args.modes.split(","):
        rows.append(run_mode(mode, config, images, args.images))
        print(f"  ran {mode}: {rows[-1]['images_per_s']:.2f} img/s", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    single = next((r["images_per_s"] for r in rows if r["mode"] == "single"), None)
    print("| mode | processes | wall s | img/s | vs single | start-up s (to 1st record) | steady img/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['images_per_s'] / single:.2f}" if single else "-"
        startup = f"{r['startup_s']:.1f}" if r["startup_s"] is not None else "-"
        steady = f"{r['steady_images_per_s']:.2f}" if r["steady_images_per_s"] else "-"
        print(
            f"| {r['mode']} | {r['processes']} | {r['wall_s']:.1f} | {r['images_per_s']:.2f} | {ratio} | "
            f"{startup} | {steady} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
