"""The decode stage: files to model-size uint8 tensors, run in DataLoader worker processes.

The main process streams `ImageSource`s from discovery in batch-sized chunks (a lazy batch sampler), so
nothing lists the whole input; workers read, hash, decode, orient and resize; `normalise` turns a uint8
batch into the model's input on the device. A file that cannot be decoded becomes an item with an error,
never an exception.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import signal
import stat
import zipfile
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from gradcam_cli.config import InputConfig, PreprocessConfig
from gradcam_cli.io.decode import ImageReadError, decode_bytes, device_decodable, displayed_size
from gradcam_cli.io.discovery import ImageSource
from gradcam_cli.io.geometry import Geometry, plan, to_model_input
from gradcam_cli.runner.signals import worker_ignores_interrupts


@dataclass
class DecodedItem:
    source: ImageSource
    sha256: str | None = None
    size: tuple[int, int] | None = None  # width, height of the image as displayed
    geometry: Geometry | None = None
    pixels: torch.Tensor | None = None  # (3, H, W) uint8 model input
    encoded: bytes | None = None  # preprocess.device_decode: the JPEG's bytes, decoded on the model's device
    error: tuple[str, str] | None = None  # (type, message)
    skipped: bool = False  # resume: the bytes still match the earlier ok record


@dataclass
class DecodedBatch:
    items: list[DecodedItem]
    pixels: torch.Tensor | None = None  # (n_ok, 3, H, W) uint8, the ok items in order
    ok: list[int] = field(default_factory=list)  # indices into items of the decoded ones
    # preprocess.device_decode: some ok items are still JPEG bytes, and `pixels` holds only the others, in
    # order; runner/device_decode.py completes it
    encoded: bool = False

    def pin_memory(self) -> DecodedBatch:
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


class SourceReader:
    """The bytes of a source: a file, a zip member (each archive opened once per process), or the tar
    member's bytes discovery carried along. Used by the decode workers and, for overlays, the render workers.

    Only regular files are read, and never more than `max_bytes`: a FIFO named `a.jpg` would block the open
    forever, `a.jpg -> /dev/zero` never ends, a sparse 6 GB `video.jpg` would fill memory; each becomes the
    image's error record instead."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self._zips: dict[str, zipfile.ZipFile] = {}

    def read(self, source: ImageSource) -> bytes:
        if source.data is not None:
            return source.data
        try:
            if source.archive is not None and source.member is not None:
                return self._read_member(source.archive, source.member)
            return self._read_file(source.source)
        except (MemoryError, ImageReadError):
            raise
        except Exception as exc:  # noqa: BLE001 - OSError, a corrupt member (zlib.error, BadZipFile), ...: this image's error
            message = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ImageReadError("ReadError", message[:500]) from None

    def _too_large(self, size: int) -> ImageReadError:
        return ImageReadError(
            "FileTooLarge", f"{size} bytes is more than input.max_file_mb allows ({self.max_bytes} bytes)"
        )

    def _read_file(self, path: str) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ImageReadError("NotAFile", "not a regular file (a FIFO, device or socket): not read")
            if self.max_bytes is not None and info.st_size > self.max_bytes:
                raise self._too_large(info.st_size)
            return self._capped(handle)

    def _read_member(self, archive_path: str, member: str) -> bytes:
        archive = self._zips.get(archive_path)
        if archive is None:
            archive = self._zips[archive_path] = zipfile.ZipFile(archive_path)
        info = archive.getinfo(member)
        if self.max_bytes is not None and info.file_size > self.max_bytes:
            raise self._too_large(info.file_size)
        with archive.open(info) as handle:
            return self._capped(handle)

    def _capped(self, handle: Any) -> bytes:
        """Read it all, or fail as soon as it passes `max_bytes` (a header that lies cannot get past it)."""
        if self.max_bytes is None:
            return handle.read()
        data = handle.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise self._too_large(len(data))
        return data


class DecodeDataset(Dataset):
    """Map-style dataset whose "indices" are the ImageSources themselves.

    Only the model-size input leaves the worker: the full-size original is decoded again, where it is
    needed, by a render worker (a decoded 12 MP photo is 36 MB; its file is a tenth of that)."""

    def __init__(self, preprocess: PreprocessConfig, inputs: InputConfig) -> None:
        self.size = tuple(preprocess.size)
        self.mode = preprocess.resize
        self.pad_rgb = tuple(int(round(m * 255)) for m in preprocess.mean)
        self.max_pixels = inputs.max_pixels
        self.fast_decode = preprocess.fast_decode
        self.device_decode = preprocess.device_decode
        self.reader = SourceReader(inputs.max_file_bytes)

    def __getitem__(self, source: ImageSource) -> DecodedItem:  # type: ignore[override]
        if source.error is not None:
            return DecodedItem(source=source, error=source.error)
        try:
            data = self.reader.read(source)
            sha256 = hashlib.sha256(data).hexdigest()
            if source.known_sha256 == sha256:
                return DecodedItem(source=source, sha256=sha256, skipped=True)  # touched, not changed
            on_device = device_decodable(data, self.max_pixels) if self.device_decode else None
            if on_device is not None:  # only the bytes travel on: the model's device decodes them
                width, height = on_device
                geometry = plan((height, width), self.size, self.mode)
                return DecodedItem(source=source, sha256=sha256, size=on_device, geometry=geometry, encoded=data)
            if self.fast_decode:
                width, height = displayed_size(data, self.max_pixels)
                geometry = plan((height, width), self.size, self.mode)
                image = decode_bytes(data, self.max_pixels, draft=geometry.resized[::-1])
            else:
                image = decode_bytes(data, self.max_pixels)
                width, height = image.size
                geometry = plan((height, width), self.size, self.mode)
            model_input = to_model_input(image, geometry, self.pad_rgb)
        except ImageReadError as exc:
            return DecodedItem(source=source, error=(exc.kind, str(exc)))
        except MemoryError:
            return DecodedItem(source=source, error=("MemoryError", "not enough memory to decode the image"))
        return DecodedItem(
            source=source,
            sha256=sha256,
            size=(width, height),
            geometry=geometry,
            pixels=torch.from_numpy(model_input).permute(2, 0, 1).contiguous(),
        )

    def __len__(self) -> int:  # never used: batches come from a lazy sampler
        raise TypeError("DecodeDataset is streamed")


def collate(items: list[DecodedItem]) -> DecodedBatch:
    """One tensor per batch: a worker sends each tensor through its own file descriptor, so per-item tensors
    at batch 256 with a few batches in flight would pass `ulimit -n`."""
    ok = [i for i, item in enumerate(items) if item.error is None and not item.skipped]
    decoded = [i for i in ok if items[i].encoded is None]
    pixels = torch.stack([items[i].pixels for i in decoded]) if decoded else None  # type: ignore[misc]
    for i in decoded:
        items[i].pixels = None  # the stacked tensor carries them; avoid sending twice
    return DecodedBatch(items=items, pixels=pixels, ok=ok, encoded=len(decoded) < len(ok))


class ChunkSampler:
    """Lazily cuts the discovery stream into batch-sized lists (DataLoader's batch_sampler)."""

    def __init__(self, sources: Iterable[ImageSource], batch_size: int) -> None:
        self.sources = sources
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[ImageSource]]:
        iterator = iter(self.sources)
        while chunk := list(itertools.islice(iterator, self.batch_size)):
            yield chunk


def _start_decode_worker(worker_id: int, parent: int) -> None:
    worker_ignores_interrupts(parent)


def decoded_batches(
    sources: Iterable[ImageSource],
    dataset: DecodeDataset,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
) -> Generator[DecodedBatch, None, None]:
    """Batches in input order, decoded by `workers` processes (0: in this process).

    Closing the generator (or leaving it by an exception) stops the workers at once: they ignore
    SIGINT/SIGTERM by design, so the interpreter's exit handler could otherwise wait for them forever."""
    loader = DataLoader(
        dataset,
        batch_sampler=ChunkSampler(sources, batch_size),
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        worker_init_fn=functools.partial(_start_decode_worker, parent=os.getpid()) if workers else None,
    )
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        _stop_workers(iterator)


def _stop_workers(iterator: Any) -> None:
    processes = list(getattr(iterator, "_workers", []))
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()  # asks them to exit and joins briefly
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)  # one stuck in a read (a FIFO, a hung mount)
            process.join(timeout=5)


def normalise(pixels: torch.Tensor, preprocess: PreprocessConfig, device: torch.device) -> torch.Tensor:
    """A uint8 (B, 3, H, W) batch as the model's input on `device`: pixel range, channel order, mean/std."""
    x = pixels.to(device, non_blocking=True).float().div_(255.0)
    low, high = preprocess.pixel_range  # 0..255 onto [low, high], then channel order, then mean/std
    if (low, high) != (0.0, 1.0):
        x = x.mul_(high - low).add_(low)
    if preprocess.channel_order == "bgr":
        x = x.flip(1)
    mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if device.type in ("cpu", "cuda") else x
