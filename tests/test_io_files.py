"""io/files.py: atomic writes (short temporary names), stale temporary files, the inside-a-folder check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gradcam_cli.errors import ConfigError
from gradcam_cli.io.files import atomic_write_bytes, inside, make_folders, remove_stale_temp_files
from tests.conftest import remove_tree


def test_a_238_byte_name_is_written_atomically(tmp_path: Path) -> None:
    name = "x" * 234 + ".jpg.png"  # 242 bytes: ".<name>.<random>.tmp" would pass 255
    atomic_write_bytes(tmp_path / name, b"data")
    assert (tmp_path / name).read_bytes() == b"data"
    assert os.listdir(tmp_path) == [name]


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path: Path) -> None:
    stale = [".manifest.json.k3j_9abc.tmp", ".records.jsonl.abcdefgh.tmp", ".0123456789abcdef.zzzzzzzz.tmp"]
    kept = ["manifest.json", "notes.tmp", ".manifest.json.short.tmp", ".lock"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_make_folders_needs_no_recursion(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d"] * 1100)
    make_folders(deep)
    assert deep.is_dir()
    remove_tree(tmp_path / "d")


def test_inside_a_symlinked_folder_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "sub")
    with pytest.raises(ConfigError, match="symbolic link"):
        inside(tmp_path / "out", "sub/a.png")
    with pytest.raises(ValueError):  # callers that catch ValueError still do
        inside(tmp_path / "out", "../a.png")
