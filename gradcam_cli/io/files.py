"""Atomic file writes, and the one check that a path stays inside a folder: a file appears under its final
name only when complete, and never outside the output folder.

A temporary file is `.<name>.<random>.tmp` next to its target, or `.<hash>.<random>.tmp` when the name is
long (a file name has at most 255 bytes); `remove_stale_temp_files` deletes those a killed run left.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from gradcam_cli.errors import ConfigError

NAME_MAX = 255  # bytes in one file name component (Linux, macOS)
_TEMP_NAME_ROOM = 1 + 1 + 8 + 4  # "." + "." + mkstemp's 8 random characters + ".tmp"
# What atomic_open's temporary files look like (mkstemp draws from [a-z0-9_]).
TEMP_FILE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


class OutsideFolderError(ConfigError, ValueError):
    """A path that would land outside the output folder (through `..` or a symlinked folder); exit 2."""


def _temp_prefix(name: str) -> str:
    if len(os.fsencode(name)) + _TEMP_NAME_ROOM <= NAME_MAX:
        return f".{name}."
    return f".{hashlib.sha256(os.fsencode(name)).hexdigest()[:16]}."


def _file_mode() -> int:
    umask = os.umask(0o022)  # read it (there is no getter) and put it straight back
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def make_folders(folder: Path) -> None:
    """`folder.mkdir(parents=True, exist_ok=True)` without recursion: inputs may nest thousands deep."""
    missing: list[Path] = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for each in reversed(missing):
        each.mkdir(exist_ok=True)


@contextmanager
def atomic_open(path: Path, durable: bool = False) -> Iterator[IO[bytes]]:
    """A binary handle on a temporary file in `path`'s folder, renamed over `path` on success.

    `durable` also fsyncs before the rename, for files whose loss would lose work (the manifest).
    """
    make_folders(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
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
        raise OutsideFolderError(
            f"refusing to write outside the output folder {base}: {relative!r} leads to {target}. A folder "
            "below the output folder is a symbolic link (or the name holds '..'); remove the link, or choose "
            "another --output."
        )
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
            raise OutsideFolderError(f"refusing a path outside the output folder: {relative!r}.")
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


def remove_stale_temp_files(folder: Path) -> list[str]:
    """Delete the temporary files of atomic_open that a killed run left in `folder` (top level only).

    Call it only while no other run can be writing there (the exclusive folder lock is held)."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if TEMP_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except OSError:
                pass  # not ours to insist on; the run does not need it gone
    return removed
