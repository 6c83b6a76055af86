"""The one-call GPU check (issue 15): the Python driver that benchmarks/gpu_check.sh runs section by section.

    python benchmarks/gpu_check.py --section preflight|parity|compute|e2e --budget 110 [--cpu-dry-run]

Every section appends its rows to $OUT/gpu_check.json (rewritten atomically after every row: a section
killed at its time limit leaves every finished row) and its table to $OUT/gpu_check.md (ready to paste
into benchmarks/RESULTS.md under the heading that preflight writes), and prints them.

- preflight: versions, TF32 flags, nvidia-smi, cores, /dev/shm, ulimit -n, the packages the check needs;
- parity: `gradcam run` through the CLI, CPU fp32 vs GPU fp32 (TF32 off) on mixed images (photos,
  12 MP, EXIF-rotated JPEGs, RGBA PNGs; letterbox and center_crop; top-k 3); GPU bf16/fp16/tf32 vs
  fp32; rerun and batch-size byte-equality; determinism warnings;
- compute: engine agreement (ours vs pytorch-grad-cam, CAM methods in bf16/fp16 vs fp32), then the
  forward-only floor, our explain and a pytorch-grad-cam loop at batch 32..256, fp32 and bf16, timed with
  CUDA events after warm-up, with peak GPU memory;
- e2e: each run in a fresh process (benchmarks/throughput.py's modes): ours, the pytorch-grad-cam script
  and the decode + forward floor at 640x480 and 12 MP, fp32 and bf16, with steady-state img/s, the
  stage breakdown, GPU and CPU utilisation sampled while it runs, peak GPU memory and PSS; then the
  issue's targets.

--cpu-dry-run runs every GPU row on the CPU with tiny sizes (figures meaningless, every code path runs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import importlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

import throughput as tp  # noqa: E402  (benchmarks/throughput.py: data, model, the three modes, memory)

SECTIONS = ("preflight", "parity", "compute", "e2e")
LARGE_12MP = (4032, 3024)


@dataclass(frozen=True)
class Plan:
    """Sizes of one check: the GPU run's, or the CPU dry run's (tiny, same code paths)."""

    device: str  # where the "GPU" rows run
    dry: bool
    input_side: int  # model input (preprocess.size) of our runs; the floor and the reference use 224
    photo: tuple[int, int]  # parity: ordinary photos
    large: tuple[int, int]  # parity and e2e: the camera-size images
    rgba: tuple[int, int]
    per_half: dict[str, int]  # parity images per half (letterbox, center_crop) by kind
    parity_batch: int
    parity_batch_alt: int
    batches: tuple[int, ...]  # compute
    warmup: int
    timed_images: int  # compute: at least this many images per timed measurement ...
    min_iters: int  # ... and at least this many iterations
    agree_images: int
    small_count: int  # e2e at 640x480 (dry run: 64x48)
    small_size: tuple[int, int]
    large_count: int
    baseline_small: int  # the pytorch-grad-cam script runs on a subset: it is ~30x slower
    baseline_large: int
    distinct_small: int  # distinct generated images, hard-linked up to the counts
    distinct_large: int
    batch_small: int
    batch_large: int
    run_cap: int  # seconds one fresh process may take at most


GPU_PLAN = Plan(
    device="cuda",
    dry=False,
    input_side=224,
    photo=(640, 480),
    large=LARGE_12MP,
    rgba=(500, 375),
    per_half={"photo": 20, "large": 4, "exif": 4, "rgba": 4},
    parity_batch=16,
    parity_batch_alt=5,
    batches=(32, 64, 128, 256),
    warmup=3,
    timed_images=1024,
    min_iters=5,
    agree_images=32,
    small_count=4096,
    small_size=(640, 480),
    large_count=96,
    baseline_small=512,
    baseline_large=12,
    distinct_small=64,
    distinct_large=8,
    batch_small=64,
    batch_large=16,
    run_cap=75,
)
DRY_PLAN = Plan(
    device="cpu",
    dry=True,
    input_side=96,
    photo=(64, 48),
    large=(640, 480),
    rgba=(60, 40),
    per_half={"photo": 2, "large": 1, "exif": 1, "rgba": 1},
    parity_batch=4,
    parity_batch_alt=3,
    batches=(2, 4),
    warmup=1,
    timed_images=2,
    min_iters=1,
    agree_images=4,
    small_count=8,
    small_size=(64, 48),
    large_count=2,
    baseline_small=8,
    baseline_large=2,
    distinct_small=4,
    distinct_large=2,
    batch_small=4,
    batch_large=2,
    run_cap=150,  # a loaded 2-core machine: one tiny run mostly imports torch, and that took 71 s once
)

# ---------------------------------------------------------------- report: JSON rows and Markdown tables
PREFLIGHT_HEADER = "| what | found |"
PARITY_COLUMNS = [
    "check",
    "resize",
    "images",
    "top-1 same",
    "top-3 same",
    "heatmaps byte-equal",
    "pixels differing",
    "within 1 grey level",
    "max diff",
    "Pearson min",
    "target",
    "verdict",
]
AGREE_COLUMNS = ["check", "maps", "same class", "Pearson min", "Pearson mean", "target", "verdict"]
COMPUTE_COLUMNS = ["mode", "precision", "batch", "img/s", "ms/batch", "peak GPU MB", "vs floor", "TF32", "timer"]
E2E_COLUMNS = [
    "run",
    "size",
    "images",
    "precision",
    "batch",
    "img/s (wall)",
    "img/s steady",
    "start-up s",
    "decode/compute/render/encode",
    "GPU util mean (max)",
    "CPU busy (cores)",
    "peak GPU MB",
    "peak MB (PSS)",
    "memory 2nd/1st half",
]
TARGET_COLUMNS = ["target", "measured", "verdict"]


class Report:
    """$OUT/gpu_check.json ({"meta", "rows"}, rewritten atomically per row) and $OUT/gpu_check.md (appended)."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.json_path = out / "gpu_check.json"
        self.md_path = out / "gpu_check.md"

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.json_path.read_text())
        except (OSError, ValueError):
            return {"meta": {}, "rows": []}

    def _save(self, data: dict[str, Any]) -> None:
        tmp = self.json_path.with_name(f".{self.json_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str, allow_nan=True))
        os.replace(tmp, self.json_path)

    def meta(self, **values: Any) -> None:
        data = self._load()
        data["meta"].update(values)
        self._save(data)

    def add(self, row: dict[str, Any], cells: list[str] | None = None) -> None:
        data = self._load()
        data["rows"].append(row)
        self._save(data)
        print("row " + json.dumps(row, default=str), flush=True)
        if cells is not None:
            self.md("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")

    def md(self, *lines: str) -> None:
        with open(self.md_path, "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)

    def table(self, title: str, columns: list[str], note: str = "") -> None:
        self.md(
            "", title, *(["", note] if note else []), "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)
        )


def fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value}{suffix}"


@dataclass
class Context:
    plan: Plan
    report: Report
    out: Path
    data: Path
    deadline: float

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def weights(self) -> Path:
        self.data.mkdir(parents=True, exist_ok=True)
        return tp.make_model(self.data / "resnet50-random.pt")


class OutOfTime(Exception):
    """The section's budget is spent: the row is skipped, not failed."""


NO_TIME = "skipped: no time left in the section"


@contextlib.contextmanager
def guarded(ctx: Context, section: str, label: str, columns: int) -> Iterator[None]:
    """A row that raises becomes an error row (JSON and Markdown); the section goes on."""
    try:
        yield
    except OutOfTime:
        cells = [label, *["-"] * (columns - 2), NO_TIME]
        ctx.report.add({"section": section, "check": label, "skipped": NO_TIME}, cells)
    except Exception as error:  # noqa: BLE001 - a benchmark row must not stop the section
        message = f"{type(error).__name__}: {error}".replace("\n", " ")[:300]
        cells = [label, *["-"] * (columns - 2), f"error: {message}"]
        ctx.report.add({"section": section, "check": label, "error": message}, cells)


# ---------------------------------------------------------------- child processes (killed as a group)
RUNNING: list[subprocess.Popen] = []
STOPPING = threading.Event()  # set by SIGTERM: no new child starts (the parity's CPU lane runs in a thread)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _on_term(signum: int, frame: object) -> None:
    """timeout(1) ended the section: take the running child's process group (workers too) along."""
    STOPPING.set()
    for proc in list(RUNNING):
        _kill_group(proc)
    raise SystemExit(128 + signum)


def run_group(command: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    """Run `command` in its own process group; at `timeout` kill the whole group. rc 124 = timed out."""
    start = time.perf_counter()
    if STOPPING.is_set():
        return 143, "", "not started: the section is being stopped", 0.0
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    RUNNING.append(proc)
    if STOPPING.is_set():  # SIGTERM came between the check and the start
        _kill_group(proc)
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout))
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        rc = 124
    finally:
        RUNNING.remove(proc)
        _kill_group(proc)  # workers a finished run left behind
    return rc, out, err, time.perf_counter() - start


# ---------------------------------------------------------------- torch helpers
def tf32_state() -> dict[str, Any]:
    """TF32 flags, legacy and new API; a read that torch refuses (a mix of both APIs) is reported as such."""
    import torch

    getters: dict[str, Callable[[], Any]] = {
        "matmul.allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision,
        "matmul.fp32_precision": lambda: torch.backends.cuda.matmul.fp32_precision,
        "cudnn.conv.fp32_precision": lambda: torch.backends.cudnn.conv.fp32_precision,
    }
    state: dict[str, Any] = {}
    for name, getter in getters.items():
        try:
            state[name] = getter()
        except Exception as error:  # noqa: BLE001
            state[name] = f"unreadable ({type(error).__name__})"
    return state


def tf32_short(state: dict[str, Any]) -> str:
    return f"matmul {state.get('matmul.allow_tf32')}, cudnn {state.get('cudnn.allow_tf32')}"


def set_tf32(on: bool) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, warmup: int, iters: int) -> tuple[float, str]:
    """Seconds per call after `warmup` calls: CUDA events on a GPU, perf_counter on the CPU."""
    import torch

    for _ in range(warmup):
        fn()
    sync(device)
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / iters, "CUDA events"
    began = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - began) / iters, "perf_counter (CPU)"


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def config_accepts(precision: str) -> bool:
    """Whether runtime.precision takes this value here (another branch adds tf32)."""
    from gradcam_cli.config import parse_config
    from gradcam_cli.errors import GradcamError

    data = {"model": {"torchvision": "resnet50", "labels": "none"}, "runtime": {"precision": precision}}
    try:
        parse_config(data, HERE)
    except (GradcamError, ValueError):
        return False
    return True


def prepared(ctx: Context, precision: str, method: str = "gradcam") -> Any:
    """Our model, engine and targets as `gradcam run` builds them (BatchNorm folded, channels_last)."""
    from gradcam_cli.config import parse_config
    from gradcam_cli.runner.prepare import prepare

    side = ctx.plan.input_side
    data = {
        "model": {"torchvision": "resnet50", "weights": str(ctx.weights), "labels": "none", "target_layer": "layer4"},
        "preprocess": {"size": [side, side]},
        "cam": {"method": method},
        "runtime": {"device": ctx.plan.device, "precision": precision},
    }
    return prepare(parse_config(data, HERE))


def pearson(x: Any, y: Any) -> float:
    """Pearson of two maps; two constant maps agree when equal, one constant map does not."""
    import numpy as np

    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    scale = math.sqrt(float(a @ a) * float(b @ b))
    if scale < 1e-12:
        return 1.0 if np.allclose(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)) else 0.0
    return float(a @ b) / scale


# ---------------------------------------------------------------- data: real JPEGs, generated fast
def _make_one(job: tuple[str, int, tuple[int, int]]) -> str:
    folder, seed, size = job
    tp.make_images(Path(folder), 1, seed=seed, size=size)
    return str(Path(folder) / "img_00000.jpg")


def distinct_images(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[Path]:
    """`count` different photo-like JPEGs (throughput.make_images), generated in parallel processes."""
    jobs = [(str(folder / f"src{seed + i:04d}"), seed + i, size) for i in range(count)]
    workers = max(1, min(count, (os.cpu_count() or 2)))
    if workers == 1 or count * size[0] * size[1] < 4_000_000:
        return [Path(_make_one(job)) for job in jobs]
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        return [Path(path) for path in pool.map(_make_one, jobs)]


def replicate(sources: list[Path], dest: Path, total: int, prefix: str) -> Path:
    """`total` files in `dest`, hard links to `sources` in turn (copies where links fail): decode is measured,
    so the files must be real JPEGs, but generating 4,096 distinct ones would take longer than the check."""
    if dest.exists() and len(list(dest.glob("*.jpg"))) == total:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for index in range(total):
        source, target = sources[index % len(sources)], dest / f"{prefix}_{index:05d}.jpg"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    return dest


def parity_images(ctx: Context) -> dict[str, Path]:
    """Two halves (letterbox, center_crop) of mixed images: photos, camera size, EXIF-rotated, RGBA PNG."""
    import numpy as np
    from PIL import Image

    plan = ctx.plan
    root = ctx.data / f"parity-{plan.photo[0]}x{plan.photo[1]}-{sum(plan.per_half.values())}"
    halves = {"letterbox": root / "letterbox", "center_crop": root / "center_crop"}
    marker = root / "done.json"
    if marker.exists():
        return halves
    shutil.rmtree(root, ignore_errors=True)
    n = plan.per_half
    photos = sorted(tp.make_images(root / "src" / "photos", 2 * n["photo"], seed=11, size=plan.photo).glob("*.jpg"))
    large = distinct_images(root / "src" / "large", 2 * n["large"], plan.large, seed=100)
    exif_src = sorted(tp.make_images(root / "src" / "exif", 2 * n["exif"], seed=12, size=plan.photo).glob("*.jpg"))
    rgba_src = sorted(tp.make_images(root / "src" / "rgba", 2 * n["rgba"], seed=13, size=plan.rgba).glob("*.jpg"))
    for folder in halves.values():
        folder.mkdir(parents=True)
    for half, folder in enumerate(halves.values()):
        for i, path in enumerate(photos[half::2]):
            os.link(path, folder / f"photo_{i:02d}.jpg")
        for i, path in enumerate(large[half::2]):
            os.link(path, folder / f"large_{i:02d}.jpg")
        for i, path in enumerate(exif_src[half::2]):
            image = Image.open(path)
            exif = image.getexif()
            exif[0x0112] = (6, 3, 8, 2)[i % 4]  # rotated 90 cw, 180, 90 ccw, mirrored
            image.save(folder / f"exif_{i:02d}.jpg", quality=90, exif=exif)
        for i, path in enumerate(rgba_src[half::2]):
            rgb = np.asarray(Image.open(path).convert("RGB"))
            h, w = rgb.shape[:2]
            alpha = np.clip(np.add.outer(np.linspace(0, 255, h), np.linspace(0, 255, w)) / 2, 0, 255)
            alpha[: h // 3, : w // 3] = 0  # a fully transparent corner
            Image.fromarray(np.dstack([rgb, alpha.astype(np.uint8)]), "RGBA").save(folder / f"rgba_{i:02d}.png")
    marker.write_text(json.dumps(n))
    return halves


# ---------------------------------------------------------------- preflight
NEEDED = {
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "PIL": "pillow",
    "cv2": "opencv-python-headless",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic-core",
    "annotated_types": "annotated-types",
    "typing_inspection": "typing-inspection",
    "typer": "typer",
    "yaml": "pyyaml",
    "safetensors": "safetensors",
    "tqdm": "tqdm",
    "pytorch_grad_cam": "grad-cam",
    "ttach": "ttach",
}
OPTIONAL = {"pynvml": "nvidia-ml-py"}  # GPU utilisation; else `nvidia-smi -lms 200`


def package_versions() -> tuple[dict[str, str], list[str]]:
    from importlib import metadata

    versions, missing = {}, []
    for module, dist in {**NEEDED, **OPTIONAL}.items():
        try:
            imported = importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - report, do not stop
            if module in NEEDED:
                missing.append(f"{dist} ({type(error).__name__})")
            continue
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = str(getattr(imported, "__version__", "?"))
    return versions, missing


def nvidia_smi(*args: str) -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def section_preflight(ctx: Context) -> None:
    import torch

    plan = ctx.plan
    versions, missing = package_versions()
    query = nvidia_smi(
        "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"
    )
    full = nvidia_smi()
    if full:
        print(full, flush=True)
    gpu_name = query.splitlines()[0].split(",")[0].strip() if query else None
    if gpu_name is None and torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name(0)
    try:
        shm = shutil.disk_usage("/dev/shm")
        shm_text = f"{shm.total / 2**30:.1f} GiB ({shm.free / 2**30:.1f} free)"
    except OSError:
        shm_text = "missing"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        memory = None
    smaps = Path("/proc/self/smaps_rollup")
    cuda = torch.cuda.is_available()
    row = {
        "section": "preflight",
        "dry_run": plan.dry,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": gpu_name,
        "nvidia_smi": query,
        "cuda_available": cuda,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "machine": tp.machine(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory,
        "dev_shm": shm_text,
        "ulimit_n": [soft, hard],
        "tf32_at_start": tf32_state(),
        "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE"),
        "tf32_precision_accepted": config_accepts("tf32"),
        "memory_measure": "PSS" if smaps.exists() else "RSS (no /proc/*/smaps_rollup)",
        "packages": versions,
        "missing": missing,
        "verdict": "ok" if not missing and (cuda or plan.dry) else "missing: " + ", ".join(missing or ["CUDA"]),
    }
    ctx.report.meta(device=gpu_name, dry_run=plan.dry, started=row["date"])
    if plan.dry:
        heading = f"## GPU (measured on {platform.machine()} CPU: `--cpu-dry-run`, figures meaningless)"
    else:
        heading = f"## GPU (measured on {gpu_name or 'no GPU found'})"
    ctx.report.md(
        heading,
        "",
        f"`bash benchmarks/gpu_check.sh`{' --cpu-dry-run' if plan.dry else ''}, {row['date']}: "
        f"{'all packages present' if not missing else 'MISSING ' + ', '.join(missing)}.",
    )
    ctx.report.table("### Preflight", ["what", "found"])
    cells = {
        "GPU": f"{query or '-'}; capability {row['capability'] or '-'}",
        "torch / CUDA / cuDNN / Python": f"{row['torch']} / {row['torch_cuda']} / {row['cudnn']} / {row['python']}",
        "CPU": f"{row['machine']}; {row['usable_cores']} usable cores; {fmt(memory)} GiB",
        "TF32 at start": ", ".join(f"{k} {v}" for k, v in row["tf32_at_start"].items())
        + f"; NVIDIA_TF32_OVERRIDE {row['NVIDIA_TF32_OVERRIDE']}; runtime.precision tf32 "
        + ("accepted" if row["tf32_precision_accepted"] else "not accepted"),
        "/dev/shm, ulimit -n, memory measure": f"{shm_text}; {soft} (hard {hard}); {row['memory_measure']}",
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }
    ctx.report.add(row)
    for what, found in cells.items():
        ctx.report.md(f"| {what} | {found.replace('|', '/')} |")


# ---------------------------------------------------------------- 1. parity through the CLI
TF32_OFF_LAUNCH = (
    "import sys, torch; torch.backends.cuda.matmul.allow_tf32 = False; torch.backends.cudnn.allow_tf32 = False; "
    "sys.argv = ['gradcam', *sys.argv[1:]]; from gradcam_cli.cli import main; main()"
)


def write_config(ctx: Context, resize: str, device_decode: bool = False) -> Path:
    data: dict[str, Any] = {
        "model": {"torchvision": "resnet50", "weights": str(ctx.weights), "labels": "none", "target_layer": "layer4"},
        "preprocess": {"resize": resize, "size": [ctx.plan.input_side, ctx.plan.input_side]},
    }
    if device_decode:  # nvJPEG decode, model input and JPEG overlays on the GPU (runner/device_decode.py)
        data["preprocess"]["device_decode"] = True
    if ctx.plan.dry:  # two runs side by side on a small CPU: one torch thread each, or OpenMP crawls
        data["runtime"] = {"threads": 1}
    path = ctx.data / f"config-{resize}{'-device-decode' if device_decode else ''}.yaml"
    path.write_text(json.dumps(data, indent=2))  # JSON is YAML
    return path


def cli_run(
    ctx: Context, images: Path, out: Path, config: Path, device: str, precision: str, batch: int, tf32_off: bool
) -> dict[str, Any]:
    """`gradcam run` through the CLI in a fresh process; TF32 off: the CLI's main() after turning it off (and
    NVIDIA_TF32_OVERRIDE=0, which cuBLAS and cuDNN honour), so fp32 means fp32 whatever the defaults."""
    args = ["run", "-c", str(config), "-i", str(images), "-o", str(out), "--device", device]
    args += ["--precision", precision, "--top-k", "3", "--batch-size", str(batch), "-q"]
    env = dict(os.environ)
    if tf32_off:
        command = [sys.executable, "-c", TF32_OFF_LAUNCH, *args]
        env["NVIDIA_TF32_OVERRIDE"] = "0"
    else:
        command = [sys.executable, "-m", "gradcam_cli.cli", *args]
    shutil.rmtree(out, ignore_errors=True)
    timeout = min(ctx.plan.run_cap, ctx.left())
    if timeout < 5:
        return {"rc": None, "error": NO_TIME, "out_of_time": True}
    rc, _, err, seconds = run_group(command, timeout, env)
    warnings = sorted({line.strip()[:200] for line in err.splitlines() if "determinis" in line.lower()})
    result = {"rc": rc, "seconds": round(seconds, 1), "determinism_warnings": warnings}
    if rc not in (0,):
        result["error"] = f"gradcam run exit {rc}: " + " ".join(err.strip().splitlines()[-3:])[:300]
    print(f"  ran gradcam {device} {precision} b{batch} -> {out.name}: rc {rc}, {seconds:.1f} s", flush=True)
    return result


def _records(run_dir: Path) -> dict[str, dict[str, Any]]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {record["path"]: record for record in manifest["images"] if record["status"] == "ok"}


def compare_runs(a_dir: Path, b_dir: Path, kind: str = "heatmap") -> dict[str, Any]:
    """Heatmap PNGs (or, kind "overlay", the overlays: JPEGs encoded on the device or by the render workers)
    of two output folders, file by file (the manifest gives the paths), matched by image and explained class."""
    import numpy as np
    from PIL import Image

    a, b = _records(a_dir), _records(b_dir)
    common = sorted(set(a) & set(b))
    stats: dict[str, Any] = dict(images=len(common), only_one_side=len(set(a) ^ set(b)), top1_same=0, topk_same=0)
    stats.update(maps=0, byte_equal=0, pixels=0, differing=0, within1=0, max_diff=0)
    correlations: list[float] = []
    for path in common:
        cams_a, cams_b = a[path]["cams"], b[path]["cams"]
        classes_a, classes_b = [c["class_index"] for c in cams_a], [c["class_index"] for c in cams_b]
        stats["top1_same"] += classes_a[:1] == classes_b[:1]
        stats["topk_same"] += sorted(classes_a) == sorted(classes_b)
        by_class = {c["class_index"]: c for c in cams_b}
        for cam in cams_a:
            other = by_class.get(cam["class_index"])
            if other is None or not cam[kind] or not other[kind]:
                continue
            file_a, file_b = a_dir / cam[kind], b_dir / other[kind]
            stats["maps"] += 1
            if file_a.read_bytes() == file_b.read_bytes():
                width, height = Image.open(file_a).size
                stats["byte_equal"] += 1
                stats["pixels"] += width * height
                stats["within1"] += width * height
                correlations.append(1.0)
                continue
            x = np.asarray(Image.open(file_a), dtype=np.int16)
            y = np.asarray(Image.open(file_b), dtype=np.int16)
            diff = np.abs(x - y)
            stats["pixels"] += diff.size
            stats["differing"] += int(np.count_nonzero(diff))
            stats["within1"] += int(np.count_nonzero(diff <= 1))
            stats["max_diff"] = max(stats["max_diff"], int(diff.max()))
            correlations.append(pearson(x, y))
    pixels = stats["pixels"] or 1
    stats["differing_share"] = stats["differing"] / pixels
    stats["within1_share"] = stats["within1"] / pixels
    stats["pearson_min"] = min(correlations) if correlations else None
    stats["pearson_mean"] = sum(correlations) / len(correlations) if correlations else None
    return stats


def parity_row(ctx: Context, check: str, resize: str, stats: dict[str, Any], target: str, verdict: str) -> None:
    s = stats
    n = s["images"]
    cells = [
        check,
        resize,
        str(n),
        f"{s['top1_same']}/{n}",
        f"{s['topk_same']}/{n}",
        f"{s['byte_equal']}/{s['maps']}",
        f"{s['differing_share'] * 100:.3f} %",
        f"{s['within1_share'] * 100:.3f} %",
        str(s["max_diff"]),
        fmt(s["pearson_min"], 5),
        target,
        verdict,
    ]
    ctx.report.add(
        {"section": "parity", "check": check, "resize": resize, **s, "target": target, "verdict": verdict}, cells
    )


def section_parity(ctx: Context) -> None:
    plan = ctx.plan
    images = parity_images(ctx)
    gpu = plan.device
    configs = {resize: write_config(ctx, resize) for resize in images}
    counts = {resize: len([p for p in folder.iterdir() if p.is_file()]) for resize, folder in images.items()}
    work = ctx.data / "parity-out"
    note = (
        f"`gradcam run` through the CLI, random-initialised resnet50 (layer4), top-k 3, {sum(counts.values())} "
        f"images in two halves (per half {plan.per_half['photo']} photos {plan.photo[0]}x{plan.photo[1]}, "
        f"{plan.per_half['large']} at {plan.large[0]}x{plan.large[1]}, {plan.per_half['exif']} EXIF-rotated "
        f"JPEGs, {plan.per_half['rgba']} RGBA PNGs): one half letterbox, the other center_crop. Heatmaps compared "
        "file by file at the original size. GPU fp32 runs with TF32 off (flags off before the CLI's main, "
        "NVIDIA_TF32_OVERRIDE=0)."
    )
    ctx.report.table("### 1. Parity through the CLI", PARITY_COLUMNS, note)
    runs: dict[str, dict[str, Any]] = {}
    pending: dict[str, concurrent.futures.Future] = {}
    # The CPU runs go in a thread beside the GPU runs (parity is not timed): one CPU run at a time.
    cpu_lane = concurrent.futures.ThreadPoolExecutor(1)

    def run(
        key: str, resize: str, device: str, precision: str, batch: int, tf32_off: bool, config: Path | None = None
    ) -> None:
        args = (ctx, images[resize], work / key, config or configs[resize], device, precision, batch, tf32_off)
        if device == "cpu" and key.startswith("cpu-") and not plan.dry:  # the dry run's "GPU" is these cores
            pending[key] = cpu_lane.submit(cli_run, *args)
        else:
            runs[key] = cli_run(*args)

    def check(
        label: str,
        resize: str,
        a: str,
        b: str,
        target: str,
        judge: Callable[[dict[str, Any]], bool],
        kind: str = "heatmap",
    ) -> None:
        for key in (a, b):
            if key in pending:
                runs[key] = pending.pop(key).result()
        with guarded(ctx, "parity", label, len(PARITY_COLUMNS)):
            if any(runs.get(k, {}).get("out_of_time") for k in (a, b)):
                raise OutOfTime
            failed = [runs[k]["error"] for k in (a, b) if k not in runs or runs[k].get("error")]
            if failed:
                raise RuntimeError(failed[0])
            stats = compare_runs(work / a, work / b, kind)
            ok = stats["images"] == counts[resize] and stats["maps"] > 0 and judge(stats)
            parity_row(ctx, label, resize, stats, target, "met" if ok else "NOT met")

    def same_top1_within1(s: dict[str, Any]) -> bool:
        return s["top1_same"] == s["images"] and s["within1_share"] >= 0.999

    def byte_equal(s: dict[str, Any]) -> bool:
        return s["byte_equal"] == s["maps"] and s["topk_same"] == s["images"]

    def within_one(s: dict[str, Any]) -> bool:
        return s["max_diff"] <= 1 and s["topk_same"] == s["images"]

    def correlated(s: dict[str, Any]) -> bool:
        return s["pearson_min"] is not None and s["pearson_min"] >= 0.99

    def skip(label: str, why: str) -> None:
        cells = [label, "-", *["-"] * (len(PARITY_COLUMNS) - 3), f"skipped: {why}"]
        ctx.report.add({"section": "parity", "check": label, "skipped": why}, cells)

    b, alt = plan.parity_batch, plan.parity_batch_alt
    parity_target = "same top-1; >= 99.9 % within 1 grey level"
    low = "Pearson >= 0.99 (top-1 shown)"
    try:
        for resize in ("letterbox", "center_crop"):
            run(f"cpu-{resize}", resize, "cpu", "fp32", b, tf32_off=False)
        for resize in ("letterbox", "center_crop"):
            run(f"gpu-{resize}", resize, gpu, "fp32", b, tf32_off=True)
            label = "CPU fp32 vs GPU fp32 (TF32 off)"
            check(label, resize, f"cpu-{resize}", f"gpu-{resize}", parity_target, same_top1_within1)
        run("gpu-bf16-letterbox", "letterbox", gpu, "bf16", b, tf32_off=False)
        check("GPU bf16 vs GPU fp32", "letterbox", "gpu-letterbox", "gpu-bf16-letterbox", low, correlated)
        run("gpu-rerun-letterbox", "letterbox", gpu, "fp32", b, tf32_off=True)
        check("GPU fp32 rerun", "letterbox", "gpu-letterbox", "gpu-rerun-letterbox", "byte-equal", byte_equal)
        device_decode = write_config(ctx, "letterbox", device_decode=True)
        run("gpu-devdec-letterbox", "letterbox", gpu, "fp32", b, tf32_off=True, config=device_decode)
        label, target = "GPU fp32 device_decode vs GPU fp32", "Pearson >= 0.99 (opt-in: nvJPEG + GPU resize)"
        check(label, "letterbox", "gpu-letterbox", "gpu-devdec-letterbox", target, correlated)
        label, target = "overlays: device_decode (nvJPEG) vs render workers", "Pearson >= 0.99 (JPEG q90 4:4:4)"
        check(label, "letterbox", "gpu-letterbox", "gpu-devdec-letterbox", target, correlated, kind="overlay")
        run("gpu-batch-letterbox", "letterbox", gpu, "fp32", alt, tf32_off=True)
        label, target = f"GPU fp32 batch {b} vs {alt}", "byte-equal hoped; max diff <= 1, same top-3"
        check(label, "letterbox", "gpu-letterbox", "gpu-batch-letterbox", target, within_one)
        if plan.dry:
            skip("GPU bf16 vs GPU fp32, center_crop", "CPU dry run")
            skip("CPU fp32 vs GPU fp32 (the tool's TF32 flags)", "CPU dry run")
            skip("GPU fp16 vs GPU fp32", "CPU dry run (fp16 needs a GPU)")
        else:
            run("gpu-bf16-center_crop", "center_crop", gpu, "bf16", b, tf32_off=False)
            check("GPU bf16 vs GPU fp32", "center_crop", "gpu-center_crop", "gpu-bf16-center_crop", low, correlated)
            run("gpu-default-letterbox", "letterbox", gpu, "fp32", b, tf32_off=False)
            label = "CPU fp32 vs GPU fp32 (the tool's TF32 flags)"
            check(label, "letterbox", "cpu-letterbox", "gpu-default-letterbox", parity_target, same_top1_within1)
            run("gpu-fp16-letterbox", "letterbox", gpu, "fp16", b, tf32_off=False)
            check("GPU fp16 vs GPU fp32", "letterbox", "gpu-letterbox", "gpu-fp16-letterbox", low, correlated)
        if config_accepts("tf32"):
            run("gpu-tf32-letterbox", "letterbox", gpu, "tf32", b, tf32_off=False)
            check("GPU tf32 vs GPU fp32", "letterbox", "gpu-letterbox", "gpu-tf32-letterbox", low, correlated)
        else:
            skip("GPU tf32 vs GPU fp32", "runtime.precision has no tf32 here")
    finally:
        cpu_lane.shutdown(wait=True, cancel_futures=True)
    gpu_runs = {k: v for k, v in runs.items() if not k.startswith("cpu-") and v.get("rc") == 0}
    seen = sorted({w for v in gpu_runs.values() for w in v.get("determinism_warnings", [])})
    label = "determinism warnings (stderr of the GPU runs)"
    if not gpu_runs:
        verdict = "not measured: no GPU run finished"
    else:
        verdict = "met" if not seen else "NOT met: " + "; ".join(seen)[:400]
    cells = [label, "-", f"{len(gpu_runs)} runs", *["-"] * (len(PARITY_COLUMNS) - 5), "none", verdict]
    row = {"section": "parity", "check": label, "warnings": seen, "runs": runs, "finished": len(gpu_runs)}
    ctx.report.add(row | {"verdict": verdict}, cells)


# ---------------------------------------------------------------- 2. GPU compute
def real_batch(ctx: Context, count: int) -> Any:
    """Normalised model inputs from photo-like JPEGs (random noise is a poor stand-in for CAM agreement)."""
    import numpy as np
    import torch
    from PIL import Image

    side = ctx.plan.input_side
    folder = tp.make_images(ctx.data / f"agree-{count}", count, seed=3, size=ctx.plan.photo)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    tensors = []
    for path in sorted(folder.glob("*.jpg")):
        array = np.array(Image.open(path).convert("RGB").resize((side, side), Image.Resampling.BILINEAR))
        tensors.append((torch.from_numpy(array).permute(2, 0, 1).float() / 255 - mean) / std)
    return torch.stack(tensors).to(ctx.plan.device).contiguous(memory_format=torch.channels_last)


def agreement_row(ctx: Context, check: str, a: Any, b: Any, classes_a: Any, classes_b: Any) -> None:
    same = [i for i in range(len(a)) if int(classes_a[i]) == int(classes_b[i])]
    values = [pearson(a[i].float().cpu().numpy(), b[i].float().cpu().numpy()) for i in same]
    low = min(values) if values else None
    cells = [
        check,
        str(len(a)),
        f"{len(same)}/{len(a)}",
        fmt(low, 5),
        fmt(sum(values) / len(values), 5) if values else "-",
    ]
    verdict = "met" if low is not None and low >= 0.99 else "NOT met"
    cells += ["Pearson >= 0.99", verdict]
    row = {"section": "compute", "part": "agreement", "check": check, "maps": len(a), "same_class": len(same)}
    ctx.report.add(row | {"pearson_min": low, "verdict": verdict}, cells)


def section_compute(ctx: Context) -> None:
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from gradcam_cli.engine import METHODS, CamEngine, TargetSpec

    plan, device = ctx.plan, ctx.plan.device
    side = plan.input_side
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as `gradcam run` does before cuBLAS starts
    if plan.dry:  # on a small shared CPU, OpenMP threads that wait on each other crawl when others load it
        torch.set_num_threads(1)
    ctx.report.table(
        "### 2a. Engine agreement (one batch of photo-like images)",
        AGREE_COLUMNS,
        f"{plan.agree_images} images at {side}x{side}; maps of the same top-1 class compared (Pearson per map).",
    )
    x = real_batch(ctx, plan.agree_images)
    reference: dict[str, Any] = {}
    with guarded(ctx, "compute", "ours vs pytorch-grad-cam (fp32)", len(AGREE_COLUMNS)):
        set_tf32(False)
        ours = prepared(ctx, "fp32")
        with ours.engine as engine:
            result = engine.explain(x, ours.targets)
        classes = result.class_indices[:, 0].tolist()
        model = tp.load_resnet50(ctx.weights).to(device)
        with GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
            theirs = torch.from_numpy(cam(input_tensor=x.float(), targets=[ClassifierOutputTarget(c) for c in classes]))
        agreement_row(ctx, "ours vs pytorch-grad-cam (fp32)", result.cams[:, 0], theirs, classes, classes)
        reference = {"engine": ours.engine}
        del model
    low_precisions = ["bf16", "fp16"] if device.startswith("cuda") else ["bf16"]

    def explain(method: str, precision: str) -> Any:
        """The prepared fp32 model and layers, with another CAM method and autocast precision."""
        base = reference["engine"]
        engine = CamEngine(
            base.model, base.target_layers, METHODS[method], base.score_fn, precision=precision,
            to_spatial=base.adapters, calls=base.calls,
        )  # fmt: skip
        with engine:
            return engine.explain(x, TargetSpec("top1"))

    for method in ("gradcam", "gradcam++", "layercam", "eigencam"):
        fp32: list[Any] = []
        for precision in low_precisions:
            label = f"{method}: {precision} vs fp32"
            with guarded(ctx, "compute", label, len(AGREE_COLUMNS)):
                if not fp32:
                    fp32.append(explain(method, "fp32"))
                a, b = fp32[0], explain(method, precision)
                agreement_row(ctx, label, a.cams[:, 0], b.cams[:, 0], a.class_indices[:, 0], b.class_indices[:, 0])
    reference.clear()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    ctx.report.table(
        "### 2b. GPU compute (model and CAM only, inputs already on the device)",
        COMPUTE_COLUMNS,
        f"resnet50 at {side}x{side}: floor = forward-only (inference_mode, channels_last, no BatchNorm folding); "
        "ours = CamEngine.explain as `gradcam run` prepares it (top-1); pytorch-grad-cam = GradCAM(layer4[-1]) "
        f"called on the batch (its own post-processing included). {plan.warmup} warm-up call(s), then at least "
        f"{plan.min_iters} timed calls and {plan.timed_images} images. fp32 rows with TF32 off for the floor and "
        "the reference; ours with the flags the tool sets.",
    )
    precisions = ["fp32", "bf16"] + (["tf32"] if config_accepts("tf32") else [])
    floor_rates: dict[tuple[str, int], float] = {}
    model = tp.load_resnet50(ctx.weights).to(device).to(memory_format=torch.channels_last)
    inputs = {
        b: torch.randn(b, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
        for b in plan.batches
    }

    def row(mode: str, precision: str, batch: int, fn: Callable[[], Any]) -> None:
        with guarded(ctx, "compute", f"{mode} {precision} b{batch}", len(COMPUTE_COLUMNS)):
            if ctx.left() < 3:
                raise OutOfTime
            iters = max(plan.min_iters, math.ceil(plan.timed_images / batch))
            reset_peak(device)
            seconds, timer = timed(fn, device, plan.warmup, iters)
            rate = batch / seconds
            if mode == "floor":
                floor_rates[(precision, batch)] = rate
            floor = floor_rates.get((precision, batch))
            vs = rate / floor if floor and mode != "floor" else None
            flags = tf32_state()
            cells = [mode, precision, str(batch), fmt(rate), fmt(seconds * 1000, 2), fmt(peak_mb(device), 0)]
            cells += [fmt(vs, 2), tf32_short(flags), timer]
            ctx.report.add(
                {
                    "section": "compute",
                    "part": "timing",
                    "mode": mode,
                    "precision": precision,
                    "batch": batch,
                    "iters": iters,
                    "images_per_s": rate,
                    "ms_per_batch": seconds * 1000,
                    "peak_gpu_mb": peak_mb(device),
                    "vs_floor": vs,
                    "tf32": flags,
                    "deterministic": torch.are_deterministic_algorithms_enabled(),
                    "timer": timer,
                },
                cells,
            )

    for precision in precisions:
        # floor: plain torch defaults (no deterministic algorithms), TF32 only in the tf32 row
        torch.use_deterministic_algorithms(False)
        set_tf32(precision == "tf32")
        dtype = {"bf16": torch.bfloat16}.get(precision)
        for batch in plan.batches:

            def floor(batch: int = batch, dtype: Any = dtype) -> Any:
                with torch.inference_mode(), torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
                    return model(inputs[batch])

            row("floor", precision, batch, floor)
        with guarded(ctx, "compute", f"ours {precision}", len(COMPUTE_COLUMNS)):
            run = prepared(ctx, precision)  # the tool's own determinism and TF32 settings from here on
            with run.engine as engine:
                for batch in plan.batches:
                    row("ours", precision, batch, lambda b=batch, t=run.targets: engine.explain(inputs[b], t))
            run = None
        if precision == "fp32":
            torch.use_deterministic_algorithms(False)
            set_tf32(False)
            reference_model = tp.load_resnet50(ctx.weights).to(device)
            with GradCAM(model=reference_model, target_layers=[reference_model.layer4[-1]]) as cam:
                for batch in plan.batches:
                    row(
                        "pytorch-grad-cam",
                        "fp32",
                        batch,
                        lambda batch=batch: cam(input_tensor=inputs[batch], targets=None),
                    )
            del reference_model
    with guarded(ctx, "compute", "pytorch-grad-cam bf16", len(COMPUTE_COLUMNS)):
        reference_model = tp.load_resnet50(ctx.weights).to(device)
        batch = plan.batches[0]
        with GradCAM(model=reference_model, target_layers=[reference_model.layer4[-1]]) as cam:

            def autocast_reference() -> Any:
                with torch.autocast(device_type=device, dtype=torch.bfloat16):
                    return cam(input_tensor=inputs[batch], targets=None)

            try:
                autocast_reference()
            except Exception as error:  # noqa: BLE001 - the reference is known to fail under bf16 autocast
                message = f"fails under bf16 autocast: {type(error).__name__}: {error}".replace("\n", " ")[:200]
                cells = ["pytorch-grad-cam", "bf16", str(batch), *["-"] * (len(COMPUTE_COLUMNS) - 4), message]
                ctx.report.add(
                    {"section": "compute", "part": "timing", "mode": "pytorch-grad-cam", "fails": message}, cells
                )
            else:
                row("pytorch-grad-cam", "bf16", batch, autocast_reference)


# ---------------------------------------------------------------- 3. end to end, fresh processes
class GpuProbe:
    """GPU utilisation and memory in use: NVML when importable, else `nvidia-smi -lms 200` in the background."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.latest: tuple[float | None, float | None] = (None, None)
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
            self.kind = "nvml"
            return
        except Exception:  # noqa: BLE001 - NVML missing or not answering: try nvidia-smi
            pass
        try:
            self._smi = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "200",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            return
        self.kind = "nvidia-smi"
        threading.Thread(target=self._read_smi, daemon=True).start()

    def _read_smi(self) -> None:
        for line in self._smi.stdout:  # type: ignore[union-attr]
            with contextlib.suppress(ValueError, IndexError):
                util, used = line.split(",")[:2]
                self.latest = (float(util), float(used))

    def read(self) -> tuple[float | None, float | None]:
        if self.kind == "nvml":
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
                used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
                return float(util), float(used)
            except Exception:  # noqa: BLE001
                return None, None
        return self.latest

    def close(self) -> None:
        if self.kind == "nvidia-smi":
            self._smi.kill()


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def count_files(folder: Path) -> int:
    try:
        return sum(1 for entry in os.scandir(folder) if not entry.name.startswith("."))
    except OSError:
        return 0


class Sampler(tp.TreeRss):
    """throughput.TreeRss (peak PSS of the process tree) that also records, every 0.2 s, the files written,
    the CPU busy share of the whole machine, and the GPU's utilisation and memory in use."""

    def __init__(self, watch: Path, gpu: bool) -> None:
        super().__init__()
        self.watch = watch
        self.gpu = GpuProbe() if gpu else None
        self.series: list[tuple[float, int, float, float | None, float | None, float | None]] = []

    def _sample(self) -> None:
        before = cpu_times()
        while not self._stop.wait(0.2):
            files, pss = count_files(self.watch), tp.tree_rss_mb(os.getpid())
            now = cpu_times()
            busy = (now[0] - before[0]) / (now[1] - before[1]) if now[1] > before[1] else None
            before = now
            util, used = self.gpu.read() if self.gpu else (None, None)
            self.peak = max(self.peak, pss)
            self.series.append((time.perf_counter(), files, pss, busy, util, used))

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self.gpu:
            self.gpu.close()

    def summary(self, started: float, final: int) -> dict[str, Any]:
        """Start-up (to the first file), steady img/s (from 10 % to 90 % of the files), utilisation over that
        window, and memory growth (peak in the second half of the files vs the first)."""
        series = self.series
        if not series:
            return {}
        first = next((s for s in series if s[1] > 0), None)
        low = next((s for s in series if final and s[1] >= max(1, 0.1 * final)), None)
        high = next((s for s in series if final and s[1] >= 0.9 * final), None)
        steady = None
        if low and high and high[0] > low[0] and high[1] > low[1]:
            steady = (high[1] - low[1]) / (high[0] - low[0])
            window = [s for s in series if low[0] <= s[0] <= high[0]]
        else:
            window = series
        cores = os.cpu_count() or 1

        def mean(values: list[float | None]) -> float | None:
            present = [v for v in values if v is not None]
            return sum(present) / len(present) if present else None

        halves = [[s[2] for s in series if s[1] <= final / 2], [s[2] for s in series if s[1] > final / 2]]
        growth = max(halves[1]) / max(halves[0]) if final and all(halves) and max(halves[0]) > 0 else None
        busy = mean([s[3] for s in window])
        utils = [s[4] for s in window if s[4] is not None]
        used = [s[5] for s in series if s[5] is not None]
        return {
            "startup_s": first[0] - started if first else None,
            "steady_images_per_s": steady,
            "gpu_util_mean": mean(utils) if utils else None,
            "gpu_util_max": max(utils) if utils else None,
            "gpu_probe": self.gpu.kind if self.gpu else None,
            "gpu_mem_used_max_mb": max(used) if used else None,
            "cpu_busy_mean": busy,
            "cores_busy": busy * cores if busy is not None else None,
            "memory_growth": growth,
            "samples": len(series),
        }


def child(args: argparse.Namespace) -> None:
    """One end-to-end run in this fresh process: throughput.py's mode with the sampler around it."""
    # Library imports are a per-process constant, not throughput: loaded before the clock starts.
    import torch
    import torchvision  # noqa: F401

    if args.child == "baseline":
        import cv2  # noqa: F401
        import pytorch_grad_cam  # noqa: F401
    if args.child == "ours":
        import gradcam_cli.runner.run  # noqa: F401

        tp.OURS_OPTIONS.extend(args.ours_option or [])
    out = Path(tempfile.mkdtemp(prefix=f"gpu-check-{args.child}-"))
    images, weights = Path(args.images_dir), Path(args.weights)
    cuda = args.device.startswith("cuda")
    try:
        started = time.perf_counter()
        with Sampler(out / "o" / "heatmaps", cuda) as sampler:
            if args.child == "floor":
                result = tp.run_floor(
                    images, weights, out / "o", args.batch_size, args.device, args.precision, args.workers
                )
            else:
                mode = {"baseline": tp.run_baseline, "ours": tp.run_ours}[args.child]
                result = mode(images, weights, out / "o", args.batch_size, args.device, args.precision)
            sync(args.device)
        count, seconds = result if isinstance(result, tuple) else (result, time.perf_counter() - started)
        final = count_files(out / "o" / "heatmaps")
        row = {
            "mode": args.child,
            "images": count,
            "seconds": seconds,
            "images_per_s": count / seconds,
            "peak_rss_mb": sampler.peak,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "stage_shares": dict(tp.STAGE_SHARES),
            "tf32_at_end": tf32_state(),
            "heatmaps_written": final,
            **sampler.summary(started, final),
        }
        if args.child == "floor":  # no files: its own clock (from the first batch) is its steady rate
            row["steady_images_per_s"] = count / seconds
        print(json.dumps(row, default=str))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def e2e_images(ctx: Context) -> dict[str, Path]:
    plan = ctx.plan
    root = ctx.data / "e2e"
    small, large = plan.small_size, plan.large
    small_src = distinct_images(root / f"src-{small[0]}x{small[1]}", plan.distinct_small, small, seed=1000)
    large_src = distinct_images(root / f"src-{large[0]}x{large[1]}", plan.distinct_large, large, seed=2000)
    return {
        "small": replicate(small_src, root / f"small-{plan.small_count}", plan.small_count, "img"),
        "small-baseline": replicate(small_src, root / f"small-{plan.baseline_small}", plan.baseline_small, "img"),
        "large": replicate(large_src, root / f"large-{plan.large_count}", plan.large_count, "img"),
        "large-baseline": replicate(large_src, root / f"large-{plan.baseline_large}", plan.baseline_large, "img"),
    }


def section_e2e(ctx: Context) -> None:
    plan = ctx.plan
    cores = os.cpu_count() or 2
    floor_workers = max(2, cores - 1)
    began = time.perf_counter()
    images = e2e_images(ctx)
    print(f"  e2e images ready in {time.perf_counter() - began:.1f} s", flush=True)
    sizes = {"small": plan.small_size, "large": plan.large}
    ctx.report.table(
        "### 3. End to end (each run a fresh process)",
        E2E_COLUMNS,
        f"benchmarks/throughput.py's modes on generated photo-like JPEGs ({plan.distinct_small} and "
        f"{plan.distinct_large} distinct images, hard-linked up to the counts): ours = `gradcam run` (library call, "
        "heatmap PNG + JPEG overlay, records, manifest; auto core split), pytorch-grad-cam = the script a competent "
        f"user writes (2 decode workers; on a subset), floor = DataLoader with {floor_workers} decode workers + "
        "forward-only. Wall: from after the imports to the end (model load included); steady: from 10 % to 90 % of "
        "the heatmap files written; utilisation and CPU busy over that window (all cores of the machine); "
        "memory = PSS of the process tree, peak; 2nd/1st half = its peak while the second half of the files was "
        "written over the first half's.",
    )
    runs = [
        ("ours", "small", "fp32"),
        ("baseline", "small", "fp32"),
        ("floor", "small", "fp32"),
        ("ours", "large", "fp32"),
        ("ours-device-decode", "large", "fp32"),
        ("baseline", "large", "fp32"),
        ("floor", "large", "fp32"),
        ("ours", "small", "bf16"),
        ("floor", "small", "bf16"),
        ("ours", "large", "bf16"),
    ]
    dry_skip = {  # on the CPU these repeat a code path already run: the dry run stays short
        ("ours", "small", "bf16"),
        ("floor", "small", "bf16"),
        ("baseline", "large", "fp32"),
        ("floor", "large", "fp32"),
        ("ours", "large", "bf16"),
    }
    results: dict[tuple[str, str, str], dict[str, Any]] = {}
    for mode, size, precision in runs:
        label = {
            "ours": "ours",
            "ours-device-decode": "ours, preprocess.device_decode",
            "baseline": "pytorch-grad-cam script",
            "floor": "floor",
        }[mode]
        key = (mode, size, precision)
        folder = images[f"{size}-baseline" if mode == "baseline" else size]
        count = len(list(folder.glob("*.jpg")))
        batch = plan.batch_small if size == "small" else plan.batch_large
        size_text = f"{sizes[size][0]}x{sizes[size][1]}"
        if plan.dry and key in dry_skip:
            cells = [
                label,
                size_text,
                str(count),
                precision,
                str(batch),
                *["-"] * (len(E2E_COLUMNS) - 6),
                "skipped: dry run",
            ]
            ctx.report.add({"section": "e2e", "mode": mode, "size": size_text, "skipped": "CPU dry run"}, cells)
            continue
        with guarded(ctx, "e2e", f"{label} {size_text} {precision}", len(E2E_COLUMNS)):
            timeout = min(plan.run_cap * (2 if mode == "ours" and size == "small" else 1), ctx.left())
            if timeout < 10:
                raise OutOfTime
            child_mode = "ours" if mode.startswith("ours") else mode
            command = [
                sys.executable, __file__, "--child", child_mode, "--images-dir", str(folder),
                "--weights", str(ctx.weights), "--device", plan.device, "--precision", precision,
                "--batch-size", str(batch), "--workers", str(floor_workers),
            ]  # fmt: skip
            if plan.dry:
                command.append(f"--ours-option=preprocess.size={json.dumps([plan.input_side, plan.input_side])}")
            if mode == "ours-device-decode":
                command.append("--ours-option=preprocess.device_decode=true")
            rc, out, err, wall = run_group(command, timeout)
            if rc != 0:
                tail = " ".join(err.strip().splitlines()[-3:])[:300]
                raise RuntimeError(f"{'timed out' if rc == 124 else f'exit {rc}'} after {wall:.0f} s: {tail}")
            result = json.loads(out.strip().splitlines()[-1])
            results[key] = result
            shares = result.get("stage_shares") or {}
            stages = "/".join(
                f"{shares[k] * 100:.0f}" for k in ("decode", "compute", "render", "encode") if k in shares
            )
            util = result.get("gpu_util_mean")
            cells = [
                label,
                size_text,
                str(result["images"]),
                precision,
                str(batch),
                fmt(result["images_per_s"]),
                fmt(result.get("steady_images_per_s")),
                fmt(result.get("startup_s")),
                f"{stages} %" if stages else "-",
                f"{util:.0f} % ({result['gpu_util_max']:.0f} %)" if util is not None else "-",
                f"{result['cpu_busy_mean'] * 100:.0f} % ({result['cores_busy']:.1f})"
                if result.get("cpu_busy_mean")
                else "-",
                fmt(result.get("peak_gpu_mb"), 0),
                fmt(result.get("peak_rss_mb"), 0),
                fmt(result.get("memory_growth"), 2),
            ]
            ctx.report.add(
                {"section": "e2e", "run": label, "size": size_text, "precision": precision, "batch": batch, **result},
                cells,
            )
    targets(ctx, results)


def targets(ctx: Context, results: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    """The issue's end-to-end targets (H200, 16 cores), from the rows above; steady-state rates."""
    note = "(CPU dry run: figures meaningless)" if ctx.plan.dry else "steady-state rates of the rows above"
    ctx.report.table("### Targets (H200, 16 cores; resnet50 fp32, heatmap PNG + JPEG overlay)", TARGET_COLUMNS, note)

    def rate(key: tuple[str, str, str]) -> float | None:
        result = results.get(key)
        return (result.get("steady_images_per_s") or result.get("images_per_s")) if result else None

    ours, base, floor = (
        rate(("ours", "small", "fp32")),
        rate(("baseline", "small", "fp32")),
        rate(("floor", "small", "fp32")),
    )
    ours_large = rate(("ours", "large", "fp32"))
    device_large = rate(("ours-device-decode", "large", "fp32"))
    large = results.get(("ours", "large", "fp32")) or {}
    growth = large.get("memory_growth")
    rows = [
        ("640x480: >= 1,500 img/s end to end", ours, 1500.0, f"{fmt(ours)} img/s"),
        ("640x480: >= 10x the pytorch-grad-cam script", ours / base if ours and base else None, 10.0, None),
        ("640x480: >= 0.7 of the decode + forward floor", ours / floor if ours and floor else None, 0.7, None),
        ("12 MP: >= 40 img/s", ours_large, 40.0, f"{fmt(ours_large)} img/s"),
        ("12 MP with preprocess.device_decode: >= 40 img/s", device_large, 40.0, f"{fmt(device_large)} img/s"),
    ]
    for label, value, goal, text in rows:
        verdict = "not measured" if value is None else ("met" if value >= goal else "NOT met")
        measured = text or (f"{value:.2f}x" if value is not None else "-")
        ctx.report.add(
            {"section": "e2e", "target": label, "value": value, "goal": goal, "verdict": verdict},
            [label, measured, verdict],
        )
    label = "12 MP: bounded memory (peak PSS; 2nd-half peak within 10 % of the 1st half's)"
    verdict = "not measured" if growth is None else ("met" if growth <= 1.10 else "NOT met")
    measured = f"{fmt(large.get('peak_rss_mb'), 0)} MB, x{fmt(growth, 2)}" if large else "-"
    ctx.report.add(
        {"section": "e2e", "target": label, "value": growth, "goal": 1.10, "verdict": verdict},
        [label, measured, verdict],
    )


# ---------------------------------------------------------------- entry point
def section_failed(ctx: Context, name: str, rc: int, limit: str) -> None:
    """gpu_check.sh calls this when a section's process ended badly: one row, one line under its table."""
    what = f"timed out at its {limit} s limit" if rc in (124, 137) else f"exit {rc}"
    ctx.report.add({"section": name, "failed": what, "rc": rc})
    ctx.report.md("", f"_Section {name} {what}; the rows above are those it finished._")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=[*SECTIONS, "failed"])
    parser.add_argument("--cpu-dry-run", action="store_true", help="every GPU row on the CPU, tiny sizes")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds this section may take")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-check"))
    parser.add_argument("--data", default=os.environ.get("GPU_CHECK_DATA", "/tmp/gpu-check-data"))
    parser.add_argument("--name", help="failed: which section")
    parser.add_argument("--rc", type=int, default=1, help="failed: its exit status")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--ours-option", action="append", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not args.section:
        parser.error("--section is required")
    plan = DRY_PLAN if args.cpu_dry_run else GPU_PLAN
    margin = min(10.0, args.budget * 0.1)  # finish the row in hand before timeout(1) kills the section
    ctx = Context(
        plan, Report(Path(args.out)), Path(args.out), Path(args.data), time.monotonic() + args.budget - margin
    )
    if args.section == "failed":
        section_failed(ctx, args.name or "?", args.rc, f"{args.budget:.0f}")
        return
    signal.signal(signal.SIGTERM, _on_term)
    ctx.data.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    {"preflight": section_preflight, "parity": section_parity, "compute": section_compute, "e2e": section_e2e}[
        args.section
    ](ctx)
    print(f"== section {args.section} done in {time.perf_counter() - began:.1f} s", flush=True)


if __name__ == "__main__":
    main()
