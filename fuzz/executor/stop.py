"""Asking a running campaign to stop: SIGINT/SIGTERM become a flag the loop polls.

The first signal asks politely: the case in flight may finish (the pool abandons
it after a few seconds), shrinking stops where it is, the corpus and the reports
are written, and the run exits 130 (SIGINT) or 143 (SIGTERM). A second SIGINT
is the impatient kind and raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

__all__ = ["StopFlag", "StopRequested", "EXIT_CODES"]

#: What a stopped run exits with, by the signal that stopped it (shell convention: 128 + signal).
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class StopRequested(KeyboardInterrupt):
    """The campaign must end now.

    A ``KeyboardInterrupt`` because that is the one exception Hypothesis lets
    through without a trace: any other ``BaseException`` raised by a test is
    saved to the example database as if it were a failure, and a resumed run
    would replay the case the stop happened to land on.
    """


class StopFlag:
    """Set by a signal (``install``) or by hand (``request``); ``since`` is when, in monotonic seconds."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.since: float | None = None
        self._previous: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason, self.since = reason, time.monotonic()

    def overdue(self, grace: float) -> bool:
        """Stop was asked more than ``grace`` seconds ago: abandon the case in flight."""
        return self.since is not None and time.monotonic() - self.since > grace

    def install(self) -> StopFlag:
        """Take SIGINT and SIGTERM; off the main thread (a campaign in a Ray actor's thread), where Python
        delivers no signal, a stop comes by ``request`` alone."""
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> StopFlag:
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.uninstall()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop without flushing
        self.request(name)
