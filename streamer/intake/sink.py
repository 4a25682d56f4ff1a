"""Refused records out: the dead-letter topic, and an in-memory stand-in for fast tests.

A dead letter is the record unchanged, with headers saying where it came from and why it
was refused. `flush` returns only once every dead letter is acknowledged; offsets past a
record are committed only after its dead letter is durable. While the broker is away,
dead letters are held and `flush` says so (DeadLettersPending) instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from kafka import KafkaProducer
from kafka.errors import KafkaError

from streamer.config import KafkaConfig
from streamer.intake.kafka_group import client_options
from streamer.intake.outage import is_connectivity
from streamer.records import RawRecord

log = structlog.get_logger(__name__)


class DeadLetterError(RuntimeError):
    """The broker refused dead letters: offsets past them must not be committed (fatal)."""


class DeadLettersPending(RuntimeError):
    """Dead letters wait for a broker that cannot be reached: no checkpoint (and no commit)
    until they are durable; not fatal, the caller retries later."""


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


@dataclass(eq=False)
class _Letter:
    raw: RawRecord
    reason: str
    detail: str
    future: Any = None  # kafka-python's FutureRecordMetadata once handed to the producer


class KafkaDeadLetters:
    """Produces refused records to `<topic>.dlq` (or `kafka.dlq_topic`), acks=all.

    Held while the broker cannot be reached: `send` never blocks long (a producer is made
    in `flush` only), and `flush` gives up after `timeout` seconds with DeadLettersPending,
    keeping every letter to send again; only a refusal by the broker is fatal."""

    def __init__(self, cfg: KafkaConfig, timeout: float = 5.0) -> None:
        self.topic = cfg.dead_letter_topic
        self._cfg = cfg
        self._timeout = timeout
        self._producer: KafkaProducer | None = None
        self._pending: list[_Letter] = []  # not yet acknowledged
        self.sent = 0

    def send(self, raw: RawRecord, reason: str, detail: str) -> None:
        letter = _Letter(raw, reason, detail)
        self._pending.append(letter)
        if self._producer is not None:
            self._produce(letter)

    def _produce(self, letter: _Letter) -> None:
        raw = letter.raw
        # A record with neither key nor value (a tombstone without key, or one the client
        # could not parse) goes as an empty value: the producer refuses None for both.
        value = raw.value if raw.value is not None or raw.key is not None else b""
        try:
            letter.future = self._producer.send(
                self.topic, value=value, key=raw.key,
                headers=headers(raw, letter.reason, letter.detail))  # fmt: skip
        except KafkaError as exc:  # no metadata for the topic within max_block_ms
            if not is_connectivity(exc):
                raise DeadLetterError(f"dead letter refused: {exc}") from exc
            letter.future = None

    def flush(self) -> None:
        """Return once every dead letter is acknowledged; DeadLettersPending while the broker
        cannot be reached (the letters are kept), DeadLetterError when it refuses them."""
        if not self._pending:
            return
        again = [p for p in self._pending if p.future is None or p.future.failed()]
        for letter in again:  # never sent, or given up by the producer (delivery timeout)
            self._check(letter)
        if again and self._ensure_producer():
            for letter in again:
                self._produce(letter)
        if self._producer is not None:
            try:
                self._producer.flush(timeout=self._timeout)
            except KafkaError as exc:
                log.warning("dead-letter flush incomplete", error=str(exc))
        for letter in self._pending:
            self._check(letter)
        held = [p for p in self._pending if p.future is None or not p.future.succeeded()]
        self.sent += len(self._pending) - len(held)
        self._pending = held
        if self._pending:
            raise DeadLettersPending(f"{len(self._pending)} dead letters wait for the broker")

    def _check(self, letter: _Letter) -> None:
        error = letter.future.exception if letter.future is not None else None
        if error is not None and not is_connectivity(error):
            raise DeadLetterError(f"the broker refused a dead letter: {error}")

    def _ensure_producer(self) -> bool:
        if self._producer is None:
            wait_ms = int(self._timeout * 1000)
            try:
                self._producer = KafkaProducer(
                    **client_options(self._cfg), acks="all", linger_ms=20,
                    bootstrap_timeout_ms=wait_ms, max_block_ms=wait_ms)  # fmt: skip
            except KafkaError as exc:
                if not is_connectivity(exc):
                    raise DeadLetterError(f"dead-letter producer refused: {exc}") from exc
                log.warning("dead-letter producer cannot reach the broker", error=str(exc))
        return self._producer is not None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)


@dataclass
class MemoryDeadLetters:
    """Dead letters kept in a list: `durable` once flushed, as a topic would hold them."""

    pending: list[tuple[RawRecord, str, str]] = field(default_factory=list)
    durable: list[tuple[RawRecord, str, str]] = field(default_factory=list)
    broken: bool = False  # flush fails, as with a broker that refuses the dead letters
    unreachable: bool = False  # flush waits, as with a broker that cannot be reached

    def send(self, raw: RawRecord, reason: str, detail: str) -> None:
        self.pending.append((raw, reason, detail))

    def flush(self) -> None:
        if self.broken and self.pending:
            raise DeadLetterError(f"{len(self.pending)} dead letters not acknowledged")
        if self.unreachable and self.pending:
            raise DeadLettersPending(f"{len(self.pending)} dead letters wait for the broker")
        self.durable += self.pending
        self.pending = []

    def close(self) -> None:
        pass
