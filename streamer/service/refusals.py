"""Refused records: dead-lettered, counted by reason, logged at a limited rate; a flood of
them stops the daemon instead of silently draining a broken topic."""

from __future__ import annotations

from collections import deque

import structlog

from streamer.config import DeadLetterConfig
from streamer.intake.sink import DeadLetterSink
from streamer.intake.source import Item
from streamer.logs import RateLimited
from streamer.service.metrics import Metrics
from streamer.state.ledger import Ledger

log = structlog.get_logger(__name__)


class DeadLetterFlood(RuntimeError):
    """Too large a share of recent records is invalid: a broken producer, not bad luck."""


class Refusals:
    def __init__(
        self,
        sink: DeadLetterSink,
        cfg: DeadLetterConfig,
        ledger: Ledger,
        metrics: Metrics,
        log_interval: float,
    ) -> None:
        self.sink = sink
        self.cfg = cfg
        self._ledger = ledger
        self._metrics = metrics
        self._window: deque[bool] = deque(maxlen=cfg.window)  # invalid or not, newest last
        self._log = RateLimited(log, "record refused", log_interval)

    def reconfigure(self, cfg: DeadLetterConfig, log_interval: float) -> None:
        self.cfg = cfg
        self._window = deque(self._window, maxlen=cfg.window)
        self._log.interval = log_interval

    def observe(self, items: list[Item]) -> None:
        """Dead-letter the refused items; raise DeadLetterFlood past `max_share`."""
        for item in items:
            self._window.append(item.error is not None)
            if item.error is not None:
                self._refuse(item)
        window, limit = self._window, self.cfg.max_share
        if len(window) == window.maxlen and sum(window) / len(window) > limit:
            raise DeadLetterFlood(
                f"{sum(window)} of the last {len(window)} records were invalid "
                f"(limit {limit:.0%}); fix the producer or raise dead_letter.max_share"
            )

    def _refuse(self, item: Item) -> None:
        error, raw = item.error, item.raw
        self.sink.send(raw, error.reason, error.detail)
        self._ledger.count("dead_lettered")
        self._ledger.count(f"invalid:{error.reason}")
        self._metrics.dead_lettered.inc()
        self._metrics.invalid.labels(error.reason).inc()
        self._log(error.reason, detail=error.detail[:200], topic=raw.topic,
                  partition=raw.partition, offset=raw.offset)  # fmt: skip

    def close(self) -> None:
        self._log.flush()
        self.sink.close()
