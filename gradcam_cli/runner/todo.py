"""What a run still has to do: discovery, then this shard's images, then those resume does not skip, then
--limit; streamed. `gradcam run` and `gradcam run --dry-run` walk the same chain (no torch here)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TextIO

from gradcam_cli.config import Config
from gradcam_cli.io.discovery import Filters, Ignored, ImageSource, discover, read_tar_members
from gradcam_cli.io.manifest import RECORDS_NAME, DoneImage, load_done
from gradcam_cli.runner.resume import pending
from gradcam_cli.runner.shards import Shard


def filters_of(config: Config) -> Filters:
    return Filters(
        extensions=config.input.extensions,
        include=config.input.include,
        exclude=config.input.exclude,
        follow_symlinks=config.input.follow_symlinks,
        max_file_bytes=config.input.max_file_bytes,
    )


def in_shard(
    sources: Iterable[ImageSource], shard: Shard | None, elsewhere: Callable[[ImageSource], None] | None = None
) -> Iterator[ImageSource]:
    """The sources of one shard (all of them without --shard); `elsewhere` hears of the others."""
    for source in sources:
        if shard is None or shard.owns(source.path):
            yield source
        elif elsewhere is not None:
            elsewhere(source)


def limited(sources: Iterable[ImageSource], limit: int | None) -> Iterator[ImageSource]:
    for count, source in enumerate(sources):
        if limit is not None and count >= limit:
            return
        yield source


def still_to_do(
    config: Config,
    inputs: list[str],
    out_dir: Path,
    done: dict[str, DoneImage],
    shard: Shard | None,
    limit: int | None,
    stdin: TextIO | None,
    on_skip: Callable[[ImageSource], None],
    elsewhere: Callable[[ImageSource], None] | None = None,
    ignored: Ignored | None = None,
    relative_to: Path | None = None,
    read_members: bool = True,
) -> tuple[Iterator[ImageSource], Callable[[], bool]]:
    """The images still to do, streamed, and a function that says whether discovery went through to the
    end (a shard is complete only then). Resume's skips go to `on_skip`, other shards' images to
    `elsewhere`, files discovery leaves out to `ignored`; the output folder itself is never read back.
    Paths on stdin below `relative_to` (--relative-to) are named relative to it. Tar members' bytes are
    read only with `read_members` (a run; not --dry-run or a count), and only for the members kept."""
    walked = [False]

    def through(sources: Iterable[ImageSource]) -> Iterator[ImageSource]:
        yield from sources
        walked[0] = True

    sources = discover(inputs, filters_of(config), stdin, exclude=out_dir, ignored=ignored, relative_to=relative_to)
    todo = limited(through(pending(in_shard(sources, shard, elsewhere), done, on_skip)), limit)
    if read_members:
        todo = read_tar_members(todo)  # only the members that will be processed are read
    return todo, lambda: walked[0]


def dry_run(
    config: Config,
    inputs: list[str],
    stdin: TextIO | None,
    resume: bool,
    limit: int | None,
    echo: Callable[[str], None],
    shard: Shard | None = None,
    relative_to: Path | None = None,
) -> dict[str, int]:
    """Print what a run would process, skip (already done) and ignore, without loading the model.

    With a shard, only its images are listed; `other_shards` counts the rest."""
    out_dir = config.output.dir.resolve()
    done = load_done(out_dir / (shard.records_name if shard else RECORDS_NAME)) if resume else {}
    counts = {"process": 0, "skip": 0, "ignore": 0, "other_shards": 0}

    def elsewhere(_: ImageSource) -> None:
        counts["other_shards"] += 1

    def ignore(path: str, reason: str) -> None:
        counts["ignore"] += 1
        echo(f"ignore   {path}  ({reason})")

    def skip(source: ImageSource) -> None:
        counts["skip"] += 1
        echo(f"skip     {source.path}  (done)")

    todo, _ = still_to_do(
        config, inputs, out_dir, done, shard, limit, stdin, skip, elsewhere, ignore, relative_to, read_members=False
    )
    for source in todo:
        counts["process"] += 1
        note = "  (changed size or mtime: re-hashed, skipped if identical)" if source.known_sha256 else ""
        echo(f"process  {source.path}{note}")
    return counts
