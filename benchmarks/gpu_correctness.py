"""GPU correctness checks (run by gpu_check.sh on a machine with CUDA): prints one PASS/FAIL line each.

1. our engine, fp32 on the GPU vs fp32 on the CPU;
2. bf16 and fp16 autocast on the GPU vs fp32 on the GPU (CAM maths stays fp32);
3. our engine vs pytorch-grad-cam on the GPU;
4. `gradcam run` end to end on the GPU vs on the CPU (same heatmap PNGs within a few grey levels).
Every comparison is the Pearson correlation per image, threshold 0.99.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gradcam_cli.config import parse_config  # noqa: E402
from gradcam_cli.engine import METHODS, CamEngine, TargetSpec  # noqa: E402
from gradcam_cli.runner.options import RunOptions  # noqa: E402
from gradcam_cli.runner.run import run  # noqa: E402

FAILURES: list[str] = []


def calibrated_resnet50(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().to(device).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 224, 224, device=device))
    return model.eval().requires_grad_(False)


def correlations(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Pearson per map; two constant (e.g. all-zero) maps agree, one constant map does not."""
    a, b = a.flatten(1).double().cpu(), b.flatten(1).double().cpu()
    values = []
    for x, y in zip(a, b, strict=True):
        if x.std() < 1e-12 or y.std() < 1e-12:
            values.append(1.0 if torch.allclose(x, y, atol=1e-6) else 0.0)
        else:
            values.append(float(torch.corrcoef(torch.stack([x, y]))[0, 1]))
    return values


def check(name: str, values: list[float], threshold: float = 0.99) -> None:
    worst = min(values)
    status = "PASS" if worst >= threshold else "FAIL"
    if status == "FAIL":
        FAILURES.append(name)
    print(f"{status}  {name}: min correlation {worst:.5f} over {len(values)} maps (threshold {threshold})")


def cams(model: torch.nn.Module, images: torch.Tensor, precision: str, method: str = "gradcam") -> torch.Tensor:
    """CAMs of the fp32 model's top-2 classes (fixed, so every precision explains the same classes)."""
    with torch.no_grad():
        classes = model(images.float()).topk(2, dim=1).indices
    maps = []
    with CamEngine(model, [model.layer4], METHODS[method], precision=precision) as engine:
        for i in range(len(images)):
            target = TargetSpec("fixed", classes=tuple(classes[i].tolist()))
            maps.append(engine.explain(images[i : i + 1], target).cams.float())
    return torch.cat(maps)


def photo_like_batch(count: int) -> torch.Tensor:
    """Normalised 224x224 inputs from the benchmark's photo-like JPEGs (random noise is a poor stand-in)."""
    from throughput import make_images

    folder = make_images(Path(tempfile.mkdtemp()) / "photos", count, seed=3)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    tensors = []
    for path in sorted(folder.glob("*.jpg")):
        array = np.array(Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
        tensors.append((torch.from_numpy(array).permute(2, 0, 1).float() / 255 - mean) / std)
    return torch.stack(tensors)


def main() -> None:
    torch.manual_seed(1)
    gpu = calibrated_resnet50("cuda")
    cpu = copy.deepcopy(gpu).cpu()
    images = photo_like_batch(8)
    on_gpu = images.cuda()
    reference32 = cams(gpu, on_gpu, "fp32")
    check("GPU fp32 vs CPU fp32 (gradcam)", correlations(reference32, cams(cpu, images, "fp32")))
    for precision in ("bf16", "fp16"):
        check(f"GPU {precision} vs GPU fp32 (gradcam)", correlations(cams(gpu, on_gpu, precision), reference32))
    for method in ("gradcam++", "layercam", "eigencam"):
        check(
            f"GPU bf16 vs fp32 ({method})",
            correlations(cams(gpu, on_gpu, "bf16", method), cams(gpu, on_gpu, "fp32", method)),
        )

    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ref_model = copy.deepcopy(gpu).requires_grad_(True)
    with torch.no_grad():
        top = gpu(on_gpu).argmax(dim=1).tolist()
    with GradCAM(model=ref_model, target_layers=[ref_model.layer4]) as cam:
        expected = cam(input_tensor=on_gpu, targets=[ClassifierOutputTarget(c) for c in top])
    check("GPU ours vs pytorch-grad-cam (gradcam)", correlations(reference32[:, 0], torch.from_numpy(expected)))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i, (w, h) in enumerate([(640, 480), (300, 500), (224, 224), (1024, 300)] * 4):
            coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC).save(folder / f"{i:02d}.jpg")
        weights = Path(tmp) / "r50.pt"
        torch.save(cpu.state_dict(), weights)
        outputs = {}
        for device in ("cpu", "cuda"):
            config = parse_config(
                {
                    "model": {"torchvision": "resnet50", "weights": str(weights), "labels": "none"},
                    "preprocess": {"resize": "letterbox"},
                    "output": {"dir": str(Path(tmp) / device)},
                    "runtime": {"device": device, "batch_size": 8},
                },
                Path(tmp),
            )
            summary = run(config, RunOptions(inputs=[str(folder)], quiet=True))
            assert summary.ok == 16, summary.line()
            outputs[device] = [
                np.asarray(Image.open(p), dtype=np.float64)
                for p in sorted((Path(tmp) / device / "heatmaps").glob("*.png"))
            ]
        values = [
            float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(outputs["cpu"], outputs["cuda"], strict=True)
        ]
        check("gradcam run: GPU vs CPU heatmap PNGs (letterbox, mixed sizes)", values)
        worst = max(float(np.abs(a - b).max()) for a, b in zip(outputs["cpu"], outputs["cuda"], strict=True))
        print(f"      largest grey-level difference GPU vs CPU: {worst:.0f}")
    print("correctness:", "FAIL " + ", ".join(FAILURES) if FAILURES else "all PASS")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
