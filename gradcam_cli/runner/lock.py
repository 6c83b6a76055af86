"""One run per output folder: an exclusive advisory lock that dies with its holder.

`fcntl.flock` is released by the kernel when the holding process exits, however it exits (SIGKILL and
power loss included), so a stale lock file left behind never blocks the next run: it is simply taken
over. The file records who holds it, for the message the second run prints.

Shards (`--shard K/N`) each hold their own lock (`.gradcam.shard-K-of-N.lock`) and a *shared* hold on
`.gradcam.lock`: shards run side by side, while a plain run (exclusive) and shards exclude each other.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from gradcam_cli.errors import EXIT_LOCKED, GradcamError, OutputError

LOCK_NAME = ".gradcam.lock"


class OutputLockedError(GradcamError):
    """Another live run is writing to the same output folder."""

    exit_code = EXIT_LOCKED


class OutputLock:
    """`flock` on a file in the output folder: exclusive (a run, a shard), shared (shards on the folder
    lock), or, with `wait`, blocking (short critical sections such as the merge)."""

    def __init__(self, out_dir: Path, name: str = LOCK_NAME, shared: bool = False, wait: bool = False) -> None:
        self.path = out_dir / name
        self.shared = shared
        self.wait = wait
        self._fd: int | None = None
        self.took_over: dict | None = None  # the previous holder's info when its lock was stale

    def __enter__(self) -> OutputLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot create the lock file {self.path}: {exc.strerror or exc}.") from None
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode if self.wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
                if holder
                else "shard runs (--shard), or a run just starting"
            )
            raise OutputLockedError(
                f"another gradcam run ({who}) is writing to {self.path.parent}; this run stops without "
                "touching it. Wait for it to finish, or use another --output."
            ) from None
        if self.shared:  # several holders: the file names none of them
            self._fd = fd
            return self
        self.took_over = _read_holder(fd) or None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(timezone.utc).isoformat()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            if not self.shared:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data else {}
    except (OSError, ValueError):
        return {}
