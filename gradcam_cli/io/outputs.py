"""Output layout and the per-image write job (run by the render workers, overlapping compute).

Names mirror the input's relative path with the output's suffix appended, so `a.jpg` and `a.png` stay
distinct (`heatmaps/a.jpg.png`, `heatmaps/a.png.png`, `overlays/a.jpg.jpg`); with several explained classes
per image each gets `.cls<index>` before the suffix.

A file name has at most 255 bytes. A name component that would pass that once its suffix is added (with
room kept for the raw files' `.feature.npy`) is shortened, deterministically: its first bytes (cut at a
character boundary), `~`, the first 16 hex digits of the sha256 of the whole component, then the suffix.
So a 250-byte `<long>.jpg` gives `heatmaps/<its first 226 bytes>~<16 hex>.png`; the record names the file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gradcam_cli.io.encode import THUMBNAIL_SIZE, encode_overlay, encode_png, jpeg_preview
from gradcam_cli.io.files import NAME_MAX, atomic_open, atomic_write_bytes, inside
from gradcam_cli.io.overlay import blend_bgr

HEATMAPS = "heatmaps"
OVERLAYS = "overlays"
RAW = "raw"
THUMBNAILS = "thumbnails"


# Room kept in every output name for the longest name derived from it (raw/: ".png" -> ".feature.npy").
_DERIVED_ROOM = len(".feature.npy") - len(".png")
_HASH_DIGITS = 16


def _fitted(component: str, tail: str) -> str:
    """`component + tail`, with `component` shortened (prefix~hash) when the name would pass NAME_MAX bytes."""
    raw = os.fsencode(component)
    budget = NAME_MAX - _DERIVED_ROOM - len(os.fsencode(tail))
    if len(raw) <= budget:
        return component + tail
    digest = hashlib.sha256(raw).hexdigest()[:_HASH_DIGITS]
    kept = raw[: budget - 1 - _HASH_DIGITS].decode("utf-8", errors="ignore")  # a cut character is dropped
    return f"{kept}~{digest}{tail}"


def fitted_path(path: str, tail: str = "") -> str:
    """`path + tail` with every component short enough to be a file name (see the module docstring)."""
    *folders, name = path.split("/")
    return "/".join([*(_fitted(folder, "") for folder in folders), _fitted(name, tail)])


RESULT_FOLDERS = (HEATMAPS, OVERLAYS, RAW, THUMBNAILS)


def linked_result_folder(out_dir: Path) -> Path | None:
    """The first result folder (heatmaps/, overlays/, raw/, thumbnails/ or a folder below them) that is a
    symbolic link, or None. Files written there would land wherever the link points."""
    folders = [out_dir / name for name in RESULT_FOLDERS]
    while folders:  # iterative: result folders mirror inputs that may nest thousands deep
        folder = folders.pop()
        if folder.is_symlink():
            return folder
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # missing (made later) or unreadable (the write probe says so)
        for entry in entries:
            if entry.is_symlink():
                if not entry.is_file():  # a link to a file is replaced by the rename, never written through
                    return Path(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
    return None


def thumbnail_name(image_path: str) -> str:
    """The gallery thumbnail of an image, relative to the output folder."""
    return f"{THUMBNAILS}/{fitted_path(image_path, '.jpg')}"


def output_name(path: str, class_index: int, several: bool, suffix: str = ".png") -> str:
    """Relative name (below heatmaps/, overlays/ or raw/) for one image and class."""
    return fitted_path(path, f".cls{class_index}{suffix}" if several else suffix)


@dataclass
class OutputJob:
    """Everything needed to write one image's files at the original size; independent of torch."""

    out_dir: Path
    names: list[str]  # per explained class, relative to heatmaps/ (".png")
    heatmaps: np.ndarray  # (K, H0, W0) uint8
    original: np.ndarray | None  # (H0, W0, 3) uint8 BGR (OpenCV's order); None when overlays are off
    write_heatmaps: bool
    colormap: str
    alpha: float
    compression: int
    raw_feature: np.ndarray | None = None  # (K, h, w) float32
    thumbnail: str | None = None  # with output.report: the gallery thumbnail, made while the overlay is in memory
    raw_original: np.ndarray | None = None  # (K, H0, W0) float32
    overlay_names: list[str] | None = None  # per class, relative to overlays/ (default: `names`)
    overlay_format: str = "png"
    overlay_quality: int = 90
    overlay_max_side: int | None = None
    overlay_data: list[bytes] | None = None  # per class, overlays already encoded (on the model's device)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as handle:
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)


def shrunk(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    """`pixels` scaled (INTER_AREA) to at most `max_side` on the long side; never enlarged."""
    height, width = pixels.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return pixels
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def _decoded_for_preview(jpeg: bytes, long_side: int) -> np.ndarray:
    """An encoded overlay decoded at the smallest DCT scale that still gives a full-size gallery preview."""
    scales = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}
    flag = next((f for factor, f in scales.items() if long_side >= factor * THUMBNAIL_SIZE), cv2.IMREAD_COLOR)
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), flag)


def output_files(job: OutputJob) -> list[Path]:
    """Every file `write_outputs` writes for `job` (to take them back when the image fails part-way)."""
    files: list[Path] = []
    for k, name in enumerate(job.names):
        if job.write_heatmaps:
            files.append(job.out_dir / HEATMAPS / name)
        if job.original is not None or job.overlay_data is not None:
            files.append(job.out_dir / OVERLAYS / (job.overlay_names or job.names)[k])
        if job.raw_feature is not None:
            stem = name.removesuffix(".png")
            files += [job.out_dir / RAW / (stem + ".feature.npy"), job.out_dir / RAW / (stem + ".npy")]
    if job.thumbnail is not None:
        files.append(job.out_dir / job.thumbnail)
    return files


def write_outputs(job: OutputJob) -> None:
    """Encode and atomically write the heatmap, overlay (and raw) files of one image."""
    overlay_names = job.overlay_names or job.names
    original = shrunk(job.original, job.overlay_max_side) if job.original is not None else None
    for k, name in enumerate(job.names):
        heatmap = job.heatmaps[k]
        if job.write_heatmaps:
            atomic_write_bytes(inside(job.out_dir / HEATMAPS, name), encode_png(heatmap, job.compression))
        overlay = None
        if job.overlay_data is not None:
            atomic_write_bytes(inside(job.out_dir / OVERLAYS, overlay_names[k]), job.overlay_data[k])
            if job.thumbnail is not None and k == 0:
                overlay = _decoded_for_preview(job.overlay_data[k], max(heatmap.shape))
        elif original is not None:
            small = shrunk(heatmap, job.overlay_max_side)
            overlay = blend_bgr(original, small, job.colormap, job.alpha)
            data = encode_overlay(overlay, job.overlay_format, job.overlay_quality, job.compression, bgr=True)
            atomic_write_bytes(inside(job.out_dir / OVERLAYS, overlay_names[k]), data)
        if job.thumbnail is not None and k == 0 and (overlay is not None or job.write_heatmaps):
            # written after its source, so `gradcam report` finds it current and does not decode it again
            picture = overlay if overlay is not None else heatmap
            atomic_write_bytes(inside(job.out_dir, job.thumbnail), jpeg_preview(picture))
        if job.raw_feature is not None:
            stem = name.removesuffix(".png")
            _save_npy(inside(job.out_dir / RAW, stem + ".feature.npy"), job.raw_feature[k])
            if job.raw_original is not None:
                _save_npy(inside(job.out_dir / RAW, stem + ".npy"), job.raw_original[k])
