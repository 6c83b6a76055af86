"""Stopping a run politely: SIGINT/SIGTERM let the batch in flight finish; a second one stops at once."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StopSignals:
    """While inside `with`, the first SIGINT/SIGTERM is only noted (`signum`); a second raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def worker_ignores_interrupts(parent: int | None = None) -> None:
    """For worker processes: Ctrl-C and SIGTERM reach the whole process group, and the main process decides
    (it finishes the batch in flight, then stops the workers); and a worker never outlives the main
    process, however that one ends (SIGKILL included): Linux kills it with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl: the main process's own shutdown still applies
            return
        if parent is not None and os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
