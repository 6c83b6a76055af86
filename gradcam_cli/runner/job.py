"""What `run()` hands a backend once the folder is locked and checked: one frozen bundle."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gradcam_cli.events import EventLog
from gradcam_cli.io.discovery import ImageSource
from gradcam_cli.io.manifest import DoneImage
from gradcam_cli.runner.options import RunOptions, RunSummary
from gradcam_cli.runner.todo import still_to_do

if TYPE_CHECKING:
    from gradcam_cli.runner.prepare import PreparedRun


@dataclass(frozen=True)
class RunJob:
    prepared: PreparedRun
    inputs: list[str]
    out_dir: Path
    done: dict[str, DoneImage]  # what earlier runs finished (resume)
    options: RunOptions
    events: EventLog
    records_path: Path  # records.jsonl, or the shard's own records file

    def todo(self, summary: RunSummary) -> tuple[Iterator[ImageSource], Callable[[], bool]]:
        """The images still to do, resume's skips counted in `summary` (see runner/todo.py)."""
        options = self.options
        return still_to_do(
            self.prepared.config,
            self.inputs,
            self.out_dir,
            self.done,
            options.shard,
            options.limit,
            options.stdin,
            lambda _: summary.count_skipped(1),
            relative_to=options.relative_to,
        )
