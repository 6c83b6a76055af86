from __future__ import annotations

import io
import os
import random
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from gradcam_cli.errors import InputError
from gradcam_cli.io.discovery import check_inputs, discover, read_tar_members, safe_relpath

EXTS = (".jpg", ".png")


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_folder_walk_is_sorted_recursive_and_skips_hidden(tmp_path: Path) -> None:
    _touch(tmp_path, "b.jpg", "a.PNG", "notes.txt", ".hidden.jpg", ".cache/x.jpg", "sub/c.jpg", "sub/a.jpg")
    paths = [s.path for s in discover([str(tmp_path)], EXTS)]
    assert paths == ["a.PNG", "b.jpg", "sub/a.jpg", "sub/c.jpg"]


def test_single_file_and_several_roots_get_distinct_paths(tmp_path: Path) -> None:
    _touch(tmp_path, "one/x.jpg", "two/one/x.jpg")
    sources = list(discover([str(tmp_path / "one"), str(tmp_path / "two" / "one")], EXTS))
    assert [s.path for s in sources] == ["one/x.jpg", "one~2/x.jpg"]
    single = list(discover([str(tmp_path / "one" / "x.jpg")], EXTS))
    assert single[0].path == "x.jpg" and Path(single[0].source).is_absolute()


def test_stdin_paths_are_safe_and_unique(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path, "in/x.jpg")
    monkeypatch.chdir(tmp_path / "in")
    stdin = io.StringIO(f"x.jpg\n\n{tmp_path / 'in' / 'x.jpg'}\n../in/x.jpg\n/etc/passwd\n")
    paths = [s.path for s in discover(["-"], EXTS, stdin=stdin)]
    assert paths == ["x.jpg", "x.jpg~2", "x.jpg~3", "etc/passwd"]
    assert all(".." not in p.split("/") and not p.startswith("/") for p in paths)


def test_stdin_paths_relative_to_a_folder_are_named_as_its_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _touch(tmp_path, "data/archive/a.jpg", "data/archive/sub/b.png", "elsewhere/c.jpg")
    archive = tmp_path / "data" / "archive"
    monkeypatch.chdir(tmp_path)
    walked = list(discover([str(archive)], EXTS))
    listing = "".join(f"{s.source}\n" for s in walked)  # what `find /data/archive -type f` prints
    assert [s.path for s in discover(["-"], EXTS, stdin=io.StringIO(listing))] == [
        "data/archive/a.jpg",
        "data/archive/sub/b.png",
    ]  # without --relative-to: relative to the working directory, as before
    named = list(discover(["-"], EXTS, stdin=io.StringIO(listing), relative_to=archive))
    assert [(s.path, s.source, s.file_size) for s in named] == [(s.path, s.source, s.file_size) for s in walked]
    os.symlink(archive, tmp_path / "link")  # the same folder through a symlink
    through_link = io.StringIO("link/a.jpg\nelsewhere/c.jpg\n")
    paths = [s.path for s in discover(["-"], EXTS, stdin=through_link, relative_to=archive)]
    assert paths == ["a.jpg", "elsewhere/c.jpg"]  # a path outside the folder keeps the default name


def test_relative_to_needs_stdin_and_a_folder(tmp_path: Path) -> None:
    from gradcam_cli.io.discovery import check_relative_to

    check_relative_to(None, [str(tmp_path)])
    check_relative_to(tmp_path, ["-"])
    with pytest.raises(InputError, match="needs|stdin"):
        check_relative_to(tmp_path, [str(tmp_path)])
    with pytest.raises(InputError, match="not a folder"):
        check_relative_to(tmp_path / "missing", ["-"])


def test_symlink_loops_terminate(tmp_path: Path) -> None:
    _touch(tmp_path, "a/x.jpg")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    assert [s.path for s in discover([str(tmp_path)], EXTS)] == ["a/x.jpg"]


def test_output_folder_inside_input_is_not_read(tmp_path: Path) -> None:
    _touch(tmp_path, "x.jpg", "out/heatmaps/x.jpg.png")
    paths = [s.path for s in discover([str(tmp_path)], EXTS, exclude=(tmp_path / "out").resolve())]
    assert paths == ["x.jpg"]


def test_other_gradcam_output_folders_inside_an_input_are_not_read(tmp_path: Path) -> None:
    import json

    from gradcam_cli.io import manifest

    _touch(tmp_path, "x.jpg", "old-out/heatmaps/x.jpg.png", "older/overlays/x.jpg.jpg", "app/y.jpg", "notes/z.jpg")
    (tmp_path / "old-out" / "run.json").write_text(json.dumps({"config_hash": "ab" * 32, "config": {}}))
    (tmp_path / "older" / "manifest.json").write_text(
        json.dumps({"tool": {"name": "gradcam-cli", "version": "0.1.0"}, "images": []}, indent=2)
    )
    (tmp_path / "app" / "manifest.json").write_text(json.dumps({"name": "a web app", "icons": []}))  # not ours
    (tmp_path / "notes" / "run.json").write_text(json.dumps({"steps": 3}))
    ignored: list[tuple[str, str]] = []
    paths = [s.path for s in discover([str(tmp_path)], EXTS, ignored=lambda p, why: ignored.append((p, why)))]
    assert paths == ["app/y.jpg", "notes/z.jpg", "x.jpg"]
    assert [(p, why) for p, why in ignored if "gradcam" in why] == [
        ("old-out", "a gradcam output folder, by its run.json"),
        ("older", "a gradcam output folder, by its manifest.json"),
    ]
    from gradcam_cli.io import discovery

    assert (discovery.RUN_INFO_FILE, discovery.MANIFEST_FILE) == (manifest.RUN_NAME, manifest.MANIFEST_NAME)


def test_files_over_max_file_mb_are_errors_decided_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradcam_cli.io.discovery import MIB, Filters

    folder = tmp_path / "in"
    _touch(folder, "small.jpg")
    (folder / "big.jpg").write_bytes(b"\xff\xd8" + bytes(2 * MIB))
    big = bytes(2 * MIB)
    with zipfile.ZipFile(tmp_path / "z.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.png", big)  # stored small, declared 2 MiB
        archive.writestr("twice.png", big)
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("twice.png", big)  # a repeated name is read by discovery: not when too large
        archive.writestr("small.png", b"x")
    with tarfile.open(tmp_path / "t.tar.gz", "w:gz") as archive:
        for name, data in (("big.png", big), ("small.png", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    limit = Filters(EXTS, max_file_bytes=1 * MIB)
    real_read = zipfile.ZipFile.read
    monkeypatch.setattr(
        zipfile.ZipFile,
        "read",
        lambda self, name, *a: pytest.fail("read") if "twice" in str(name) else real_read(self, name, *a),
    )
    stdin = io.StringIO(f"{folder / 'big.jpg'}\n")
    inputs = [str(folder), str(tmp_path / "z.zip"), str(tmp_path / "t.tar.gz"), str(folder / "big.jpg"), "-"]
    sources = {s.path: s for s in read_tar_members(discover(inputs, limit, stdin=stdin, relative_to=folder))}
    too_large = sorted(path for path, s in sources.items() if s.error and s.error[0] == "FileTooLarge")
    assert too_large == [
        "big.jpg/big.jpg",
        "in/big.jpg",
        "stdin/big.jpg",
        "t.tar.gz/big.png",
        "z.zip/big.png",
        "z.zip/twice.png",
        "z.zip/twice.png~2",
    ]
    assert all(sources[path].data is None for path in too_large)  # no member's bytes were read
    assert "over input.max_file_mb (1 MiB)" in sources["in/big.jpg"].error[1]
    assert sources["in/small.jpg"].error is None and sources["t.tar.gz/small.png"].data == b"x"
    assert all(s.error is None for s in discover([str(folder)], Filters(EXTS)))  # no limit: none


def test_check_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        check_inputs([str(tmp_path / "missing")])
    with pytest.raises(InputError, match="no --input"):
        check_inputs([])
    with pytest.raises(InputError, match="only once"):
        check_inputs(["-", "-"])


def test_safe_relpath() -> None:
    assert safe_relpath("/a/../b//./c.jpg") == "a/__/b/c.jpg"


def test_folders_nested_deeper_than_the_recursion_limit(
    tmp_path: Path, deep_folder: Callable[[Path, int], Path]
) -> None:
    deep = deep_folder(tmp_path / "in", 1100)
    (deep / "x.jpg").write_bytes(b"x")
    (tmp_path / "in" / "y.jpg").write_bytes(b"x")
    paths = [s.path for s in discover([str(tmp_path / "in")], EXTS)]
    assert paths == ["d/" * 1100 + "x.jpg", "y.jpg"]  # depth first, then the rest of the folder


def test_a_file_name_that_is_not_utf8_gets_an_escaped_path(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path)
    os.close(os.open(folder + b"/caf\xe9.jpg", os.O_CREAT | os.O_WRONLY))
    (source,) = discover([str(tmp_path)], EXTS)
    assert source.path == "caf%E9.jpg"
    assert os.fsencode(source.source) == folder + b"/caf\xe9.jpg"  # still read by its real name


def _tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as handle:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("name", "content"), [("empty.zip", b""), ("bad.zip", b"PK\x03\x04" + bytes(60)), ("random.tar", None)]
)
def test_an_archive_that_cannot_be_opened_is_an_input_error(tmp_path: Path, name: str, content: bytes | None) -> None:
    archive = tmp_path / name
    archive.write_bytes(content if content is not None else random.Random(0).randbytes(4096))
    with pytest.raises(InputError, match=f"cannot open the archive .*{name}"):
        check_inputs([str(archive)])


def test_a_truncated_tar_gz_keeps_its_complete_members_and_records_the_break(tmp_path: Path) -> None:
    rng = random.Random(0)
    whole = _tar(tmp_path / "whole.tar.gz", [(f"m{i}.jpg", rng.randbytes(20000)) for i in range(3)], "w:gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    check_inputs([str(cut)])  # its start is readable: the run goes ahead
    sources = list(read_tar_members(discover([str(cut)], EXTS)))
    # m0 is whole; m1 is cut in its bytes (its own ArchiveError); then the break of the archive itself
    assert [s.path for s in sources][0] == "cut.tar.gz/m0.jpg" and sources[-1].path == "cut.tar.gz"
    assert len(sources[0].data or b"") == 20000 and sources[0].error is None
    assert all(s.error is not None and s.error[0] == "ArchiveError" for s in sources[1:])


def test_a_name_stored_twice_in_an_archive_gets_a_distinct_path(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "twice.tar", [("a.jpg", b"one"), ("b.jpg", b"b"), ("a.jpg", b"two")])
    sources = list(read_tar_members(discover([str(archive)], EXTS)))
    assert [(s.path, s.data) for s in sources] == [
        ("twice.tar/a.jpg", b"one"),
        ("twice.tar/b.jpg", b"b"),
        ("twice.tar/a.jpg~2", b"two"),
    ]
    with zipfile.ZipFile(tmp_path / "twice.zip", "w") as handle, pytest.warns(UserWarning, match="Duplicate name"):
        handle.writestr("a.jpg", b"one")
        handle.writestr("a.jpg", b"two")
    zipped = [(s.path, s.data) for s in discover([str(tmp_path / "twice.zip")], EXTS)]
    assert zipped == [("twice.zip/a.jpg", b"one"), ("twice.zip/a.jpg~2", b"two")]  # each its own bytes
