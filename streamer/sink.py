"""Records out: the dead-letter producer, and publishing dataset streams to a topic."""

from __future__ import annotations

import time
from collections.abc import Iterable

import structlog
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streamer import codec
from streamer.config import KafkaConfig
from streamer.records import RawRecord, Sample
from streamer.source import client_options

log = structlog.get_logger(__name__)


class DeadLetterError(RuntimeError):
    """Dead letters could not be made durable: offsets past them must not be committed."""


class DeadLetters:
    """Produces refused records, unchanged, with headers saying where from and why."""

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
        headers = [
            *raw.headers,
            ("streamer.source.topic", raw.topic.encode()),
            ("streamer.source.partition", str(raw.partition).encode()),
            ("streamer.source.offset", str(raw.offset).encode()),
            ("streamer.reason", reason.encode()),
            ("streamer.detail", detail[:500].encode()),
        ]
        return self._producer.send(self.topic, value=raw.value, key=raw.key, headers=headers)

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


def ensure_topic(cfg: KafkaConfig, partitions: int) -> None:
    admin = KafkaAdminClient(**client_options(cfg))
    try:
        admin.create_topics([NewTopic(cfg.topic, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def publish(
    cfg: KafkaConfig, samples: Iterable[Sample], rate: float | None = None, partitions: int = 1
) -> dict[tuple[str, int], int]:
    """Send samples in the configured codec (keyed by id); returns each partition's log end."""
    ensure_topic(cfg, partitions)
    producer = KafkaProducer(**client_options(cfg), acks="all", linger_ms=5)
    futures = []
    start = time.monotonic()
    for n, sample in enumerate(samples):
        if cfg.codec == "json":
            value, headers = codec.encode_json(sample), []
        else:
            value, headers = codec.encode_raw(sample)
        futures.append(
            producer.send(cfg.topic, value=value, key=sample.id.encode(), headers=headers)
        )
        if rate:  # pace to the requested records/s
            time.sleep(max(0.0, start + (n + 1) / rate - time.monotonic()))
    producer.flush()
    producer.close()
    ends: dict[tuple[str, int], int] = {}
    for future in futures:
        meta = future.get(timeout=30)
        key = (meta.topic, meta.partition)
        ends[key] = max(ends.get(key, 0), meta.offset + 1)
    return ends
