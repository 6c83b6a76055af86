"""Atomic file writes and PNG encoding: a file appears under its final name only when complete."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import cv2
import numpy as np


def _file_mode() -> int:
    umask = os.umask(0o022)  # read it (there is no getter) and put it straight back
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


@contextmanager
def atomic_open(path: Path, durable: bool = False) -> Iterator[IO[bytes]]:
    """A binary handle on a temporary file in `path`'s folder, renamed over `path` on success.

    `durable` also fsyncs before the rename, for files whose loss would lose work (the manifest).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600 files; results should be as readable as any other file
        with os.fdopen(fd, "wb") as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, durable: bool = False) -> None:
    """Write `data` so that `path` only ever holds a complete file."""
    with atomic_open(path, durable) as handle:
        handle.write(data)


def encode_png(pixels: np.ndarray, compression: int = 1, rgb: bool = True) -> bytes:
    """PNG bytes for a uint8 grey (H, W) or RGB (H, W, 3) array; no timestamps, so deterministic."""
    if pixels.ndim == 3 and rgb:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    # The SUB filter alone was measured fastest and smallest for our smooth heatmaps, and about 30% faster
    # than libpng's adaptive filtering on photo overlays (benchmarks/RESULTS.md).
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(compression), cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    ok, encoded = cv2.imencode(".png", pixels, params)
    if not ok:
        raise OSError("PNG encoding failed")
    return encoded.tobytes()


def inside(folder: Path, relative: str) -> Path:
    """`folder / relative`, refusing anything that would land outside `folder`."""
    base = folder.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"refusing to write outside the output folder: {relative}")
    return target
