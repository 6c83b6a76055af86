"""Throughput benchmark: pytorch-grad-cam script vs streaming floor vs `gradcam run`, at any image size.

One invocation generates its own data (photo-like JPEGs of `--size`, fixed seed) and a random-initialised
resnet50 saved to a file, then runs the modes alternating and repeated, each in a fresh subprocess.
Prints images/s, ours/baseline, ours/floor and peak RSS of the whole process tree (main + workers,
sampled); `--json` saves rows.

- baseline: what a competent user scripts with pytorch-grad-cam (DataLoader, 2 workers; heatmap PNG and
  overlay JPEG at the original size, as its cam.py writes them);
- floor: a DataLoader with 2 workers that decodes and resizes the same files, and a forward-only pass in
  the main process: no CAM, no files;
- ours: `gradcam run` through the library call (`--ours-option key=value` sets config keys).

    python benchmarks/throughput.py                                   # 256 x 640x480, fp32 and bf16, batch 16
    python benchmarks/throughput.py --size 4032x3024 --images 32 --precisions fp32
    python benchmarks/throughput.py --sizes-table --precisions fp32   # img/s and RSS at 0.3 .. 24 MP
    python benchmarks/throughput.py --memory-check                    # also ours at 10x the images
    python benchmarks/throughput.py --device cuda --batch-sizes 16,64 --images 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

SIZE = (640, 480)
SIZES_TABLE = {"0.3": (640, 480), "1": (1152, 864), "3": (2048, 1536), "12": (4032, 3024), "24": (5664, 4248)}


# ---------------------------------------------------------------- data
def make_images(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = SIZE) -> Path:
    """Photo-like JPEGs: smooth colour fields, a few soft shapes, sensor-like noise."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) == count:
        return folder
    for path in existing:
        path.unlink()
    rng = np.random.default_rng(seed)
    width, height = size
    scale = width / 640
    for index in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 8))):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            r = int(rng.integers(20, 140) * scale)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.ellipse((x - r, y - r, x + r, y + int(r * rng.uniform(0.5, 1.5))), fill=colour)
        image = image.filter(ImageFilter.GaussianBlur(2))
        noise = rng.integers(-10, 11, (height, width, 3), dtype=np.int16)  # sensor-like noise, cheap at 24 MP
        noisy = np.asarray(image, dtype=np.int16) + noise
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"img_{index:05d}.jpg", quality=90)
    return folder


def make_model(path: Path) -> Path:
    import torch
    import torchvision

    if not path.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


def load_resnet50(weights: Path):
    import torch
    import torchvision

    model = torchvision.models.resnet50()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


# ---------------------------------------------------------------- modes (run in a child process)
def run_baseline(images: Path, weights: Path, out: Path, batch_size: int, device: str, precision: str) -> int:
    """What a competent user writes with pytorch-grad-cam (fp32: the reference crashes under bf16); the
    overlay is a JPEG, as pytorch-grad-cam's cam.py writes it."""
    import cv2
    import numpy as np
    import torch
    from PIL import Image
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    class Images(Dataset):
        def __init__(self, paths):
            self.paths = paths
            self.transform = transforms.Compose(
                [
                    transforms.Resize((224, 224)),
                    transforms.ToTensor(),
                    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                ]
            )

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            image = Image.open(self.paths[i]).convert("RGB")
            return self.transform(image), np.asarray(image), i

    def collate(items):
        return torch.stack([x for x, _, _ in items]), [o for _, o, _ in items], [i for _, _, i in items]

    paths = sorted(images.glob("*.jpg"))
    model = load_resnet50(weights).to(device)
    loader = DataLoader(Images(paths), batch_size=batch_size, num_workers=2, collate_fn=collate)
    (out / "heatmaps").mkdir(parents=True)
    (out / "overlays").mkdir(parents=True)
    count = 0
    with GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
        for batch, originals, indices in loader:
            grayscale = cam(input_tensor=batch.to(device), targets=None)
            for g, original, i in zip(grayscale, originals, indices, strict=True):
                h, w = original.shape[:2]
                full = cv2.resize(g, (w, h))
                cv2.imwrite(str(out / "heatmaps" / f"{i}.png"), np.uint8(255 * full))
                overlay = show_cam_on_image(original.astype(np.float32) / 255, full, use_rgb=True)
                cv2.imwrite(str(out / "overlays" / f"{i}.jpg"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
                count += 1
    return count


def run_floor(
    images: Path, weights: Path, out: Path, batch_size: int, device: str, precision: str, workers: int = 2
) -> tuple[int, float]:
    """Streaming floor: a DataLoader with `workers` workers (2 here; gpu_check.py gives it the machine's
    cores) decodes and resizes the files, the main process runs a forward-only pass; no CAM, no files.
    Timed from the first batch on (the model is loaded before)."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import functional as TF

    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    class Resized(Dataset):
        def __init__(self, paths: list[Path]) -> None:
            self.paths = paths

        def __len__(self) -> int:
            return len(self.paths)

        def __getitem__(self, i: int):
            picture = Image.open(self.paths[i]).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
            return (TF.to_tensor(picture) - mean) / std

    paths = sorted(images.glob("*.jpg"))
    model = load_resnet50(weights).to(device).to(memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None)
    with torch.inference_mode(), autocast:
        model(torch.zeros(1, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last))  # warm-up
        _sync(device)
        start = time.perf_counter()
        for batch in DataLoader(Resized(paths), batch_size=batch_size, num_workers=workers):
            model(batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last))
        _sync(device)
    return len(paths), time.perf_counter() - start


def run_ours(images: Path, weights: Path, out: Path, batch_size: int, device: str, precision: str) -> int:
    from gradcam_cli.config import parse_config
    from gradcam_cli.runner.options import RunOptions
    from gradcam_cli.runner.run import run

    data: dict = {
        "model": {"torchvision": "resnet50", "weights": str(weights), "labels": "none", "target_layer": "layer4"},
        "output": {"dir": str(out)},
        "runtime": {"batch_size": batch_size, "device": device, "precision": precision},
    }
    for option in OURS_OPTIONS:  # --ours-option section.key=value (JSON values)
        key, _, value = option.partition("=")
        section, _, leaf = key.partition(".")
        data.setdefault(section, {})[leaf] = json.loads(value)
    config = parse_config(data, HERE)
    summary = run(config, RunOptions(inputs=[str(images)], quiet=True))
    _sync(device)
    total = sum(summary.stage_seconds.values()) or 1.0
    STAGE_SHARES.update({k: v / total for k, v in summary.stage_seconds.items()})
    return summary.ok


STAGE_SHARES: dict[str, float] = {}  # filled by run_ours: the main loop's wall-clock share per stage
OURS_OPTIONS: list[str] = []  # --ours-option, passed on to the child


def tree_rss_mb(root: int) -> float:
    """Memory of `root` and all its descendants now, in MB: the sum of their PSS (Linux /proc), which counts
    pages that forked workers share with the main process once, not once per process as RSS would (RSS where
    /proc has no smaps_rollup)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    total_kb = 0
    for pid in parents:
        walk = pid
        while walk not in (0, 1) and walk != root:
            walk = parents.get(walk, 0)
        if walk != root:
            continue
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
        except OSError:
            total_kb += _status_rss_kb(pid)  # no smaps_rollup (gVisor, old kernels): RSS, shared pages per process
    return total_kb / 1024


def _status_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TreeRss:
    """Samples the process tree's memory (PSS) every 0.2 s in a thread; `peak` is the largest sum seen."""

    def __init__(self) -> None:
        import threading

        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, tree_rss_mb(os.getpid()))

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child(args: argparse.Namespace) -> None:
    out = Path(tempfile.mkdtemp(prefix=f"bench-{args.child}-"))
    # Library imports are a per-process constant, not throughput: load them before the clock starts.
    import cv2  # noqa: F401
    import pytorch_grad_cam  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import gradcam_cli.runner.run  # noqa: F401

    OURS_OPTIONS.extend(args.ours_option or [])
    try:
        start = time.perf_counter()
        mode = {"baseline": run_baseline, "floor": run_floor, "ours": run_ours}[args.child]
        with TreeRss() as tree:
            result = mode(
                Path(args.images_dir), Path(args.weights), out / "o", args.batch_size, args.device, args.precision
            )
        count, seconds = result if isinstance(result, tuple) else (result, time.perf_counter() - start)
        overlays = sorted((out / "o" / "overlays").rglob("*.*")) if (out / "o" / "overlays").exists() else []
        overlay_mb = statistics.mean(p.stat().st_size for p in overlays) / 2**20 if overlays else None
        main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        workers_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            json.dumps(
                {
                    "mode": args.child,
                    "precision": args.precision,
                    "batch_size": args.batch_size,
                    "images": count,
                    "seconds": seconds,
                    "images_per_s": count / seconds,
                    "peak_rss_mb": main_rss,
                    "worker_peak_rss_mb": workers_rss,
                    "tree_peak_rss_mb": tree.peak,
                    "overlay_mb": overlay_mb,
                    "options": OURS_OPTIONS if args.child == "ours" else [],
                    "stage_shares": STAGE_SHARES,
                }
            )
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------- orchestration
def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def spawn(mode: str, args: argparse.Namespace, images: Path, weights: Path, precision: str, batch_size: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--images-dir",
        str(images),
        "--weights",
        str(weights),
        "--device",
        args.device,
        "--precision",
        precision,
        "--batch-size",
        str(batch_size),
        *[f"--ours-option={option}" for option in (args.ours_option or [])],
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-sizes", default="16")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=str(HERE / "_data"))
    parser.add_argument("--memory-check", action="store_true", help="also run ours on 10x the images")
    parser.add_argument("--json", help="write all rows to this file")
    parser.add_argument("--size", default="640x480", help="image size WxH, e.g. 4032x3024 for 12 MP")
    parser.add_argument("--sizes-table", action="store_true", help="ours and the floor at 0.3, 1, 3, 12 and 24 MP")
    parser.add_argument("--modes", default="baseline,floor,ours", help="which modes to run")
    parser.add_argument("--ours-option", action="append", help="config key for ours: runtime.threads=1 (JSON value)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    data = Path(args.data_dir)
    weights = make_model(data / "resnet50-random.pt")
    print(f"# machine: {machine()}")
    if args.sizes_table:
        sizes_table(args, data, weights)
        return
    size = tuple(int(v) for v in args.size.lower().split("x"))
    images = make_images(data / f"images-{args.images}-{size[0]}x{size[1]}", args.images, size=size)
    print(f"# {args.images} images {size[0]}x{size[1]}, resnet50 (random init), device {args.device}")
    if args.ours_option:
        print(f"# ours with {' '.join(args.ours_option)}")
    modes = args.modes.split(",")
    rows: list[dict] = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for repeat in range(args.repeats):
            if "baseline" in modes:
                rows.append(spawn("baseline", args, images, weights, "fp32", batch_size) | {"repeat": repeat})
                print(f"  ran baseline b{batch_size} #{repeat}: {rows[-1]['images_per_s']:.2f} img/s", file=sys.stderr)
            for precision in args.precisions.split(","):
                for mode in [m for m in ("floor", "ours") if m in modes]:
                    rows.append(spawn(mode, args, images, weights, precision, batch_size) | {"repeat": repeat})
                    print(
                        f"  ran {mode} {precision} b{batch_size} #{repeat}: {rows[-1]['images_per_s']:.2f} img/s",
                        file=sys.stderr,
                    )
    if args.memory_check:
        big = make_images(data / f"images-{args.images * 10}-{size[0]}x{size[1]}", args.images * 10, size=size)
        rows.append(spawn("ours", args, big, weights, "fp32", 16) | {"repeat": 0, "memory_check": True})
    report(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def sizes_table(args: argparse.Namespace, data: Path, weights: Path) -> None:
    """How cost grows with the image: ours and the floor at 0.3 .. 24 MP (fewer images as they grow)."""
    precision = args.precisions.split(",")[0]
    batch = int(args.batch_sizes.split(",")[0])
    print(f"# ours and floor by image size, resnet50 (random init), {precision}, batch {batch}")
    print("| MP | size | images | floor img/s | ours img/s | ours/floor | peak MB (PSS, all processes) | overlay MB |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for label, (width, height) in SIZES_TABLE.items():
        count = max(16, min(args.images, int(64 * 3 / max(0.3, float(label)))))
        images = make_images(data / f"images-{count}-{width}x{height}", count, size=(width, height))
        floor = spawn("floor", args, images, weights, precision, batch)
        ours = spawn("ours", args, images, weights, precision, batch)
        rows.append({"mp": label, "floor": floor, "ours": ours})
        overlay = f"{ours['overlay_mb']:.2f}" if ours.get("overlay_mb") else "-"
        print(
            f"| {label} | {width}x{height} | {count} | {floor['images_per_s']:.2f} | {ours['images_per_s']:.2f} | "
            f"{ours['images_per_s'] / floor['images_per_s']:.2f} | {ours['tree_peak_rss_mb']:.0f} | {overlay} |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def report(rows: list[dict], args: argparse.Namespace) -> None:
    def median(mode: str, precision: str, batch: int, key: str = "images_per_s") -> float:
        values = [
            r[key]
            for r in rows
            if r["mode"] == mode
            and r["precision"] == precision
            and r["batch_size"] == batch
            and not r.get("memory_check")
        ]
        return statistics.median(values) if values else float("nan")

    print(
        "| batch | precision | baseline img/s | floor img/s | ours img/s | ours/baseline | ours/floor | "
        "peak memory ours MB (PSS, all processes) | overlay MB ours / baseline |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        base = median("baseline", "fp32", batch)
        for precision in args.precisions.split(","):
            floor, ours = median("floor", precision, batch), median("ours", precision, batch)
            rss = median("ours", precision, batch, "tree_peak_rss_mb")
            sizes = [median(mode, p, batch, "overlay_mb") for mode, p in (("ours", precision), ("baseline", "fp32"))]
            print(
                f"| {batch} | {precision} | {base:.2f} | {floor:.2f} | {ours:.2f} | {ours / base:.2f} | "
                f"{ours / floor:.2f} | {rss:.0f} | {sizes[0]:.2f} / {sizes[1]:.2f} |"
            )
    ours_rows = [r for r in rows if r["mode"] == "ours" and r.get("stage_shares") and not r.get("memory_check")]
    if ours_rows:
        print("\nWhere ours waits (share of the main loop's wall clock; the largest is the bottleneck):")
        print("| batch | precision | decode | compute | render | encode |")
        print("|---|---|---|---|---|---|")
        for r in ours_rows:
            shares = r["stage_shares"]
            cells = " | ".join(f"{shares.get(k, 0) * 100:.0f}%" for k in ("decode", "compute", "render", "encode"))
            print(f"| {r['batch_size']} | {r['precision']} | {cells} |")
    checks = [r for r in rows if r.get("memory_check")]
    if checks:
        small = median("ours", "fp32", 16, "tree_peak_rss_mb")
        big = checks[0]["tree_peak_rss_mb"]
        print(
            f"\nmemory: ours fp32 peak RSS {small:.0f} MB at {args.images} images, {big:.0f} MB at "
            f"{checks[0]['images']} images ({(big / small - 1) * 100:+.1f}%)"
        )


if __name__ == "__main__":
    main()
