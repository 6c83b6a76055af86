"""Atomic file writes, and the one check that a path stays inside a folder: a file appears under its final
name only when complete, and never outside the output folder."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


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


def inside(folder: Path, relative: str) -> Path:
    """`folder / relative`, refusing anything that would land outside `folder`."""
    base = folder.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"refusing to write outside the output folder: {relative}")
    return target


class Within:
    """`inside(root, relative)` for thousands of paths: each folder is resolved once, not every file.

    The last component is not resolved: files are written by renaming over it (never through a link) and
    every folder on the way is checked, so nothing lands outside the root. File times are cached.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._folders: dict[str, str] = {"": str(self.root)}
        self._mtimes: dict[str, int | None] = {}

    def path(self, relative: str) -> str:
        folder, _, name = relative.rpartition("/")
        if name in ("", ".", "..") or relative.startswith("/"):
            raise ValueError(f"refusing a path outside the output folder: {relative}")
        base = self._folders.get(folder)
        if base is None:
            base = self._folders[folder] = str(inside(self.root, folder))
        return os.path.join(base, name)

    def mtime(self, relative: str) -> int | None:
        """mtime_ns of a regular file inside the root; None when missing, not a file or outside."""
        if relative not in self._mtimes:
            try:
                info = os.stat(self.path(relative))
                self._mtimes[relative] = info.st_mtime_ns if stat.S_ISREG(info.st_mode) else None
            except (ValueError, OSError):
                self._mtimes[relative] = None
        return self._mtimes[relative]
