"""Shards: N independent runs sharing one output folder, merged into one manifest (no torch here).

`--shard K/N` counts from 1 (`1/4` .. `4/4`, like Playwright, Jest and GNU split; from a 0-based Slurm
array or Kubernetes Indexed Job index, add 1) and keeps the images whose record path hashes to K - 1:
sha256(path) as an integer, mod N. The assignment depends only on the path and N, so a growing archive
keeps it and every shard decides alone, without coordination. Internally, and in the file names below
(on-disk contracts of existing folders), a shard is its 0-based index: `--shard 1/4` writes
`records.shard-0-of-4.jsonl`.

Each shard writes what a single run writes into the shared folder (heatmaps and overlays under the same
names, they never collide since every path belongs to one shard), except that it appends its records to
`records.shard-K-of-N.jsonl`, holds its own lock `.gradcam.shard-K-of-N.lock` (plus a shared hold on
the folder's `.gradcam.lock`, so a plain run and shards never write at the same time), and, when it went
through all of its images (not interrupted, not cut by --limit or --fail-fast), writes
`complete.shard-K-of-N.json`: the config hash, its counts and the manifest header. A shard removes its
marker when it starts, so a marker always describes the shard's latest finished run.

The merge (`gradcam merge`, or automatically by whichever shard completes last) builds `manifest.json`
from every records file in the folder, exactly as a single run would have: the latest record per path,
sorted in input order. It refuses (exit 2, one paragraph) when a shard has no marker, when a marker's
config differs from the folder's `run.json`, or when one path has records in two files (the shard count
changed between runs, or a plain run and shards shared the folder).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gradcam_cli.errors import ConfigError, GradcamError
from gradcam_cli.io.files import atomic_write_bytes
from gradcam_cli.io.manifest import RECORDS_NAME, identity_fields, latest_records, read_run_info, write_manifest
from gradcam_cli.runner.lock import OutputLock

RECORDS_PATTERN = re.compile(r"^records\.shard-(\d+)-of-(\d+)\.jsonl$")
COMPLETE_PATTERN = re.compile(r"^complete\.shard-(\d+)-of-(\d+)\.json$")
MERGE_LOCK_NAME = ".gradcam.merge.lock"


class ShardMergeError(GradcamError):
    """The shards in an output folder cannot be merged yet (missing, mixed configs, duplicates); exit 2."""


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: `index` is 0-based (the hash bucket, and the file names' K); what users type
    and see (`label`) counts from 1."""

    index: int
    count: int

    @property
    def label(self) -> str:
        return shard_label(self.index, self.count)

    @property
    def records_name(self) -> str:
        return f"records.shard-{self.index}-of-{self.count}.jsonl"

    @property
    def complete_name(self) -> str:
        return f"complete.shard-{self.index}-of-{self.count}.json"

    @property
    def lock_name(self) -> str:
        return f".gradcam.shard-{self.index}-of-{self.count}.lock"

    def owns(self, path: str) -> bool:
        return shard_of(path, self.count) == self.index


def shard_of(path: str, count: int) -> int:
    """The shard (0..count-1) of a record path: stable across runs, machines and Python versions."""
    digest = hashlib.sha256(path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_label(index: int, count: int) -> str:
    """What users type and see for the shard of 0-based `index`: `1/4` for index 0."""
    return f"{index + 1}/{count}"


SCHEDULER_HINT = (
    "From a Slurm array use --shard $((SLURM_ARRAY_TASK_ID + 1))/N (or --array=1-N with "
    "--shard $SLURM_ARRAY_TASK_ID/N); in a Kubernetes Indexed Job, --shard $((JOB_COMPLETION_INDEX + 1))/N."
)


def parse_shard(text: str) -> Shard:
    """`K/N` with 1 <= K <= N, e.g. `1/4` .. `4/4`; anything else is a usage error (exit 2)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text, flags=re.ASCII)  # ASCII digits only
    if not match:
        raise ConfigError(
            f"--shard must be K/N (shard K of N, counted from 1: 1/4, 2/4, 3/4, 4/4), not {text!r}. " + SCHEDULER_HINT
        )
    number, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ConfigError(f"--shard {text}: the shard count N must be at least 1.")
    if number == 0:
        raise ConfigError(
            f"--shard {text}: shards count from 1, so K must be between 1 and {count} (N={count}); "
            f"0/{count} is not a shard. " + SCHEDULER_HINT
        )
    if not 1 <= number <= count:
        raise ConfigError(
            f"--shard {text}: shards count from 1, so K must be between 1 and {count} (N={count}). " + SCHEDULER_HINT
        )
    return Shard(number - 1, count)


def _found(out_dir: Path, pattern: re.Pattern[str]) -> dict[tuple[int, int], Path]:
    found: dict[tuple[int, int], Path] = {}
    try:
        entries = list(out_dir.iterdir())
    except OSError:
        return found
    for entry in entries:
        match = pattern.match(entry.name)
        if match:
            found[(int(match.group(1)), int(match.group(2)))] = entry
    return found


def shard_records_files(out_dir: Path) -> dict[tuple[int, int], Path]:
    """Every `records.shard-K-of-N.jsonl` in the folder, by (K, N)."""
    return _found(out_dir, RECORDS_PATTERN)


def complete_markers(out_dir: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """Every readable `complete.shard-K-of-N.json` in the folder, by (K, N)."""
    markers: dict[tuple[int, int], dict[str, Any]] = {}
    for key, path in _found(out_dir, COMPLETE_PATTERN).items():
        try:
            markers[key] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a marker is written atomically; unreadable means not complete
    return markers


def clear_marker(out_dir: Path, shard: Shard) -> None:
    (out_dir / shard.complete_name).unlink(missing_ok=True)


def write_marker(
    out_dir: Path, shard: Shard, config_hash: str, header: dict[str, Any], summary: dict[str, Any]
) -> None:
    """The shard went through all of its images: say so, with what the merge needs (no model load).

    The marker carries the folder's identity hash (run.json's `config_hash`, which this shard claimed when it
    started) when run.json records one, else `config_hash`."""
    fields = identity_fields(out_dir)
    marker = {
        "shard": shard.index,
        "count": shard.count,
        "config_hash": fields.get("config_hash", config_hash),
        "header": dict(header, **fields),
        "summary": summary,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(marker, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False)
    atomic_write_bytes(out_dir / shard.complete_name, text.encode(), durable=True)


@dataclass
class MergePlan:
    """What the folder holds, and what stands in the way of a manifest."""

    out_dir: Path
    records_files: list[Path] = field(default_factory=list)
    markers: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    missing: dict[int, list[int]] = field(default_factory=dict)  # N -> shards (0-based) without a marker
    mismatched: list[str] = field(default_factory=list)  # labels ("K/N", from 1) of markers of another config
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # path -> records files holding it
    latest: dict[str, tuple[int, int, bool]] = field(default_factory=dict)  # path -> (file, offset, failed)
    config_hash: str | None = None

    def problems(self) -> list[str]:
        found: list[str] = []
        for count, shards in sorted(self.missing.items()):
            listed = ", ".join(shard_label(k, count) for k in shards[:10]) + (" ..." if len(shards) > 10 else "")
            found.append(
                f"{len(shards)} of {count} shards have not completed ({listed}): never run, still running, "
                f"interrupted, or stopped early by --limit/--fail-fast; run them (again) with --shard K/{count}."
            )
        if self.mismatched:
            found.append(
                f"shards {', '.join(self.mismatched)} finished with a config other than the folder's "
                f"(run.json: {str(self.config_hash)[:12]}); all shards must run the same config: rerun them, "
                "or use a new --output."
            )
        if self.duplicates:
            path, files = next(iter(self.duplicates.items()))
            found.append(
                f"{len(self.duplicates)} image(s) have records in more than one records file (e.g. {path!r} in "
                f"{' and '.join(files)}): the shard count changed between runs, or a plain run and shards shared "
                "the folder. Delete the records files of the old layout (and their complete.shard-* markers) "
                "and rerun the shards, or use a new --output."
            )
        return found


def plan_merge(out_dir: Path) -> MergePlan:
    """Inspect the folder's shard files (reads every records file, to find duplicates)."""
    shard_files = shard_records_files(out_dir)
    markers = complete_markers(out_dir)
    plain = out_dir / RECORDS_NAME
    if not shard_files and not markers:
        raise ShardMergeError(
            f"{out_dir} holds no shard results (records.shard-K-of-N.jsonl); run `gradcam run --shard K/N` for "
            "every K first. A plain run writes its manifest itself."
        )
    info = read_run_info(out_dir)
    plan = MergePlan(out_dir=out_dir, markers=markers, config_hash=info.get("config_hash") if info else None)
    plan.records_files = [shard_files[key] for key in sorted(shard_files, key=lambda k: (k[1], k[0]))]
    if plain.exists():
        plan.records_files.append(plain)
    for count in sorted({n for _, n in set(shard_files) | set(markers)}):
        absent = [k for k in range(count) if (k, count) not in markers]
        if absent:
            plan.missing[count] = absent
    # markers of shards that finished before the folder was migrated carry the earlier release's config_hash
    accepted = {plan.config_hash, info.get("migrated_from") if info else None} - {None}
    plan.mismatched = [
        shard_label(k, n) for (k, n), marker in sorted(markers.items()) if marker.get("config_hash") not in accepted
    ]
    plan.latest, duplicates = latest_records(plan.records_files)
    plan.duplicates = {path: [plan.records_files[i].name for i in files] for path, files in duplicates.items()}
    return plan


def merge(out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Write `manifest.json` from all shards; raises ShardMergeError naming what is missing or mixed.

    Holds the merge lock (two last shards finishing together merge one after the other) and a shared
    hold on the folder lock (a plain run writing the same folder makes this exit 3).
    """
    out_dir = out_dir.resolve()
    if not out_dir.is_dir():
        raise ShardMergeError(f"{out_dir} is not a folder; pass the --output folder the shards wrote to.")
    with OutputLock(out_dir, shared=True), OutputLock(out_dir, MERGE_LOCK_NAME, wait=True):
        plan = plan_merge(out_dir)
        problems = plan.problems()
        if problems:
            raise ShardMergeError(f"cannot merge the shards in {out_dir}: " + " ".join(problems))
        return write_merged(plan)


def write_merged(plan: MergePlan) -> tuple[Path, dict[str, Any]]:
    """The manifest a single run would have written: header of the latest shard, timestamps spanning all."""
    markers = sorted(plan.markers.values(), key=lambda m: (m.get("written_at", ""), m["count"], m["shard"]))
    header = dict(markers[-1]["header"])
    starts = [m["header"].get("started_at") for m in markers if m["header"].get("started_at")]
    ends = [m["header"].get("finished_at") for m in markers if m["header"].get("finished_at")]
    if starts:
        header["started_at"] = min(starts)
    if ends:
        header["finished_at"] = max(ends)
    run = {key: sum(int(m.get("summary", {}).get(key, 0)) for m in markers) for key in ("ok", "failed", "skipped")}
    run.update(complete=True, interrupted_by=None, left=None)  # every shard completed, or there is no merge
    passes = [m["summary"]["metric_passes"] for m in markers if "metric_passes" in m.get("summary", {})]
    if passes:  # cam.metrics: every shard's extra forward passes
        run["metric_passes"] = sum(int(p) for p in passes)
    path, counts = write_manifest(plan.out_dir, header, run, records_files=plan.records_files, latest=plan.latest)
    return path, {**counts, "skipped": run["skipped"]}
