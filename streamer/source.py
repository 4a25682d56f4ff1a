"""Records in: a Kafka consumer group polled on its own thread, decoded on another.

The training thread only takes decoded items from a bounded queue. The poll thread keeps
polling while steps run (pausing fetches when the queue is full), so a long step never
makes the group evict this member. Rebalances are handed to the training thread: before
partitions are given up, it finishes its step, checkpoints and commits them (see Daemon).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from streamer.config import KafkaConfig
from streamer.decode import DecodeError
from streamer.records import Pair, RawRecord

log = structlog.get_logger(__name__)
Partition = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True, slots=True)
class Item:
    """One consumed record, decoded (`pair`) or refused (`error`)."""

    raw: RawRecord
    pair: Pair | None = None
    error: DecodeError | None = None

    @property
    def partition(self) -> Partition:
        return (self.raw.topic, self.raw.partition)


@dataclass
class Revocation:
    """Partitions about to be given up; the trainer sets `done` once they are committed."""

    partitions: set[Partition]
    done: threading.Event = field(default_factory=threading.Event)


def client_options(cfg: KafkaConfig) -> dict:
    options = {
        "bootstrap_servers": list(cfg.bootstrap_servers),
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
    }
    if cfg.sasl_mechanism:
        options |= {"sasl_mechanism": cfg.sasl_mechanism, "sasl_plain_username": cfg.sasl_username}
        if cfg.sasl_password is not None:
            options["sasl_plain_password"] = cfg.sasl_password.get_secret_value()
    if cfg.ssl_cafile:
        options["ssl_cafile"] = str(cfg.ssl_cafile)
    return options


class KafkaSource:
    def __init__(
        self,
        cfg: KafkaConfig,
        decode: Callable[[RawRecord], Pair],
        start_offsets: dict[Partition, int],
        backoff: tuple[float, float] = (1.0, 30.0),
        owns: Callable[[list[int]], list[int]] | None = None,
    ) -> None:
        self.cfg = cfg
        self._owns = owns  # a fixed share of partitions (assign), else the group decides
        self._decode = decode
        self.start_offsets = dict(start_offsets)  # from the checkpoint
        self.last_committed: dict[Partition, int] = {}  # our successful commits
        self._backoff = backoff
        self._raw: queue.Queue[tuple[RawRecord, int] | None] = queue.Queue()
        self._ready: queue.Queue[tuple[Item, int]] = queue.Queue()
        self._epochs: dict[Partition, int] = {}  # bumped when a partition leaves us
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._revocation: Revocation | None = None
        self.assigned: set[Partition] = set()
        self.highwater: dict[Partition, int] = {}
        self.paused = False
        self.rebalances = 0
        self.last_poll: float | None = None
        self.connected = threading.Event()
        self._threads = [
            threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True),
            threading.Thread(target=self._decode_loop, name="decode", daemon=True),
        ]

    # -- training thread -----------------------------------------------------------------
    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def get(self, max_items: int, timeout: float) -> list[Item]:
        """Up to max_items decoded items, waiting at most `timeout` for the first ones."""
        items: list[Item] = []
        deadline = time.monotonic() + timeout
        while len(items) < max_items and self._revocation is None:
            try:
                item, epoch = self._ready.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if epoch == self._epochs.get(item.partition, 0):  # else: from a partition we gave up
                items.append(item)
        return items

    def pending_revocation(self) -> Revocation | None:
        return self._revocation

    def commit(self, offsets: dict[Partition, int], metadata: str) -> bool:
        """Commit next-offsets (a checkpoint's); False when the broker refuses or is away."""
        consumer = self._consumer
        if consumer is None or not offsets:
            return consumer is not None
        payload = {
            TopicPartition(t, p): OffsetAndMetadata(o, metadata, -1)
            for (t, p), o in offsets.items()
        }
        try:
            with self._lock:  # kafka-python 3 runs this on its IO loop; one commit at a time
                consumer.commit(payload, timeout_ms=10_000)
            self.last_committed.update(offsets)
            return True
        except (KafkaError, OSError) as exc:
            log.warning("commit failed; the next checkpoint retries", error=str(exc))
            return False

    def lag(self) -> int:
        return self._raw.qsize() + self._ready.qsize()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._consumer is not None:
            self._consumer.close(autocommit=False)

    # -- poll thread ---------------------------------------------------------------------
    def _poll_loop(self) -> None:
        consumer = self._connect()
        while consumer is not None and not self._stop.is_set():
            self._apply_backpressure(consumer)
            try:
                batches = consumer.poll(timeout_ms=100, max_records=500)
            except KafkaError as exc:  # broker away: kafka-python reconnects on its own
                log.warning("poll failed; retrying", error=str(exc))
                time.sleep(self._backoff[0])
                continue
            self.last_poll = time.time()
            self._note_highwater(consumer)
            for tp, records in batches.items():
                epoch = self._epochs.get((tp.topic, tp.partition), 0)
                for r in records:
                    raw = RawRecord(tp.topic, tp.partition, r.offset, r.value, r.key,
                                    tuple(r.headers or ()), r.timestamp)  # fmt: skip
                    self._raw.put((raw, epoch))
        self._raw.put(None)

    def _note_highwater(self, consumer: KafkaConsumer) -> None:
        """Log ends seen in fetch responses, for lag (None until a partition was fetched)."""
        marks = {}
        for tp in consumer.assignment():
            mark = consumer.highwater(tp)
            if mark is not None:
                marks[(tp.topic, tp.partition)] = mark
        self.highwater = marks

    def _connect(self) -> KafkaConsumer | None:
        """Create the consumer, retrying with backoff while the broker is unreachable."""
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                consumer = KafkaConsumer(
                    **client_options(self.cfg),
                    group_id=self.cfg.group_id,
                    enable_auto_commit=False,
                    auto_offset_reset=self.cfg.auto_offset_reset,
                    max_poll_interval_ms=self.cfg.max_poll_interval_ms,
                    session_timeout_ms=self.cfg.session_timeout_ms,
                    heartbeat_interval_ms=self.cfg.heartbeat_interval_ms,
                )
            except KafkaError as exc:
                log.warning("broker unreachable; retrying", error=str(exc), retry_in=delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            if self._owns is None:
                consumer.subscribe([self.cfg.topic], listener=_Listener(self, consumer))
            elif not self._assign(consumer):
                break
            self._consumer = consumer
            self.connected.set()
            return consumer
        return None

    def _assign(self, consumer: KafkaConsumer) -> bool:
        """Take this rank's share of the topic's partitions, positioned; False when stopped."""
        while (partitions := consumer.partitions_for_topic(self.cfg.topic)) is None:
            log.info("waiting for the topic to exist", topic=self.cfg.topic)
            if self._stop.wait(self._backoff[0]):
                consumer.close(autocommit=False)
                return False
        mine = [TopicPartition(self.cfg.topic, p) for p in self._owns(sorted(partitions))]
        consumer.assign(mine)
        for tp in mine:  # blocking is fine here: no group protocol waits on this thread
            theirs = consumer.committed(tp)
            self.position(consumer, tp, theirs)
        self.assigned = {(tp.topic, tp.partition) for tp in mine}
        self.rebalances += 1
        if not mine:
            log.warning("no partition for this rank: it takes zero-weight steps only",
                        partitions=len(partitions))  # fmt: skip
        log.info("partitions assigned", partitions=sorted(self.assigned), mode="assign")
        return True

    def position(self, consumer: KafkaConsumer, tp: TopicPartition, theirs: int | None) -> None:
        """Seek to where this partition resumes (always explicit: kafka-python keeps the fetch
        position of a partition assigned again, and records fetched past our accounting were
        dropped)."""
        target = self._resume_offset((tp.topic, tp.partition), theirs)
        if target is not None:
            consumer.seek(tp, target)
        elif self.cfg.auto_offset_reset == "earliest":
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek_to_end(tp)

    def _resume_offset(self, partition: Partition, theirs: int | None) -> int | None:
        """Where to resume: after our checkpoint or the group's commit, whichever is further.

        A group commit below our own last commit means the broker lost or reset it (topic
        recreated, offsets reset by an operator, a memory-only broker restarted): follow the
        broker, and its reset policy when it has no offset.
        """
        ours = self.start_offsets.get(partition)
        ours_committed = self.last_committed.get(partition)
        if ours_committed is not None and (theirs is None or theirs < ours_committed):
            log.warning("group offset went back; following the broker", partition=partition,
                        committed=theirs, ours=ours_committed,
                        reset=self.cfg.auto_offset_reset)  # fmt: skip
            self.start_offsets.pop(partition, None)
            self.last_committed.pop(partition, None)
            return theirs
        known = [o for o in (ours, theirs) if o is not None and o >= 0]
        return max(known) if known else None

    def _apply_backpressure(self, consumer: KafkaConsumer) -> None:
        """Pause every assigned partition while the queue is full; resume at half.

        Re-applied on every loop, so partitions assigned by a rebalance are paused too.
        """
        buffered = self.lag()
        if buffered >= self.cfg.queue_records:
            self.paused = True
        elif buffered <= self.cfg.queue_records // 2:
            self.paused = False
        assignment = consumer.assignment()
        if self.paused and assignment:
            consumer.pause(*assignment)
        elif consumer.paused():
            consumer.resume(*consumer.paused())

    # -- decode thread -------------------------------------------------------------------
    def _decode_loop(self) -> None:
        while (entry := self._raw.get()) is not None:
            raw, epoch = entry
            try:
                item = Item(raw, pair=self._decode(raw))
            except DecodeError as exc:
                item = Item(raw, error=exc)
            self._ready.put((item, epoch))

    # -- rebalances (kafka-python's IO thread) --------------------------------------------
    def _drop(self, partitions: set[Partition]) -> None:
        for p in partitions:
            self._epochs[p] = self._epochs.get(p, 0) + 1
        self.assigned -= partitions


class _Listener(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO loop: it must await, never block, or heartbeats stop."""

    def __init__(self, source: KafkaSource, consumer: KafkaConsumer) -> None:
        self.source = source
        self.consumer = consumer
        # kafka-python 3 exposes no public awaitables for listeners; these are its own.
        self._coordinator = consumer._coordinator
        self._net = consumer._coordinator._net

    async def on_partitions_revoked(self, revoked) -> None:
        partitions = {(tp.topic, tp.partition) for tp in revoked}
        if not partitions or self.source._stop.is_set():  # closing: already checkpointed
            return
        self.source._drop(partitions)
        request = Revocation(partitions)
        self.source._revocation = request
        deadline = time.monotonic() + self.source.cfg.max_poll_interval_ms / 2000
        while not request.done.is_set() and time.monotonic() < deadline:
            await self._net.sleep(0.05)  # the trainer checkpoints and commits meanwhile
        if not request.done.is_set():
            log.warning(
                "revoked partitions given up before their checkpoint", partitions=partitions
            )
        self.source._revocation = None

    async def on_partitions_lost(self, lost) -> None:
        partitions = {(tp.topic, tp.partition) for tp in lost}
        log.warning("partitions lost without a chance to commit", partitions=partitions)
        self.source._drop(partitions)

    async def on_partitions_assigned(self, assigned) -> None:
        committed = await self._coordinator.fetch_committed_offsets_async(set(assigned))
        for tp in assigned:
            theirs = committed.get(tp).offset if committed.get(tp) is not None else None
            self.source.position(self.consumer, tp, theirs)
        self.source.assigned |= {(tp.topic, tp.partition) for tp in assigned}
        self.source.rebalances += 1
        log.info("partitions assigned", partitions=sorted(self.source.assigned))
