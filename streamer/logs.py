"""Structured logs: JSON lines off a terminal, readable lines on one; library logs alike.

structlog renders through the standard library's logging, so kafka-python's and
open_clip's records pass through the same renderer. Per-record problems are rate-limited:
the first of each reason is logged with its sample, then a count per interval.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

import structlog

QUIET_LIBRARIES = ("kafka", "urllib3", "filelock", "timm", "huggingface_hub")
# kafka-python's IO loop warns each time a task holds it too long; under load (the GIL shared
# with decoding and training) that is hundreds a minute. One line per interval, with a count.
AGGREGATED = {"kafka.net.selector": "blocking the event loop"}


def configure(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    json_lines = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    for name, pattern in AGGREGATED.items():
        library = logging.getLogger(name)
        library.filters = [f for f in library.filters if not isinstance(f, Aggregate)]
        library.addFilter(Aggregate(pattern))
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level)
    for name in QUIET_LIBRARIES:  # their INFO is chatter; their warnings still show
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


class RateLimited:
    """At most one line per reason per interval: the first sample, then how many followed."""

    def __init__(
        self,
        log: Any,
        event: str,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._event = event
        self.interval = interval
        self._clock = clock
        self._window_start: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def __call__(self, reason: str, **fields: Any) -> None:
        now = self._clock()
        start = self._window_start.get(reason)
        if start is not None and now - start < self.interval:
            self._suppressed[reason] += 1
            return
        self._window_start[reason] = now
        more = self._suppressed.pop(reason, 0)
        self._log.warning(self._event, reason=reason, suppressed_since_last=more, **fields)

    def flush(self) -> None:
        """Log the counts still held back (at shutdown)."""
        for reason, more in self._suppressed.items():
            self._log.warning(self._event, reason=reason, suppressed_since_last=more)
        self._suppressed.clear()


class Aggregate(logging.Filter):
    """A library's repeated warning containing `pattern`: the first, then at most one per
    interval saying how many were held back. Its other lines pass untouched."""

    def __init__(
        self, pattern: str, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.pattern, self.interval, self._clock = pattern, interval, clock
        self._last: float | None = None
        self.held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.pattern not in record.getMessage():
            return True
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self.held += 1
            return False
        if self.held:
            record.msg = f"{record.getMessage()} ({self.held} more like it held back since)"
            record.args = None
        self._last, self.held = now, 0
        return True
