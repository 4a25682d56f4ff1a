"""Refused records out: the dead-letter topic, and an in-memory stand-in for fast tests.

A dead letter is the record unchanged, with headers saying where it came from and why it
was refused. `flush` returns only once every dead letter is acknowledged; offsets past a
record are committed only after its dead letter is durable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from kafka import KafkaProducer
from kafka.errors import KafkaError

from streamer.config import KafkaConfig
from streamer.intake.kafka_group import client_options
from streamer.records import RawRecord

log = structlog.get_logger(__name__)


class DeadLetterError(RuntimeError):
    """Dead letters could not be made durable: offsets past them must not be committed."""


class DeadLetterSink(Protocol):
    def send(self, raw: RawRecord, reason: str, detail: str) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def headers(raw: RawRecord, reason: str, detail: str) -> list[tuple[str, bytes]]:
    return [
        *raw.headers,
        ("streamer.source.topic", raw.topic.encode()),
        ("streamer.source.partition", str(raw.partition).encode()),
        ("streamer.source.offset", str(raw.offset).encode()),
        ("streamer.reason", reason.encode()),
        ("streamer.detail", detail[:500].encode("utf-8", "replace")),
    ]


class KafkaDeadLetters:
    """Produces refused records to `<topic>.dlq` (or `kafka.dlq_topic`), acks=all."""

    def __init__(self, cfg: KafkaConfig, attempts: int = 5) -> None:
        self.topic = cfg.dead_letter_topic
        self._cfg = cfg
        self._attempts = attempts
        self._producer: KafkaProducer | None = None
        self._pending: list[tuple[RawRecord, str, str, object]] = []
        self.sent = 0

    def send(self, raw: RawRecord, reason: str, detail: str) -> None:
        self._pending.append((raw, reason, detail, self._send(raw, reason, detail)))

    def _send(self, raw: RawRecord, reason: str, detail: str):
        if self._producer is None:
            self._producer = KafkaProducer(**client_options(self._cfg), acks="all", linger_ms=20)
        # A record with neither key nor value (a tombstone without key, or one the client
        # could not parse) goes as an empty value: the producer refuses None for both.
        value = raw.value if raw.value is not None or raw.key is not None else b""
        return self._producer.send(self.topic, value=value, key=raw.key,
                                   headers=headers(raw, reason, detail))  # fmt: skip

    def flush(self) -> None:
        """Block until every dead letter is acknowledged, re-sending failures a few times."""
        for attempt in range(self._attempts):
            if not self._pending:
                return
            try:
                self._producer.flush(timeout=30)
            except KafkaError as exc:
                log.warning("dead-letter flush failed", error=str(exc), attempt=attempt)
            failed = [p for p in self._pending if not p[3].succeeded()]
            self.sent += len(self._pending) - len(failed)
            self._pending = [(r, why, d, self._send(r, why, d)) for r, why, d, _ in failed]
            if failed:
                time.sleep(min(2**attempt, 30))
        if self._pending:
            raise DeadLetterError(f"{len(self._pending)} dead letters not acknowledged")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)


@dataclass
class MemoryDeadLetters:
    """Dead letters kept in a list: `durable` once flushed, as a topic would hold them."""

    pending: list[tuple[RawRecord, str, str]] = field(default_factory=list)
    durable: list[tuple[RawRecord, str, str]] = field(default_factory=list)
    broken: bool = False  # flush fails, as with a broker that never acknowledges

    def send(self, raw: RawRecord, reason: str, detail: str) -> None:
        self.pending.append((raw, reason, detail))

    def flush(self) -> None:
        if self.broken and self.pending:
            raise DeadLetterError(f"{len(self.pending)} dead letters not acknowledged")
        self.durable += self.pending
        self.pending = []

    def close(self) -> None:
        pass
