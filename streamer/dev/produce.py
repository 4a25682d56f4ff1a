"""Publishing dataset streams to a topic (`streamer produce`, the demo, tests, benchmarks)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streamer.config import KafkaConfig
from streamer.intake import codec
from streamer.intake.kafka_group import client_options
from streamer.records import Partition, Sample


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
) -> dict[Partition, int]:
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
    ends: dict[Partition, int] = {}
    for future in futures:
        meta = future.get(timeout=30)
        key = (meta.topic, meta.partition)
        ends[key] = max(ends.get(key, 0), meta.offset + 1)
    return ends
