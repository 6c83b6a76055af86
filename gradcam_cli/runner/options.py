"""What one invocation asks for (RunOptions) and what it did (RunSummary, whose exit code is the policy)."""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from gradcam_cli.errors import EXIT_IMAGES_FAILED, EXIT_OK, GradcamWarning
from gradcam_cli.events import EventLog
from gradcam_cli.runner.shards import Shard

STAGES = ("decode", "compute", "render", "encode")


@dataclass
class RunOptions:
    """Per-invocation choices that are not part of the (hashed) config."""

    inputs: list[str]
    limit: int | None = None
    fail_fast: bool = False
    quiet: bool = False
    stdin: TextIO | None = None
    resume: bool = True  # skip images an earlier run of the same config already explained
    overwrite: bool = False  # replace results of a different config instead of refusing
    events: EventLog | None = None
    shard: Shard | None = None  # process only this shard's images (runner/shards.py)
    backend: str = "local"  # where the CAMs are computed: local | ray (runner/backends.py; CLI --engine)
    ray_address: str | None = None  # an existing Ray cluster; None starts a local Ray instance
    ray_actors: int | None = None  # model-holding actors (None: one per GPU of the cluster, else 1)
    relative_to: Path | None = None  # stdin paths below it are named relative to it (--relative-to)


@dataclass
class RunSummary:
    total: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    out_dir: Path = field(default_factory=Path)
    manifest: Path | None = None
    interrupted_by: int | None = None  # the signal that stopped the run early
    # Wall-clock seconds the main loop spent per stage: waiting for decode workers, computing CAMs, handing
    # a batch's jobs to the render workers, and waiting for them. The largest is the bottleneck.
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    complete: bool = False  # went through every input: not interrupted, not cut by --limit or --fail-fast
    device: str | None = None  # where the CAMs ran, when not the driver's device (Ray actors)
    note: str | None = None  # e.g. a shard waiting for the others before the merge
    merge_error: str | None = None  # the last shard could not merge (see `gradcam merge`)
    nondeterministic_ops: list[str] = field(default_factory=list)  # ops torch has no deterministic kernel for
    folder: dict[str, int] | None = None  # the whole output folder after this run: total, ok, failed
    left: int | None = None  # images still to do when the run stopped early (None: unknown, e.g. stdin)
    warnings: list[str] = field(default_factory=list)  # what the run warned about (also in the manifest)
    metric_passes: int | None = None  # cam.metrics: the extra forward passes (one image each); None: no metrics

    @classmethod
    def start(cls, out_dir: Path) -> tuple[RunSummary, float]:
        """A fresh summary stamped now, and the perf_counter its `seconds` are measured from."""
        return cls(out_dir=out_dir, started_at=datetime.now(timezone.utc)), time.perf_counter()

    @property
    def exit_code(self) -> int:
        if self.interrupted_by is not None:
            return 128 + self.interrupted_by  # 130 for SIGINT, 143 for SIGTERM, as shells report them
        return EXIT_IMAGES_FAILED if self.failed else EXIT_OK

    def lap(self, stage: str, since: float) -> float:
        """Add the time since `since` to `stage`; returns now, the start of the next lap."""
        now = time.perf_counter()
        self.stage_seconds[stage] += now - since
        return now

    def count_skipped(self, skipped: int) -> None:
        self.skipped += skipped
        self.total += skipped

    def account(self, written: list[dict[str, Any]], events: EventLog, progress: Any, skipped: int = 0) -> None:
        """Count records made durable (and `skipped` images resume passed over) here, in the event log and
        in the progress bar."""
        for record in written:
            if record["status"] == "error":
                self.failed += 1
                events.emit("image_failed", path=record["path"], source=record["source"], error=record["error"])
            else:
                self.ok += 1
        self.count_skipped(skipped)
        self.total += len(written)
        if progress is not None:
            progress.update(len(written) + skipped)
            progress.set_postfix(
                ok=self.ok, failed=self.failed, skipped=self.skipped, **self._metric_postfix(), refresh=False
            )

    def count_metric_passes(self, passes: int) -> None:
        if self.metric_passes is not None:
            self.metric_passes += passes

    def _metric_postfix(self) -> dict[str, int]:
        return {} if self.metric_passes is None else {"metric_passes": self.metric_passes}

    def stop_after_batch(self, signum: int | None, fail_fast: bool, records: list[dict[str, Any]]) -> bool:
        """Whether to start no further batch: a signal came (noted as the interruption), or --fail-fast saw
        a failed image among the batch's records."""
        if signum is not None:
            self.interrupted_by = signum
            return True
        return fail_fast and any(record["status"] == "error" for record in records)

    def run_block(self) -> dict[str, Any]:
        """This run's counts, as the manifest's `run` holds them (its `summary` is the folder's totals)."""
        return {
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "complete": self.complete,
            "interrupted_by": self.interrupted_by,
            "left": self.left,
            **self._metric_postfix(),
        }

    def as_dict(self) -> dict[str, Any]:
        """`--json`: this run's counts (total, ok, failed, skipped), the folder's (`folder`), and more."""
        return {
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "out_dir": str(self.out_dir),
            "manifest": str(self.manifest) if self.manifest else None,
            "interrupted_by": self.interrupted_by,
            "exit_code": self.exit_code,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "folder": self.folder,
            "complete": self.complete,
            "left": self.left,
            "nothing_new": self.ok + self.failed == 0 and self.interrupted_by is None,
            "warnings": self.warnings,
            **self._metric_postfix(),
        }

    def line(self) -> str:
        """The one-line summary: what this run did, the folder's totals, and what is left if it stopped early."""
        new = self.ok + self.failed
        rate = new / self.seconds if self.seconds > 0 else 0.0
        skipped = f"; {self.skipped} already done (skipped)" if self.skipped else ""
        where = f"Results: {self.manifest or self.out_dir}"
        folder = ""
        if self.folder is not None:
            folder = f" Folder: {self.folder['total']} images, {self.folder['ok']} ok, {self.folder['failed']} failed."
        if self.interrupted_by is not None:
            name = {2: "SIGINT", 15: "SIGTERM"}.get(self.interrupted_by, f"signal {self.interrupted_by}")
            left = f"{self.left} images left" if self.left is not None else "the rest left"
            return (
                f"Interrupted by {name} after {new} new images ({self.ok} ok, {self.failed} failed){skipped}; "
                f"{left}: rerun the same command to resume.{folder} {where}"
            )
        if new == 0 and self.complete:
            nothing = f"Nothing new: all {self.skipped} images were already done" if self.skipped else "No images"
            return f"{nothing} (in {self.seconds:.1f} s).{folder} {where}"
        stopped = ""
        if self.metric_passes is not None and self.ok:
            per = self.metric_passes / self.ok
            stopped = f" Metrics: {self.metric_passes} extra forward passes ({per:.1f} per image)."
        if not self.complete:
            stopped += f" Stopped early (--limit/--fail-fast): {self.left if self.left is not None else 'some'} left."
        return (
            f"{new} new images: {self.ok} ok, {self.failed} failed{skipped} in {self.seconds:.1f} s "
            f"({rate:.1f} img/s).{stopped}{folder} {where}"
        )


def progress_bar(quiet: bool) -> Any:
    """The images/s bar on stderr (None with --quiet)."""
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(unit="img", file=sys.stderr, dynamic_ncols=True, desc="gradcam")


class Warned:
    """GradcamWarnings raised inside `with`: collected in `messages` (for the manifest and --json) and passed
    on unchanged to whatever shows them (the CLI edge)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._context = warnings.catch_warnings()

    def __enter__(self) -> Warned:
        self._context.__enter__()
        previous = warnings.showwarning

        def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if issubclass(category, GradcamWarning) and str(message) not in self.messages:
                self.messages.append(str(message))
            previous(message, category, *args, **kwargs)

        warnings.showwarning = show
        return self

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)
