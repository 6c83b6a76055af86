"""runner/device_decode.py (preprocess.device_decode), exercised on the CPU: the same code runs on CUDA with
nvJPEG (benchmarks/gpu_check.sh measures it there). JPEGs the device can decode cross as bytes; everything
else takes the CPU path unchanged."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam_cli.config import parse_config
from gradcam_cli.errors import ConfigError
from gradcam_cli.io.decode import decode_bytes, device_decodable
from gradcam_cli.io.decode_torch import decode_jpegs
from gradcam_cli.io.discovery import ImageSource
from gradcam_cli.io.geometry import plan
from gradcam_cli.io.outputs import OutputJob, thumbnail_name, write_outputs
from gradcam_cli.runner.device_decode import complete_on_device, device_overlays
from gradcam_cli.runner.loader import DecodeDataset, collate
from gradcam_cli.runner.options import RunOptions
from gradcam_cli.runner.run import run
from tests.conftest import random_image

ORIENTATION = 0x0112


def mixed_inputs(folder: Path) -> dict[str, Path]:
    """Every kind of file the device path must either take or leave to the CPU path."""
    files = {
        "baseline": random_image(folder / "baseline.jpg", 96, 64, seed=1),
        "grey": random_image(folder / "grey.jpg", 40, 70, seed=2, mode="L"),
        "png": random_image(folder / "picture.png", 50, 50, seed=3),
    }
    picture = Image.open(files["baseline"]).convert("RGB")
    files["progressive"] = folder / "progressive.jpg"
    picture.save(files["progressive"], progressive=True, quality=90)
    files["cmyk"] = folder / "cmyk.jpg"
    picture.convert("CMYK").save(files["cmyk"], quality=90)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    files["rotated"] = folder / "rotated.jpg"
    picture.save(files["rotated"], exif=exif, quality=90)
    files["corrupt"] = folder / "corrupt.jpg"  # a valid header, then garbage: found only when decoded
    data = files["baseline"].read_bytes()
    files["corrupt"].write_bytes(data[: len(data) * 2 // 3])
    return files


def test_only_baseline_upright_rgb_or_grey_jpegs_go_to_the_device(tmp_path: Path) -> None:
    files = mixed_inputs(tmp_path)
    found = {name: device_decodable(path.read_bytes(), 10**8) for name, path in files.items()}
    assert found["baseline"] == (96, 64) and found["grey"] == (40, 70) and found["corrupt"] == (96, 64)
    assert found["png"] is None and found["progressive"] is None and found["cmyk"] is None
    assert found["rotated"] is None  # torchvision's CUDA decoder applies no EXIF orientation
    assert device_decodable(files["baseline"].read_bytes(), 96 * 64 - 1) is None  # over input.max_pixels
    assert device_decodable(b"\xff\xd8\xff garbage", 10**8) is None


def test_device_decoding_gives_the_cpu_decoders_pixels_and_finds_a_bad_file(tmp_path: Path) -> None:
    files = mixed_inputs(tmp_path)
    names = ["baseline", "corrupt", "grey"]
    pictures = decode_jpegs([files[name].read_bytes() for name in names], torch.device("cpu"))
    assert pictures[1] is None  # the batched call failed on it: the others are decoded one by one
    for name, picture in zip(names, pictures, strict=True):
        if picture is None:
            continue
        expected = np.asarray(decode_bytes(files[name].read_bytes(), 10**8))
        assert picture.shape == (3, *expected.shape[:2]) and picture.dtype == torch.uint8
        assert np.array_equal(picture.permute(1, 2, 0).numpy(), expected)  # the same libjpeg-turbo pixels


@pytest.fixture
def device_config(tiny_config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(tiny_config)
    config["preprocess"] = {"size": [32, 32], "resize": "letterbox", "device_decode": True}
    return config


def test_a_batch_is_completed_on_the_device_with_cpu_fallbacks_and_errors(
    tmp_path: Path, device_config: dict[str, Any]
) -> None:
    config = parse_config(device_config, tmp_path)
    files = mixed_inputs(tmp_path / "in")
    dataset = DecodeDataset(config.preprocess, config.input)
    items = [dataset[ImageSource(source=str(path), path=path.name)] for path in files.values()]
    assert [item.encoded is not None for item in items] == [True, True, False, False, False, False, True]
    assert all(item.pixels is None for item in items if item.encoded is not None)  # bytes only crossed
    batch = collate(items)
    assert batch.encoded and batch.pixels is not None and batch.pixels.shape == (4, 3, 32, 32)  # the CPU ones
    assert all(item.pixels is None for item in items)  # one tensor per batch: one file descriptor per batch
    originals = complete_on_device(batch, dataset, torch.device("cpu"))
    names = list(files)
    assert sorted(names[i] for i in originals) == ["baseline", "grey"]
    assert items[names.index("corrupt")].error is not None  # neither decoder could read it
    assert names.index("corrupt") not in batch.ok and len(batch.ok) == 6
    assert batch.pixels is not None and batch.pixels.shape == (6, 3, 32, 32) and not batch.encoded
    # the device's model input is Pillow's resize within a grey level
    cpu = DecodeDataset(config.preprocess.model_copy(update={"device_decode": False}), config.input)
    expected = cpu[ImageSource(source=str(files["baseline"]), path="baseline.jpg")].pixels
    row = batch.ok.index(names.index("baseline"))
    assert int((batch.pixels[row].int() - expected.int()).abs().max()) <= 1


def test_originals_are_kept_only_for_device_overlays_and_decoded_in_chunks_otherwise(
    tmp_path: Path, device_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gradcam_cli.runner.device_decode as device_decode
    from gradcam_cli.runner.device_decode import overlays_on_device

    config = parse_config(device_config, tmp_path)
    assert overlays_on_device(config.output)
    for update in ({"overlay_format": "png"}, {"overlay_max_side": 256}, {"overlays": False}):
        assert not overlays_on_device(config.output.model_copy(update=update))
    paths = [random_image(tmp_path / "in" / f"{i}.jpg", 60, 40, seed=i) for i in range(5)]
    dataset = DecodeDataset(config.preprocess, config.input)
    calls: list[int] = []
    real = device_decode.decode_jpegs
    monkeypatch.setattr(
        device_decode, "decode_jpegs", lambda datas, device: calls.append(len(datas)) or real(datas, device)
    )
    monkeypatch.setattr(device_decode, "DECODE_CHUNK", 2)

    def completed(keep: bool):
        batch = collate([dataset[ImageSource(source=str(p), path=p.name)] for p in paths])
        return batch, complete_on_device(batch, dataset, torch.device("cpu"), keep_originals=keep)

    kept_batch, kept = completed(True)
    assert sorted(kept) == [0, 1, 2, 3, 4] and calls == [5]  # held for the overlays: one batched call
    calls.clear()
    batch, none = completed(False)
    assert none == {} and calls == [2, 2, 1]  # no overlay on the device: nothing held, chunk by chunk
    assert torch.equal(batch.pixels, kept_batch.pixels)


def test_a_device_that_fails_an_image_leaves_it_to_the_cpu(
    tmp_path: Path, device_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of device memory, or CUDA's antialiased resize refusing a large downscale: that image's model
    input and overlay are made on the CPU; the run goes on."""
    import gradcam_cli.runner.device_decode as device_decode

    config = parse_config(device_config, tmp_path)
    paths = [random_image(tmp_path / "in" / f"{i}.jpg", 60, 40, seed=i) for i in range(3)]
    dataset = DecodeDataset(config.preprocess, config.input)
    real = device_decode.to_model_input_tensor

    def refuses_the_second(picture, geometry, pad):
        if int(picture.float().mean() * 1000) == refused:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(picture, geometry, pad)

    (second,) = decode_jpegs([paths[1].read_bytes()], torch.device("cpu"))
    refused = int(second.float().mean() * 1000)
    monkeypatch.setattr(device_decode, "to_model_input_tensor", refuses_the_second)
    batch = collate([dataset[ImageSource(source=str(p), path=p.name)] for p in paths])
    originals = complete_on_device(batch, dataset, torch.device("cpu"))
    assert sorted(originals) == [0, 2] and batch.ok == [0, 1, 2]  # the second: decoded on the CPU instead
    cpu = DecodeDataset(config.preprocess.model_copy(update={"device_decode": False}), config.input)
    expected = cpu[ImageSource(source=str(paths[1]), path=paths[1].name)].pixels
    assert torch.equal(batch.pixels[1], expected)

    monkeypatch.setattr(device_decode, "overlay_tensor", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    geometries = {i: batch.items[i].geometry for i in originals}
    overlays = device_overlays(originals, torch.rand(3, 1, 32, 32), {0: 0, 2: 2}, geometries, "jet", 0.5, 90)
    assert overlays == {}  # no overlay data: the render workers make these overlays from the files


def test_device_overlays_are_the_cpu_overlays_byte_for_byte(tmp_path: Path) -> None:
    path = random_image(tmp_path / "a.jpg", 120, 90, seed=5)
    data = path.read_bytes()
    geometry = plan((90, 120), (32, 32), "letterbox")
    (original,) = decode_jpegs([data], torch.device("cpu"))
    assert original is not None
    generator = torch.Generator().manual_seed(0)
    cams = torch.rand(1, 2, 32, 32, generator=generator)
    overlays = device_overlays({7: original}, cams, {7: 0}, {7: geometry}, "turbo", 0.4, 90)
    from gradcam_cli.io.decode import decode_bgr
    from gradcam_cli.io.geometry import to_original_frame

    heatmaps = to_original_frame(cams[0], geometry).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()
    job = OutputJob(
        out_dir=tmp_path / "cpu",
        names=["a.png", "b.png"],
        heatmaps=heatmaps,
        original=decode_bgr(data, 10**8, (90, 120)),
        write_heatmaps=False,
        colormap="turbo",
        alpha=0.4,
        compression=1,
        overlay_names=["a.jpg", "b.jpg"],
        overlay_format="jpeg",
        overlay_quality=90,
    )
    write_outputs(job)
    assert overlays[7] == [(tmp_path / "cpu" / "overlays" / name).read_bytes() for name in ("a.jpg", "b.jpg")]
    with Image.open(io.BytesIO(overlays[7][0])) as picture:  # 4:4:4 chroma, as the CPU overlays
        assert picture.layer[0][1:3] == (1, 1)


def test_a_run_with_device_decode_matches_the_cpu_path_and_is_another_identity(
    tmp_path: Path, tiny_config: dict[str, Any], device_config: dict[str, Any]
) -> None:
    mixed_inputs(tmp_path / "in")
    tiny_config["preprocess"] = {"size": [32, 32], "resize": "letterbox"}
    tiny_config["output"] = {"dir": str(tmp_path / "cpu"), "report": True}
    device_config["output"] = {"dir": str(tmp_path / "device"), "report": True}
    for data in (tiny_config, device_config):
        summary = run(parse_config(data, tmp_path), RunOptions(inputs=[str(tmp_path / "in")], quiet=True))
        assert (summary.ok, summary.failed) == (6, 1)
    cpu, device = tmp_path / "cpu", tmp_path / "device"
    for name in ("picture.png", "progressive.jpg", "cmyk.jpg", "rotated.jpg"):  # the CPU path, unchanged
        assert (cpu / "heatmaps" / f"{name}.png").read_bytes() == (device / "heatmaps" / f"{name}.png").read_bytes()
        assert (cpu / "overlays" / f"{name}.jpg").read_bytes() == (device / "overlays" / f"{name}.jpg").read_bytes()
    for name in ("baseline.jpg", "grey.jpg"):  # decoded and overlaid on the device: within a grey level
        a = np.asarray(Image.open(cpu / "heatmaps" / f"{name}.png"), dtype=int)
        b = np.asarray(Image.open(device / "heatmaps" / f"{name}.png"), dtype=int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 2
        with Image.open(device / "overlays" / f"{name}.jpg") as overlay:
            assert overlay.size == a.shape[::-1]
    for name in ("baseline.jpg", "grey.jpg"):  # gallery previews made from the encoded overlay
        with Image.open(device / thumbnail_name(name)) as preview, Image.open(cpu / thumbnail_name(name)) as other:
            assert preview.size == other.size
    records = [json.loads(line) for line in (device / "records.jsonl").read_text().splitlines()]
    (bad,) = [r for r in records if r["status"] == "error"]
    assert bad["path"] == "corrupt.jpg"
    hashes = [json.loads((folder / "manifest.json").read_text())["config_hash"] for folder in (cpu, device)]
    assert hashes[0] != hashes[1]  # another model input: another run identity


def test_the_ray_backend_refuses_device_decode(tmp_path: Path, device_config: dict[str, Any]) -> None:
    from gradcam_cli.runner.ray_data import driver_config

    with pytest.raises(ConfigError, match="device_decode works with --engine local only"):
        driver_config(parse_config(device_config, tmp_path))
