"""Kafka client settings, the consumer-group rebalance listener, and positioning.

The listener runs on kafka-python's IO loop: it must await, never block, or heartbeats
stop. It hands revocations to the training thread and positions new partitions where the
ledger says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from streamer.config import KafkaConfig
from streamer.intake.source import GroupCommit, Resume, Revocation
from streamer.records import Partition

log = structlog.get_logger(__name__)


def client_options(cfg: KafkaConfig) -> dict[str, Any]:
    """Connection and security settings shared by the consumer and the producers."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(cfg.bootstrap_servers),
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
    }
    if cfg.sasl_mechanism:
        options |= {"sasl_mechanism": cfg.sasl_mechanism, "sasl_plain_username": cfg.sasl_username}
        if cfg.sasl_password is not None:
            options["sasl_plain_password"] = cfg.sasl_password.get_secret_value()
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_check_hostname"] = cfg.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(cfg, name) is not None:
                options[name] = str(getattr(cfg, name))
        if cfg.ssl_password is not None:
            options["ssl_password"] = cfg.ssl_password.get_secret_value()
    return options


def consumer_options(cfg: KafkaConfig) -> dict[str, Any]:
    options = client_options(cfg) | {
        "group_id": cfg.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": cfg.auto_offset_reset,
        "max_poll_interval_ms": cfg.max_poll_interval_ms,
        "session_timeout_ms": cfg.session_timeout_ms,
        "heartbeat_interval_ms": cfg.heartbeat_interval_ms,
        "isolation_level": cfg.isolation_level,
    }
    if cfg.group_instance_id is not None:
        options["group_instance_id"] = cfg.group_instance_id
    return options


def find_unreadable(
    consumer: KafkaConsumer, enqueue: Callable[[TopicPartition, list], None]
) -> tuple[TopicPartition, int, Exception] | None:
    """The partition whose next record kafka-python cannot parse: each is polled alone
    (records before the bad one come first and are enqueued as usual); its position is the
    bad record's offset. None if no partition reproduces the error."""
    candidates = [tp for tp in consumer.assignment() if tp not in consumer.paused()]
    consumer.pause(*candidates)
    try:
        for tp in candidates:
            consumer.resume(tp)
            try:
                for _ in range(20):
                    enqueue(tp, consumer.poll(timeout_ms=200).get(tp, []))
            except Exception as error:
                return tp, consumer.position(tp), error
            finally:
                consumer.pause(tp)
    finally:
        consumer.resume(*candidates)
    return None


def position(
    consumer: KafkaConsumer, tp: TopicPartition, resume: Resume, commit: Any, reset: str
) -> None:
    """Seek to where this partition resumes (always explicit: kafka-python keeps the fetch
    position of a partition assigned again, and records fetched past our accounting were
    dropped). `commit` is the group's OffsetAndMetadata, an offset, or None."""
    if commit is not None and not isinstance(commit, int):
        group = GroupCommit(commit.offset, commit.metadata or "") if commit.offset >= 0 else None
    else:
        group = GroupCommit(commit) if commit is not None and commit >= 0 else None
    target = resume((tp.topic, tp.partition), group)
    if target is not None:
        consumer.seek(tp, target)
    elif reset == "earliest":
        consumer.seek_to_beginning(tp)
    else:
        consumer.seek_to_end(tp)


def backpressure(buffered: int, cap: int, paused: bool, most: int = 500) -> tuple[bool, int]:
    """(paused, records the next poll may take) for a queue of `cap` holding `buffered`:
    paused once full, resumed once a 64th of it (32 records of 2,048) drained, a poll never
    past full.

    Refills stay small so decoding keeps pace with training instead of coming in bursts:
    on 2 cores, refilling half the queue at once took ~600 ms from one training step, and
    a sixteenth ~70 ms from every fourth step; a 64th spreads it over every step."""
    if buffered >= cap:
        paused = True
    elif buffered <= cap - max(1, cap // 64):
        paused = False
    return paused, max(1, min(most, cap - buffered))


def apply_backpressure(consumer: KafkaConsumer, buffered: int, cap: int,
                       paused: bool) -> tuple[bool, int]:  # fmt: skip
    """`backpressure` applied to every assigned partition. Re-applied on every poll, so the
    partitions a rebalance assigns are paused too."""
    paused, room = backpressure(buffered, cap, paused)
    assignment = consumer.assignment()
    if paused and assignment:
        consumer.pause(*assignment)
    elif consumer.paused():
        consumer.resume(*consumer.paused())
    return paused, room


def commit_payload(offsets: dict[Partition, int], metadata: str) -> dict:
    """Next-offsets by partition -> kafka-python's commit argument, with the checkpoint id."""
    return {
        TopicPartition(t, p): OffsetAndMetadata(o, metadata, -1) for (t, p), o in offsets.items()
    }


def highwater_marks(consumer: KafkaConsumer) -> dict[Partition, int]:
    """Log ends seen in fetch responses, for lag (absent until a partition was fetched)."""
    marks = {}
    for tp in consumer.assignment():
        mark = consumer.highwater(tp)
        if mark is not None:
            marks[(tp.topic, tp.partition)] = mark
    return marks


def assign_share(
    consumer: KafkaConsumer,
    topic: str,
    owns: Callable[[list[int]], list[int]],
    stop: threading.Event,
    wait: float,
) -> dict[TopicPartition, Any] | None:
    """Assign this rank's fixed share of the topic's partitions; their committed offsets, or
    None when stopped while waiting for the topic to exist."""
    while (partitions := consumer.partitions_for_topic(topic)) is None:
        log.info("waiting for the topic to exist", topic=topic)
        if stop.wait(wait):
            consumer.close(autocommit=False)
            return None
    mine = [TopicPartition(topic, p) for p in owns(sorted(partitions))]
    consumer.assign(mine)
    if not mine:
        log.warning("no partition for this rank: it takes zero-weight steps only",
                    partitions=len(partitions))  # fmt: skip
    return {tp: consumer.committed(tp, metadata=True) for tp in mine}  # may block


class Assignee(Protocol):
    """What the listener needs of the source it serves (KafkaSource)."""

    cfg: KafkaConfig
    stopping: bool
    revocation: Revocation | None

    def drop(self, partitions: set[Partition]) -> None: ...

    def positioned(self, consumer: KafkaConsumer, committed: dict[Any, Any]) -> None: ...


class Listener(AsyncConsumerRebalanceListener):
    def __init__(self, source: Assignee, consumer: KafkaConsumer) -> None:
        self.source = source
        # kafka-python 3 exposes no public awaitables for listeners; these are its own.
        self._coordinator = consumer._coordinator
        self._net = consumer._coordinator._net
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked) -> None:
        partitions = {(tp.topic, tp.partition) for tp in revoked}
        if not partitions or self.source.stopping:  # closing: already checkpointed
            return
        self.source.drop(partitions)
        request = Revocation(partitions)
        self.source.revocation = request
        deadline = time.monotonic() + self.source.cfg.max_poll_interval_ms / 2000
        while not request.done.is_set() and time.monotonic() < deadline:
            await self._net.sleep(0.05)  # the trainer checkpoints and commits meanwhile
        if not request.done.is_set():
            log.warning(
                "revoked partitions given up before their checkpoint", partitions=partitions
            )
        self.source.revocation = None

    async def on_partitions_lost(self, lost) -> None:
        partitions = {(tp.topic, tp.partition) for tp in lost}
        log.warning("partitions lost without a chance to commit", partitions=partitions)
        self.source.drop(partitions)

    async def on_partitions_assigned(self, assigned) -> None:
        committed = await self._coordinator.fetch_committed_offsets_async(set(assigned))
        self.source.positioned(self.consumer, {tp: committed.get(tp) for tp in assigned})
