"""runner/todo.py: the one chain of what is still to do, for runs and for --dry-run, without the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradcam_cli.config import parse_config
from gradcam_cli.io.discovery import ImageSource
from gradcam_cli.io.manifest import DoneImage
from gradcam_cli.runner.shards import Shard
from gradcam_cli.runner.todo import dry_run, still_to_do
from tests.conftest import random_image


def _folder(tmp_path: Path, count: int = 6) -> Path:
    for index in range(count):
        random_image(tmp_path / "images" / f"{index}.png", 16, 16, seed=index)
    return tmp_path / "images"


def _config(tmp_path: Path, tiny_config: dict[str, Any]) -> Any:
    return parse_config(tiny_config, tmp_path)


def test_shard_resume_and_limit_in_one_chain(tmp_path: Path, tiny_config: dict[str, Any]) -> None:
    folder = _folder(tmp_path)
    config = _config(tmp_path, tiny_config)
    shard = Shard(0, 2)
    mine = [f"{i}.png" for i in range(6) if shard.owns(f"{i}.png")]
    first = folder / mine[0]
    done = {mine[0]: DoneImage("0" * 64, first.stat().st_size, first.stat().st_mtime_ns)}
    skipped: list[str] = []
    elsewhere: list[str] = []
    todo, walked_all = still_to_do(
        config,
        [str(folder)],
        tmp_path / "out",
        done,
        shard,
        None,
        None,
        lambda source: skipped.append(source.path),
        lambda source: elsewhere.append(source.path),
    )
    assert not walked_all()
    assert [source.path for source in todo] == mine[1:] and walked_all()
    assert skipped == mine[:1] and sorted(elsewhere + mine) == [f"{i}.png" for i in range(6)]

    limited, walked_all = still_to_do(config, [str(folder)], tmp_path / "out", {}, None, 2, None, lambda _: None)
    assert [source.path for source in limited] == ["0.png", "1.png"] and not walked_all()  # cut by --limit


def test_a_changed_file_carries_its_old_hash_for_the_workers(tmp_path: Path, tiny_config: dict[str, Any]) -> None:
    folder = _folder(tmp_path, 1)
    done = {"0.png": DoneImage("ab" * 32, 1, 1)}  # size and mtime differ: re-hash, maybe skip
    todo, _ = still_to_do(
        _config(tmp_path, tiny_config), [str(folder)], tmp_path / "out", done, None, None, None, lambda _: None
    )
    (source,) = list(todo)
    assert isinstance(source, ImageSource) and source.known_sha256 == "ab" * 32


def test_dry_run_walks_the_same_chain(tmp_path: Path, tiny_config: dict[str, Any]) -> None:
    folder = _folder(tmp_path)
    (folder / "notes.txt").write_text("not an image")
    lines: list[str] = []
    counts = dry_run(_config(tmp_path, tiny_config), [str(folder)], None, True, None, lines.append, Shard(1, 2))
    assert counts["process"] + counts["other_shards"] == 6 and counts["ignore"] == 1
    assert sum(line.startswith("process") for line in lines) == counts["process"]


def test_dry_run_through_folders_nested_1100_deep(
    tmp_path: Path, tiny_config: dict[str, Any], deep_folder: Callable[[Path, int], Path]
) -> None:
    folder = deep_folder(tmp_path / "deep", 1100)
    (folder / "x.png").write_bytes(b"x")
    lines: list[str] = []
    counts = dry_run(_config(tmp_path, tiny_config), [str(tmp_path / "deep")], None, False, None, lines.append)
    assert counts["process"] == 1 and lines == [f"process  {'d/' * 1100}x.png"]


def test_tar_members_are_read_only_when_they_will_be_processed(tmp_path: Path, tiny_config: dict[str, Any]) -> None:
    """Discovery reads no member contents (a --dry-run over a .tar.gz read every byte); a run reads only the
    members resume and --limit keep, as the walk reaches them."""
    import io
    import tarfile

    archive = tmp_path / "batch.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for index in range(3):
            picture = random_image(tmp_path / "src" / f"{index}.png", 16, 16, seed=index).read_bytes()
            info = tarfile.TarInfo(f"{index}.png")
            info.size = len(picture)
            tar.addfile(info, io.BytesIO(picture))
    config = _config(tmp_path, tiny_config)
    names = [f"batch.tar.gz/{i}.png" for i in range(3)]
    listed, _ = still_to_do(
        config, [str(archive)], tmp_path / "out", {}, None, None, None, lambda _: None, read_members=False
    )
    assert [(s.path, s.data) for s in listed] == [(name, None) for name in names]
    kept, _ = still_to_do(config, [str(archive)], tmp_path / "out", {}, None, 2, None, lambda _: None)
    found = list(kept)
    assert [s.path for s in found] == names[:2]
    assert [s.data for s in found] == [(tmp_path / "src" / f"{i}.png").read_bytes() for i in range(2)]
    lines: list[str] = []
    assert dry_run(config, [str(archive)], None, True, None, lines.append)["process"] == 3
