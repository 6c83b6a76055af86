"""Machine-readable run events for log shippers: --log-file PATH [--log-format json|text].

Events: `run_started`, `image_failed` (one per error record), `run_finished` (with the summary),
`stale_lock_taken_over` when a crashed run's lock was taken over, and for shards `shards_merged` (the last
shard wrote the manifest) or `merge_failed` (it could not, and says why), and `warning` for each warning the
library raised (GradcamWarning; also printed on stderr unless --quiet), and `run_failed` with the full
traceback when an unexpected error stops a run (exit 5).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any


class EventLog:
    """Appends one line per event; JSON objects or `time event key=value` text."""

    def __init__(self, path: Path | None, fmt: str = "json") -> None:
        self.path = path
        self.format = fmt
        self._handle: IO[str] | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def emit(self, event: str, **fields: Any) -> None:
        if self._handle is None:
            return
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        if self.format == "json":
            line = json.dumps({"time": stamp, "event": event, **fields}, sort_keys=True, default=str)
        else:
            pairs = " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in sorted(fields.items()))
            line = f"{stamp} {event} {pairs}".rstrip()
        self._handle.write(line + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
