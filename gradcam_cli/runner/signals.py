"""Stopping a run politely: SIGINT/SIGTERM let the batch in flight finish; a second one stops at once."""

from __future__ import annotations

import signal
import threading
from typing import Any


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
