"""Signals: SIGTERM/SIGINT set a stop flag; the loop finishes its step, checkpoints,
commits and exits within the grace period. A second signal exits at once; SIGHUP asks for
a config reload."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class Stopping:
    def __init__(self, grace_seconds: Callable[[], float]) -> None:
        self.flag = threading.Event()
        self._grace = grace_seconds
        self._signals = 0

    def install(self, on_hup: Callable[[], None] | None = None) -> None:
        """Only the main thread may install handlers (a daemon on a thread has none)."""
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if on_hup is not None:
            signal.signal(signal.SIGHUP, lambda *_: on_hup())

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(128 + signum)
        log.info("stopping", signal=signal.Signals(signum).name)
        self.flag.set()
        timer = threading.Timer(self._grace(), lambda: os._exit(1))  # past the grace: go
        timer.daemon = True
        timer.start()
