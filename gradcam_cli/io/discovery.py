"""Which files a run reads, in a deterministic order, streamed (never listing the world).

An input is a folder (walked recursively in sorted order, hidden entries skipped), a single image file,
or "-" (newline-separated paths on stdin). Every source gets a record `path` (POSIX, relative to its
input root) and an output `key` that is safe to join under the output folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gradcam_cli.errors import InputError

STDIN = "-"


@dataclass(frozen=True)
class ImageSource:
    """One image to process: where it is and what it is called in the outputs."""

    source: str  # absolute path on disk
    path: str  # POSIX path shown in records (relative to its input root)


def check_inputs(inputs: Iterable[str]) -> list[str]:
    """Fail early (exit 2) on inputs that do not exist, before any work or any write."""
    checked = list(inputs)
    if not checked:
        raise InputError("no --input given. Pass a folder, an image file, or - to read paths from stdin.")
    if checked.count(STDIN) > 1:
        raise InputError("'-' (stdin) can be given as --input only once.")
    for item in checked:
        if item != STDIN and not os.path.exists(item):
            raise InputError(f"input not found: {item}. Pass an existing folder, image file, or -.")
    return checked


def safe_relpath(path: str) -> str:
    """A POSIX relative path that cannot escape a folder it is joined to ('..' and roots removed)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join("__" if p == ".." else p for p in parts)


def _root_labels(inputs: list[str]) -> dict[int, str]:
    """With several inputs, prefix each input's paths with a distinct label (its base name)."""
    if len(inputs) < 2:
        return {}
    labels: dict[int, str] = {}
    used: set[str] = set()
    for index, item in enumerate(inputs):
        base = "stdin" if item == STDIN else (Path(item).resolve().name or "root")
        label, n = base, 2
        while label in used:
            label, n = f"{base}~{n}", n + 1
        used.add(label)
        labels[index] = label
    return labels


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(
    root: Path, extensions: tuple[str, ...], seen_dirs: set[tuple[int, int]], exclude: Path | None
) -> Iterator[Path]:
    """Depth-first, sorted by name, hidden entries skipped, symlinked folders followed once (no loops)."""
    if exclude is not None and root.resolve() == exclude:
        return  # our own output folder inside an input folder: never read results back as inputs
    try:
        stat = root.stat()
    except OSError:
        return
    identity = (stat.st_dev, stat.st_ino)
    if identity in seen_dirs:
        return
    seen_dirs.add(identity)
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        if _is_hidden(entry.name):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir:
            yield from _walk(Path(entry.path), extensions, seen_dirs, exclude)
        elif os.path.splitext(entry.name)[1].lower() in extensions:
            yield Path(entry.path)
    seen_dirs.discard(identity)  # only the current chain matters for loops; siblings may share targets


def _stdin_sources(stream: TextIO) -> Iterator[tuple[str, str]]:
    cwd = os.getcwd()
    for line in stream:
        text = line.strip()
        if not text:
            continue
        absolute = os.path.abspath(text)
        relative = os.path.relpath(absolute, cwd)
        shown = relative if not relative.startswith("..") else absolute.lstrip("/")
        yield absolute, safe_relpath(shown)


def discover(
    inputs: list[str], extensions: tuple[str, ...], stdin: TextIO | None = None, exclude: Path | None = None
) -> Iterator[ImageSource]:
    """Yield every image source of the inputs in order; paths are unique within one run.

    `exclude` (the output folder) is never walked into.
    """
    labels = _root_labels(inputs)
    stdin_paths_seen: set[str] = set()
    for index, item in enumerate(inputs):
        prefix = labels.get(index)
        if item == STDIN:
            pairs: Iterable[tuple[str, str]] = _stdin_sources(stdin or sys.stdin)
        elif os.path.isdir(item):
            root = Path(item).resolve()
            pairs = ((str(p), p.relative_to(root).as_posix()) for p in _walk(root, extensions, set(), exclude))
        else:
            pairs = [(str(Path(item).resolve()), Path(item).name)]
        for source, rel in pairs:
            path = f"{prefix}/{rel}" if prefix else rel
            if item == STDIN:
                # Paths on stdin may repeat; keep names unique so outputs never collide.
                base, n = path, 2
                while path in stdin_paths_seen:
                    path, n = f"{base}~{n}", n + 1
                stdin_paths_seen.add(path)
            yield ImageSource(source=source, path=path)
