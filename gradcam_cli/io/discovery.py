"""Which files a run reads, in a deterministic order, streamed (never listing the world).

An input is a folder (walked recursively in sorted order, hidden entries skipped), a single image file,
a `.zip`, `.tar`, `.tar.gz`/`.tgz` archive (read member by member, never unpacked to disk), or "-"
(newline-separated paths on stdin, named relative to `--relative-to DIR` or the working directory). Every
source gets a record `path` (POSIX, relative to its input root) that is safe to join under the output
folder: no absolute names, no `..`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import stat
import sys
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from gradcam_cli.errors import InputError

STDIN = "-"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class ImageSource:
    """One image to process: where it is and what it is called in the outputs."""

    source: str  # absolute path on disk (the archive's, for archive members)
    path: str  # POSIX path shown in records and used for output names
    file_size: int | None = None
    mtime_ns: int | None = None
    archive: str | None = None  # absolute archive path, for members
    member: str | None = None  # member name inside the archive, as stored
    data: bytes | None = None  # tar members are read in order by discovery (no random access in .tar.gz)
    error: tuple[str, str] | None = None  # known unreadable before decoding (e.g. a link member)
    known_sha256: str | None = None  # set by resume: skip the image if its bytes still hash to this


MIB = 1 << 20


@dataclass(frozen=True)
class Filters:
    """What discovery keeps: extensions, include/exclude globs on the relative path, symlinks; and the
    largest file it lets through to be read (`max_file_bytes`, input.max_file_mb)."""

    extensions: tuple[str, ...]
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    follow_symlinks: bool = True
    max_file_bytes: int | None = None

    def too_large(self, size: int | None) -> tuple[str, str] | None:
        """The error of a file of `size` bytes over the limit (known from its header or stat, before reading)."""
        if self.max_file_bytes is None or size is None or size <= self.max_file_bytes:
            return None
        return (
            "FileTooLarge",
            f"{size} bytes ({size / MIB:.1f} MiB) is over input.max_file_mb ({self.max_file_bytes / MIB:g} MiB); "
            "not read. Raise input.max_file_mb if such files are images to explain",
        )

    def reason_to_ignore(self, rel: str) -> str | None:
        if os.path.splitext(rel)[1].lower() not in self.extensions:
            return "not an image extension"
        if self.include and not any(fnmatch.fnmatchcase(rel, pattern) for pattern in self.include):
            return "not matched by input.include"
        if any(fnmatch.fnmatchcase(rel, pattern) for pattern in self.exclude):
            return "matched by input.exclude"
        return None


Ignored = Callable[[str, str], None]  # (path, reason) for --dry-run


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES) and os.path.isfile(path)


def check_inputs(inputs: Iterable[str]) -> list[str]:
    """Fail early (exit 2) on inputs that do not exist, before any work or any write."""
    checked = list(inputs)
    if not checked:
        raise InputError("no --input given. Pass a folder, an image file, an archive, or - to read paths from stdin.")
    if checked.count(STDIN) > 1:
        raise InputError("'-' (stdin) can be given as --input only once.")
    for item in checked:
        if item != STDIN and not os.path.exists(item):
            raise InputError(f"input not found: {item}. Pass an existing folder, image file, archive, or -.")
        if item != STDIN and is_archive(item):
            check_archive(item)
    return checked


# What reading a damaged archive raises (a truncated gzip stream is an EOFError, a bad deflate block zlib.error).
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, ValueError)


def check_archive(path: str) -> None:
    """An archive --input must open (its index, or its first header) before anything is written."""
    try:
        if path.lower().endswith(".zip"):
            with zipfile.ZipFile(path):
                return
        with tarfile.open(path, mode="r:*") as handle:
            handle.next()  # the first header: random bytes with a .tar name fail here
    except ARCHIVE_ERRORS as exc:
        kind = "zip" if path.lower().endswith(".zip") else "tar"
        reason = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
        raise InputError(
            f"cannot open the archive {path}: it is not a readable {kind} archive ({reason}). Check that the file "
            "is complete (not empty or cut short), or pass the folder of its images instead."
        ) from None


def _escape_surrogate(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8 (Python's surrogateescape)
        return f"%{code - 0xDC00:02X}"
    return f"%u{code:04X}" if 0xD800 <= code <= 0xDFFF else char


def printable_path(text: str) -> str:
    """`text` as valid UTF-8, for records and output names: a file name byte that is not UTF-8 becomes
    %XX (b"caf\\xe9.jpg" is "caf%E9.jpg"). The image itself is still read by its real name."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(_escape_surrogate(char) for char in text)
    return text


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


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


RUN_INFO_FILE, MANIFEST_FILE = "run.json", "manifest.json"  # io/manifest.py's names (kept in step by a test)
_OUR_MANIFEST = re.compile(rb'"tool"\s*:\s*\{\s*"name"\s*:\s*"gradcam-cli"')
MARKER_READ_LIMIT = 1 << 20  # a header's worth: our run.json and the manifest's `tool` come early


def gradcam_run_marker(folder: Path, names: set[str]) -> str | None:
    """Which of our files makes `folder` a gradcam output folder, or None: a run.json with `config_hash`
    and `config`, or a manifest.json whose `tool.name` is gradcam-cli (files of other tools by these names
    do not count). `names` are the folder's entries (already listed by the walk)."""
    if RUN_INFO_FILE in names:
        try:
            with open(folder / RUN_INFO_FILE, "rb") as handle:
                info = json.loads(handle.read(MARKER_READ_LIMIT))
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) and "config_hash" in info and "config" in info:
            return RUN_INFO_FILE
    if MANIFEST_FILE in names:
        try:
            with open(folder / MANIFEST_FILE, "rb") as handle:
                head = handle.read(MARKER_READ_LIMIT)
        except OSError:
            return None
        if _OUR_MANIFEST.search(head):
            return MANIFEST_FILE
    return None


def _walk(
    root: Path, base: Path, filters: Filters, chain: set[tuple[int, int]], exclude: Path | None, ignored: Ignored | None
) -> Iterator[tuple[Path, os.stat_result | None]]:
    """Depth-first, sorted by name, hidden entries skipped, symlinked folders followed without loops.

    Iterative (a stack of open folders), so folders nested thousands deep do not hit the recursion limit;
    `chain` holds the identities of the folders on the current path (a loop is a folder seen on it)."""
    stack: list[tuple[tuple[int, int], Iterator[os.DirEntry[str]]]] = []
    excluded = _identity(exclude) if exclude is not None else None  # compared by inode: no resolve() per folder

    def enter(folder: Path) -> None:
        try:
            info = folder.stat()
        except OSError:
            return
        identity = (info.st_dev, info.st_ino)
        if identity == excluded:
            return  # our own output folder inside an input folder: never read results back as inputs
        if identity in chain:
            return  # a symlink loop
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            return
        if stack:  # below the input root: another run's output folder (an earlier -o) holds no inputs
            marker = gradcam_run_marker(folder, {entry.name for entry in entries})
            if marker is not None:
                if ignored:
                    ignored(
                        printable_path(folder.relative_to(base).as_posix()), f"a gradcam output folder, by its {marker}"
                    )
                return
        chain.add(identity)
        stack.append((identity, iter(entries)))

    enter(root)
    while stack:
        identity, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            chain.discard(identity)
            continue
        rel = Path(entry.path).relative_to(base).as_posix()
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and not filters.follow_symlinks:
            if ignored:
                ignored(printable_path(rel), "a symlink (input.follow_symlinks is false)")
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            enter(Path(entry.path))
            continue
        reason = filters.reason_to_ignore(rel)
        if reason:
            if ignored:
                ignored(printable_path(rel), reason)
            continue
        try:
            stat_info: os.stat_result | None = entry.stat()
        except OSError:
            stat_info = None  # a broken symlink: reading it gives the error record
        yield Path(entry.path), stat_info


def _member_path(name: str, archive_name: str, filters: Filters, ignored: Ignored | None) -> str | None:
    """A member's safe relative path, or None when it is hidden or filtered out."""
    rel = safe_relpath(name)
    if not rel:
        return None
    reason = "hidden" if rel.split("/")[-1].startswith(".") else filters.reason_to_ignore(rel)
    if reason:
        if ignored:
            ignored(printable_path(f"{archive_name}/{rel}"), reason)
        return None
    return rel


def _archive_break(source: str, exc: BaseException) -> ImageSource:
    """The record of an archive that broke while it was read; the members before the break keep theirs."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    message = f"the archive is damaged or cut short, members after this point were not read: {reason}"
    return ImageSource(source=source, path="", archive=source, error=("ArchiveError", message))


def _unique_members(sources: Iterator[ImageSource]) -> Iterator[ImageSource]:
    """A name stored twice in one archive gets `name~2` (as stdin paths do), so outputs never collide."""
    seen: set[str] = set()
    for source in sources:
        path, n = source.path, 2
        while path in seen:
            path, n = f"{source.path}~{n}", n + 1
        seen.add(path)
        yield source if path == source.path else replace(source, path=path)


def _archive_sources(archive: Path, filters: Filters, ignored: Ignored | None) -> Iterator[ImageSource]:
    """Members of a zip or tar archive, in stored order, never extracted to disk; a break ends them with
    an ArchiveError source for the archive itself (path "")."""
    members = _zip_members if archive.name.lower().endswith(".zip") else _tar_members
    try:
        yield from _unique_members(members(archive, filters, ignored))
    except ARCHIVE_ERRORS as exc:
        yield _archive_break(str(archive), exc)


def _zip_members(archive: Path, filters: Filters, ignored: Ignored | None) -> Iterator[ImageSource]:
    source = str(archive)
    with zipfile.ZipFile(archive) as handle:
        stored = Counter(info.filename for info in handle.infolist())
        for info in handle.infolist():
            if info.is_dir():
                continue
            rel = _member_path(info.filename, archive.name, filters, ignored)
            if rel is None:
                continue
            is_link = stat.S_ISLNK(info.external_attr >> 16)
            error = ("ArchiveLink", "symbolic link members are not followed") if is_link else None
            error = error or filters.too_large(info.file_size)  # the size its header declares
            yield ImageSource(
                source=source,
                path=rel,
                file_size=info.file_size,
                mtime_ns=int(datetime(*info.date_time, tzinfo=timezone.utc).timestamp() * 1e9),
                archive=source,
                member=info.filename,
                # reading by name gives the last of the members stored under it: read a repeated one here
                data=handle.read(info) if stored[info.filename] > 1 and error is None else None,
                error=error,
            )


def _tar_members(archive: Path, filters: Filters, ignored: Ignored | None) -> Iterator[ImageSource]:
    source = str(archive)
    with tarfile.open(archive, mode="r:*") as handle:
        for info in handle:
            if info.isdir():
                continue
            rel = _member_path(info.name, archive.name, filters, ignored)
            if rel is None:
                continue
            common = {"source": source, "path": rel, "archive": source, "member": info.name}
            if not info.isfile():
                kind = "link" if (info.issym() or info.islnk()) else "special file"
                yield ImageSource(**common, error=("ArchiveLink", f"{kind} members are not followed"))
                continue
            stamp = {"file_size": info.size, "mtime_ns": int(info.mtime * 1e9)}
            oversize = filters.too_large(info.size)  # from the member's header: its bytes are never read
            if oversize is not None:
                yield ImageSource(**common, **stamp, error=oversize)
                continue
            # Not read here: `read_tar_members` reads the bytes of the members a run will process, while the
            # walk stands at this member (a .tar.gz has no random access); skipped ones and --dry-run never are.
            _WALKING_TARS[source] = (handle, info)
            try:
                yield ImageSource(**common, **stamp)
            finally:
                _WALKING_TARS.pop(source, None)


# The tar archives being walked now, and the member each stands at: {archive path: (handle, member)}.
_WALKING_TARS: dict[str, tuple[tarfile.TarFile, tarfile.TarInfo]] = {}


def read_tar_members(sources: Iterable[ImageSource]) -> Iterator[ImageSource]:
    """Tar members' bytes, read as each member comes through (after resume and --limit decided to keep it);
    a member that breaks while read is its error record."""
    for source in sources:
        walking = _WALKING_TARS.get(source.archive or "") if source.data is None and source.error is None else None
        if walking is not None and walking[1].name == source.member:
            handle, info = walking
            try:
                extracted = handle.extractfile(info)
                source = replace(source, data=extracted.read() if extracted is not None else b"")
            except ARCHIVE_ERRORS as exc:
                source = replace(source, error=_archive_break(source.source, exc).error)
        yield source


def _below(path: str, root: str) -> str | None:
    """`path` relative to `root` when it lies below it (both absolute), else None."""
    relative = os.path.relpath(path, root)
    return None if relative in (".", "..") or relative.startswith("../") else relative


def _stdin_sources(stream: TextIO, relative_to: str | None = None) -> Iterator[tuple[str, str]]:
    """(absolute path, record path) per line: relative to `relative_to` (--relative-to) when the path lies
    below it, as `-i DIR` would name it; otherwise relative to the working directory when below it, else the
    absolute path without its leading `/`."""
    cwd = os.getcwd()
    root = os.path.abspath(relative_to) if relative_to is not None else None
    for line in stream:
        text = line.strip()
        if not text:
            continue
        absolute = os.path.abspath(text)
        shown = None
        if root is not None:  # the same folder reached through a symlink counts too
            shown = _below(absolute, root) or _below(os.path.realpath(absolute), os.path.realpath(root))
        if shown is None:
            relative = os.path.relpath(absolute, cwd)
            shown = relative if not relative.startswith("..") else absolute.lstrip("/")
        yield absolute, safe_relpath(shown)


def check_relative_to(relative_to: str | os.PathLike[str] | None, inputs: Iterable[str]) -> None:
    """`--relative-to DIR` names the paths read from stdin: it needs `-i -` and an existing folder (exit 2)."""
    if relative_to is None:
        return
    if STDIN not in list(inputs):
        raise InputError(
            f"--relative-to {relative_to} names the paths read from stdin, and no --input is '-': a folder input is "
            "already named relative to itself. Drop --relative-to, or pass -i - with the paths on stdin."
        )
    if not os.path.isdir(relative_to):
        raise InputError(
            f"--relative-to {relative_to} is not a folder: give the folder the paths on stdin lie below "
            "(e.g. the folder you ran `find` on)."
        )


def _file_source(source: str, path: str, filters: Filters | None = None) -> ImageSource:
    try:
        info = os.stat(source)
    except OSError:
        return ImageSource(source=source, path=path)
    error = filters.too_large(info.st_size) if filters is not None else None
    return ImageSource(source=source, path=path, file_size=info.st_size, mtime_ns=info.st_mtime_ns, error=error)


def discover(
    inputs: list[str],
    extensions: tuple[str, ...] | Filters,
    stdin: TextIO | None = None,
    exclude: Path | None = None,
    ignored: Ignored | None = None,
    relative_to: str | os.PathLike[str] | None = None,
) -> Iterator[ImageSource]:
    """Yield every image source of the inputs in order; paths are unique within one run.

    `exclude` (the output folder) is never walked into; `ignored` is told about skipped files; paths on
    stdin below `relative_to` (--relative-to) are named relative to it, as a walk of that folder names them.
    """
    filters = extensions if isinstance(extensions, Filters) else Filters(tuple(extensions))
    labels = _root_labels(inputs)
    stdin_paths_seen: set[str] = set()
    for index, item in enumerate(inputs):
        prefix = labels.get(index)
        sources: Iterable[ImageSource]
        if item == STDIN:
            root = os.fspath(relative_to) if relative_to is not None else None
            sources = (_file_source(src, rel, filters) for src, rel in _stdin_sources(stdin or sys.stdin, root))
        elif os.path.isdir(item):
            root = Path(item).resolve()
            sources = (
                ImageSource(
                    source=str(path),
                    path=path.relative_to(root).as_posix(),
                    file_size=info.st_size if info else None,
                    mtime_ns=info.st_mtime_ns if info else None,
                    error=filters.too_large(info.st_size if info else None),
                )
                for path, info in _walk(root, root, filters, set(), exclude, ignored)
            )
        elif is_archive(item):
            archive = Path(item).resolve()
            labelled = prefix or archive.name  # members are named <archive>/<member>
            sources = (
                replace(s, path=f"{labelled}/{s.path}" if s.path else labelled)  # "": the archive's own record
                for s in _archive_sources(archive, filters, ignored)
            )
            prefix = None
        else:
            sources = [_file_source(str(Path(item).resolve()), Path(item).name, filters)]
        for source in sources:
            path = f"{prefix}/{source.path}" if prefix else source.path
            if item == STDIN:
                # Paths on stdin may repeat; keep names unique so outputs never collide.
                base, n = path, 2
                while path in stdin_paths_seen:
                    path, n = f"{base}~{n}", n + 1
                stdin_paths_seen.add(path)
            path = printable_path(path)  # records are UTF-8 JSON; `source` keeps the real name for reading
            yield source if path == source.path else replace(source, path=path)
