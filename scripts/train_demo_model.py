"""Train the demo CNN (gradcam_cli.demo.model) on procedurally generated shapes.

Reproducible: the data depend only on --seed (sample i of a seed is a pure function of (seed, i)),
torch is seeded and runs with a fixed thread count and deterministic algorithms, so the same machine
and library versions write a byte-identical weights file. Wall time with the defaults on two CPU cores:
under 5 minutes on two dedicated server cores, about 9 minutes on a slow 2-vCPU VM (AVX2 only).

What it does:

1. generates images of varied sizes and aspect ratios and turns each into model inputs with all
   three resize modes of the CLI (stretch, letterbox, center_crop; gradcam_cli.io.geometry), so the
   model is trained on the geometries it will be explained under;
2. trains in three phases of one learning-rate schedule, because a small CNN on cluttered images
   otherwise sits at chance level for a thousand steps before it finds the objects: shapes on clean
   backgrounds at 64x64, then cluttered images at 64x64 (about four times cheaper than 128x128),
   then cluttered images at the full 128x128; every batch draws a random resize mode, flip and
   90-degree rotation per sample (all label-preserving);
3. measures accuracy on freshly generated, full-size held-out images (a different seed) for every
   resize mode, plus a Grad-CAM "pointing game" on the last conv block (is the CAM's peak, mapped
   back onto the original image, on the object?);
4. writes the weights (safetensors) and labels.txt next to them, and exits 1 if the held-out
   accuracy of any resize mode is below 95%.

Usage:
    .venv/bin/python scripts/train_demo_model.py [--seed 0] [--samples-out sample_images/demo]
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import multiprocessing.pool
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from gradcam_cli.demo.model import INPUT_SIZE, MEAN, STD, build_demo_cnn
from gradcam_cli.demo.shapes import CLASSES, MAX_SIDE, MIN_SIDE, ShapeSample, generate_sample, sample_at
from gradcam_cli.io.geometry import RESIZE_MODES, Geometry, plan, to_original_frame

MIN_ACCURACY = 0.95
HELDOUT_SEED_OFFSET = 1_000_003  # held-out data: a seed no training run uses
EASY_SEED_OFFSET = 2_000_003
SAMPLES_SEED = 2024
POINTING_TOLERANCE = 15  # pixels, in the original image
CLI_PAD = tuple(round(m * 255) for m in MEAN)  # the CLI pads letterboxed images with the mean colour
# Letterbox padding differs between tools (the mean colour, black, grey); train on several of them.
PAD_COLOURS = (CLI_PAD, (0, 0, 0), (114, 114, 114))
ROOT = Path(__file__).resolve().parent.parent

# (file name, width, height, class) of the shipped sample images; exif_rotated.jpg is stored rotated
# with EXIF Orientation=6, so it only displays upright if the reader honours the tag.
SAMPLE_SPECS = (
    ("circle_01.jpg", 320, 240, "circle"),
    ("square_01.jpg", 200, 400, "square"),
    ("triangle_01.jpg", 640, 360, "triangle"),
    ("star_01.jpg", 256, 256, "star"),
    ("cross_01.jpg", 400, 300, "cross"),
    ("circle_02.png", 300, 500, "circle"),
    ("square_02.jpg", 480, 480, "square"),
    ("triangle_02.png", 360, 200, "triangle"),
    ("star_02.jpg", 224, 448, "star"),
    ("cross_02.jpg", 500, 250, "cross"),
    ("square_03.png", 640, 480, "square"),
    ("exif_rotated.jpg", 240, 320, "star"),
)


def model_view(
    image: Image.Image, mode: str, pad: tuple[int, int, int] = CLI_PAD, size: int = INPUT_SIZE
) -> tuple[np.ndarray, Geometry]:
    """The ``size`` x ``size`` uint8 model input for ``image``, as the CLI's resize modes plan it.

    Pasting the resized image at the planned offset letterboxes (offset >= 0) and centre-crops
    (offset < 0, Pillow clips) in one step.
    """
    geometry = plan((image.height, image.width), (size, size), mode)
    (rh, rw), (top, left) = geometry.resized, geometry.offset
    canvas = Image.new("RGB", (size, size), pad)
    canvas.paste(image.resize((rw, rh), Image.Resampling.BILINEAR), (left, top))
    return np.array(canvas), geometry


@dataclass(frozen=True)
class Views:
    """Generated samples as model inputs: uint8 (N, modes, size, size, 3) per size, and labels (N,)."""

    full: torch.Tensor
    low: torch.Tensor
    labels: torch.Tensor


def _draw(seed: int, index: int, clutter: bool, reduced: bool) -> ShapeSample:
    """Sample ``index`` of ``seed``: the :func:`sample_at` distribution, or the training one.

    Training images (``reduced``) get sides drawn independently from [MIN_SIDE, MAX_SIDE], so aspect
    ratios reach 4:1 (beyond the 2:1 of :func:`sample_at`) and the model copes with panoramas too.
    They are also drawn smaller (short side >= 128 px, at most halved): generation cost grows with the
    pixel count and every image ends up at 128x128 anyway, so only the pixel noise gets coarser.
    """
    if not reduced:
        return sample_at(seed, index, clutter=clutter)
    rng = np.random.default_rng([seed, index])
    width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    scale = max(0.5, INPUT_SIZE / min(width, height))
    return generate_sample(rng, round(width * scale), round(height * scale), clutter=clutter)


def _views(index: int, seed: int, clutter: bool, reduced: bool, low_res: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Sample ``index`` as model inputs in every resize mode, at full and at low resolution."""
    sample = _draw(seed, index, clutter, reduced)
    pad = PAD_COLOURS[int(np.random.default_rng([seed, index, 1]).integers(len(PAD_COLOURS)))]
    full = [model_view(sample.image, mode, pad)[0] for mode in RESIZE_MODES]
    low = [model_view(sample.image, mode, pad, low_res)[0] for mode in RESIZE_MODES]
    return np.stack(full), np.stack(low), sample.label


def generate_views(
    pool: multiprocessing.pool.Pool, seed: int, count: int, low_res: int, *, clutter: bool, reduced: bool
) -> Views:
    """Generate ``count`` samples in parallel; deterministic because each depends only on (seed, i)."""
    job = functools.partial(_views, seed=seed, clutter=clutter, reduced=reduced, low_res=low_res)
    results = pool.map(job, range(count), chunksize=32)
    return Views(
        full=torch.from_numpy(np.stack([r[0] for r in results])),
        low=torch.from_numpy(np.stack([r[1] for r in results])),
        labels=torch.tensor([r[2] for r in results], dtype=torch.long),
    )


def to_input(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W), as the CLI preprocesses."""
    x = batch.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def accuracy(model: torch.nn.Module, views: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Held-out accuracy per resize mode."""
    model.eval()
    device = next(model.parameters()).device
    result = []
    for m in range(len(RESIZE_MODES)):
        correct = 0
        for start in range(0, len(labels), 256):
            logits = model(to_input(views[start : start + 256, m].to(device))).cpu()
            correct += int((logits.argmax(1) == labels[start : start + 256]).sum())
        result.append(correct / len(labels))
    return result


@dataclass(frozen=True)
class Phase:
    """A stretch of training: ``steps`` batches drawn from ``views`` (N, modes, H, W, 3)."""

    name: str
    views: torch.Tensor
    labels: torch.Tensor
    steps: int


def train(
    model: torch.nn.Module,
    phases: list[Phase],
    args: argparse.Namespace,
    check: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """AdamW with one one-cycle schedule across the phases; prints held-out accuracy as it goes."""
    gen = torch.Generator().manual_seed(args.seed)
    device = next(model.parameters()).device
    total = sum(p.steps for p in phases)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.15)
    done, t0, losses = 0, time.time(), []
    for phase in phases:
        for step in range(phase.steps):
            model.train()
            bs = args.batch_size
            idx = torch.randint(len(phase.labels), (bs,), generator=gen)
            modes = torch.randint(len(RESIZE_MODES), (bs,), generator=gen)
            flip = torch.rand(bs, generator=gen) < 0.5
            turns = int(torch.randint(4, (1,), generator=gen))
            x = to_input(phase.views[idx, modes].to(device))
            x = torch.rot90(torch.where(flip.to(device).view(-1, 1, 1, 1), x.flip(3), x), turns, (2, 3))
            logits = model(x.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits, phase.labels[idx].to(device), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            done += 1
            if step + 1 == phase.steps or done % args.report_every == 0:
                accs = accuracy(model, *check)
                print(
                    f"step {done}/{total} [{phase.name}] loss {np.mean(losses[-50:]):.3f} held-out check "
                    + " ".join(f"{m}={a:.3f}" for m, a in zip(RESIZE_MODES, accs, strict=True))
                    + f" ({time.time() - t0:.0f}s)",
                    flush=True,
                )


def pointing_game(model: torch.nn.Module, samples: list[ShapeSample]) -> list[float]:
    """Fraction of images whose Grad-CAM peak (last conv block, predicted class) hits the object box.

    The CAM is mapped back onto the original image the way the CLI maps it, and the peak must lie
    within POINTING_TOLERANCE pixels of the box.
    """
    model.eval()
    device = next(model.parameters()).device
    activations: list[torch.Tensor] = []
    hook = model.features.register_forward_hook(lambda _m, _i, out: activations.append(out))
    hits = [0] * len(RESIZE_MODES)
    try:
        for sample in samples:
            x0, y0, x1, y1 = sample.box
            for m, mode in enumerate(RESIZE_MODES):
                array, geometry = model_view(sample.image, mode)
                activations.clear()
                logits = model(to_input(torch.from_numpy(array).unsqueeze(0).to(device)))
                act = activations[0]
                grads = torch.autograd.grad(logits[0, logits[0].argmax()], act)[0]
                cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * act).sum(1))
                cam = F.interpolate(cam[:, None], size=geometry.model, mode="bilinear", align_corners=False)[:, 0]
                mapped = to_original_frame(cam.detach().cpu(), geometry)[0]
                py, px = divmod(int(mapped.argmax()), mapped.shape[1])
                t = POINTING_TOLERANCE
                hits[m] += int(x0 - t <= px < x1 + t and y0 - t <= py < y1 + t)
    finally:
        hook.remove()
    return [h / len(samples) for h in hits]


def write_samples(out_dir: Path) -> None:
    """Regenerate the shipped demo images (fixed seed, independent of the training seed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, (name, width, height, cls) in enumerate(SAMPLE_SPECS):
        rng = np.random.default_rng([SAMPLES_SEED, i])
        image = generate_sample(rng, width, height, CLASSES.index(cls)).image
        path = out_dir / name
        if name == "exif_rotated.jpg":
            # Orientation 6 means "rotate 90 degrees clockwise to display": store it turned the other way.
            exif = Image.Exif()
            exif[0x0112] = 6
            image.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
        elif path.suffix == ".png":
            image.save(path, optimize=True)
        else:
            image.save(path, quality=90)
    print(f"wrote {len(SAMPLE_SPECS)} sample images to {out_dir}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "gradcam_cli/demo/demo_cnn.safetensors",
        help="weights file; labels.txt is written next to it",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--easy-samples", type=int, default=3000, help="uncluttered images (phase 1)")
    parser.add_argument("--train-samples", type=int, default=8000, help="cluttered images (phases 2, 3)")
    parser.add_argument("--easy-steps", type=int, default=200, help="phase 1: clean backgrounds, low res")
    parser.add_argument("--lowres-steps", type=int, default=400, help="phase 2: clutter, low res")
    parser.add_argument("--steps", type=int, default=450, help="phase 3: clutter, 128x128")
    parser.add_argument("--low-res", type=int, default=64, help="input size of phases 1 and 2")
    parser.add_argument("--heldout-samples", type=int, default=1000)
    parser.add_argument("--pointing-samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--report-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--samples-out",
        type=Path,
        default=None,
        help="also regenerate the demo images into this folder (e.g. sample_images/demo)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    heldout_seed = args.seed + HELDOUT_SEED_OFFSET
    with multiprocessing.get_context("spawn").Pool(args.threads) as pool:
        easy_seed = args.seed + EASY_SEED_OFFSET
        easy = generate_views(pool, easy_seed, args.easy_samples, args.low_res, clutter=False, reduced=True)
        train_set = generate_views(pool, args.seed, args.train_samples, args.low_res, clutter=True, reduced=True)
        heldout = generate_views(pool, heldout_seed, args.heldout_samples, args.low_res, clutter=True, reduced=False)
    print(
        f"generated {len(easy.labels)} easy, {len(train_set.labels)} training and {len(heldout.labels)} "
        f"held-out images ({time.time() - start:.0f}s)",
        flush=True,
    )

    model = build_demo_cnn(len(CLASSES)).to(memory_format=torch.channels_last)
    phases = [
        Phase(f"clean-{args.low_res}", easy.low, easy.labels, args.easy_steps),
        Phase(f"clutter-{args.low_res}", train_set.low, train_set.labels, args.lowres_steps),
        Phase(f"clutter-{INPUT_SIZE}", train_set.full, train_set.labels, args.steps),
    ]
    train(model, phases, args, (heldout.full[:200], heldout.labels[:200]))

    accs = accuracy(model, heldout.full, heldout.labels)
    pointing = pointing_game(model, [sample_at(heldout_seed, i) for i in range(args.pointing_samples)])
    for mode, acc, hit in zip(RESIZE_MODES, accs, pointing, strict=True):
        print(f"held-out {mode:<12} accuracy {acc:.4f}  pointing game {hit:.3f}")
    print(f"held-out accuracy (all modes, {len(heldout.labels)} images each): {sum(accs) / len(accs):.4f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    # One metadata key only: safetensors writes several in random order, and the file should be
    # byte-for-byte reproducible.
    save_file(state, str(args.out), metadata={"classes": ",".join(CLASSES)})
    (args.out.parent / "labels.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB); total time {time.time() - start:.0f}s")
    if args.samples_out is not None:
        write_samples(args.samples_out)

    if min(accs) < MIN_ACCURACY:
        print(f"FAIL: held-out accuracy below {MIN_ACCURACY:.0%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
